"""Directory transfers of the agent, as tar streams, each in a forked worker process.

tarfile's reader and writer pull and push bytes with blocking calls, and the agent
serves everything else from one poll loop; a worker reading its stdin (put) or writing
its stdout (get) is fed and drained by that loop like any command. tarfile (with os,
shutil, re...) is imported by the agent before its first worker forks, not at boot:
under TCG the import costs ~250 ms, paid by the first directory transfer only.
"""

from __future__ import annotations

import errno
import posix

_S_IFMT, _S_IFDIR = 0o170000, 0o040000
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def start_worker(work: Callable[[bytes], None], path: bytes, fds: tuple[int, int, int],
                 signals: tuple[int, ...]) -> int:
    """Fork a process that runs ``work(path)`` with ``fds`` as its stdin, stdout and
    stderr; it exits 0, or 1 after writing why to its stderr. ``signals`` get their
    default disposition back in it."""
    import tarfile  # noqa: F401 - once, in the agent: every worker inherits it

    pid = posix.fork()
    if pid:
        return pid
    code = 1
    try:  # the worker: nothing in here may return into the agent's loop
        import _signal

        for signum in signals:
            _signal.signal(signum, _signal.SIG_DFL)
        _signal.set_wakeup_fd(-1)
        for target, fd in enumerate(fds):
            posix.dup2(fd, target)
        posix.closerange(3, 1 << 16)  # the channel too: the host must see it close
        work(path)
        code = 0
    except BaseException as exc:  # reported to the agent, which tells the host
        try:
            text = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            posix.write(2, text.encode("utf-8", "backslashreplace")[:4000])
        except BaseException:
            pass
    finally:
        posix._exit(code)


def receive_tree(path: bytes) -> None:
    """Unpack the tar stream on stdin into directory ``path`` (created if missing),
    owners, modes and links as the archive says: the host is trusted."""
    import tarfile

    make_dirs(path)
    with open(0, "rb", closefd=False) as stream, \
            tarfile.open(fileobj=stream, mode="r|") as archive:
        options: dict[str, Any] = {"numeric_owner": True}
        if hasattr(tarfile, "fully_trusted_filter"):  # 3.12, and 3.11.4 and later
            options["filter"] = "fully_trusted"
        archive.extractall(path.decode("utf-8", "surrogateescape"), **options)


def send_tree(path: bytes) -> None:
    """Write directory ``path`` to stdout as a PAX tar stream, names relative to it,
    symbolic links as links; device nodes, fifos and sockets are left out (the host
    refuses them)."""
    import tarfile

    name = path.decode("utf-8", "surrogateescape")
    if posix.stat(name).st_mode & _S_IFMT != _S_IFDIR:
        raise NotADirectoryError(errno.ENOTDIR, posix.strerror(errno.ENOTDIR), name)

    def regular_only(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return info if info.isreg() or info.isdir() or info.issym() or info.islnk() else None

    with open(1, "wb", closefd=False) as stream, \
            tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        archive.add(name, arcname=".", filter=regular_only)


def make_dirs(path: bytes) -> None:
    """mkdir -p."""
    current = b"/" if path.startswith(b"/") else b""
    for part in path.split(b"/"):
        if part:
            current += part
            try:  # noqa: SIM105 - contextlib costs an import
                posix.mkdir(current, 0o755)
            except FileExistsError:
                pass
            current += b"/"
