"""Starting the agent's commands and finding what they leave behind.

posix_spawn, not fork+exec: glibc runs it as clone(CLONE_VM|CLONE_VFORK), so the
agent's page tables are never copied (under TCG a fork of the Python agent costs
milliseconds, a vfork microseconds), and it reports exec's errno itself. The one thing
it cannot do, start the child in another directory, the agent does by changing its
own directory around the call: the agent has one thread. The directory transfers,
which run Python code rather than a program, fork (guest/transfer.py).
"""

from __future__ import annotations

import _signal
import errno
import posix

from guest.contract import INIT_FAILED, NOT_EXECUTABLE, NOT_FOUND

DEFAULT_PATH = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ENV = {b"PATH": DEFAULT_PATH, b"HOME": b"/", b"TERM": b"dumb"}
_S_IFMT, _S_IFREG = 0o170000, 0o100000
_NOT_FOUND = (errno.ENOENT, errno.ENOTDIR)
# Signals Python ignores for itself; ignored dispositions survive exec.
_RESET = (_signal.SIGPIPE, _signal.SIGXFSZ)


class SpawnError(Exception):
    """The command could not start: ``code`` is the shell's status for it (127 not
    found, 126 not runnable, 125 the agent could not prepare it)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def environment(pairs: list[tuple[bytes, bytes]], replace: bool) -> dict[bytes, bytes]:
    """The command's environment: ``pairs`` over the agent's defaults, or alone."""
    env = {} if replace else dict(DEFAULT_ENV)
    for key, value in pairs:
        if not key or b"=" in key or b"\0" in key or b"\0" in value:
            raise ValueError(f"environment variable {key!r}: a name must be non-empty "
                             "without '=' or NUL, a value without NUL")
        env[key] = value
    return env


def spawn(argv: list[bytes], env: dict[bytes, bytes], cwd: bytes,
          fds: tuple[int, int, int]) -> int:
    """Start ``argv`` in a new session (its own process group, pid == pgid) with
    ``fds`` as its stdin, stdout and stderr, in directory ``cwd`` (empty: the
    caller's, which for the agent is /); returns its pid or raises SpawnError."""
    program = argv[0]
    path = _find_program(program, env.get(b"PATH", DEFAULT_PATH))
    if not cwd or cwd == b"/":
        return _spawn(program, path, argv, env, fds)
    here = posix.open(".", posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
    try:
        try:
            posix.chdir(cwd)
        except OSError as exc:
            raise SpawnError(INIT_FAILED, f"cannot change to directory "
                                          f"{_show(cwd)}: {describe(exc)}") from None
        return _spawn(program, path, argv, env, fds)
    finally:
        posix.fchdir(here)
        posix.close(here)


def _spawn(program: bytes, path: bytes, argv: list[bytes], env: dict[bytes, bytes],
           fds: tuple[int, int, int]) -> int:
    actions = [(posix.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
    try:
        return posix.posix_spawn(path, argv, env, file_actions=actions, setsid=True,
                                 setsigdef=_RESET)
    except OSError as exc:
        raise _exec_error(program, path, exc) from None


def _find_program(program: bytes, search: bytes) -> bytes:
    """The file exec would run for ``program``: itself if it has a slash, else the
    first regular file of that name on ``search`` (execvp's rule; a directory of that
    name is skipped). Not found: the first candidate, for exec's own error."""
    if b"/" in program:
        return program
    if not program:
        raise SpawnError(NOT_FOUND, "cannot run '': an empty program name")
    first = None
    for directory in search.split(b":"):
        candidate = (directory or b".") + b"/" + program
        first = first or candidate
        try:
            if posix.stat(candidate).st_mode & _S_IFMT == _S_IFREG:
                return candidate
        except OSError:
            continue
    raise SpawnError(NOT_FOUND, f"cannot run {_show(program)}: not found in PATH "
                                f"({_show(search)})")


def _exec_error(program: bytes, path: bytes, exc: OSError) -> SpawnError:
    """A shell's answer to a failed exec: 127 not found, 126 found but not runnable."""
    why = describe(exc)
    if exc.errno in _NOT_FOUND:
        try:
            posix.stat(path)
            why += "; the file exists, so its ELF interpreter or #! interpreter is missing"
        except OSError:
            pass
        return SpawnError(NOT_FOUND, f"cannot run {_show(program)}: {why}")
    return SpawnError(NOT_EXECUTABLE, f"cannot run {_show(program)}: {why}")


def describe(exc: OSError) -> str:
    """``errno 2 ENOENT (No such file or directory)``."""
    number = exc.errno or 0
    return f"errno {number} {errno.errorcode.get(number, '?')} ({posix.strerror(number)})"


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


# -- what a command leaves behind -------------------------------------------------------
def group_alive(pgid: int) -> bool:
    """True while some process (a zombie too) is in process group ``pgid``."""
    try:
        posix.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists
    return True


def session_members(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid``, from /proc; [] without it.
    A process that made a session of its own is not found: nothing ties it to ``sid``."""
    try:
        names = posix.listdir(b"/proc")
    except OSError:
        return []
    found = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            fd = posix.open(b"/proc/" + name + b"/stat", posix.O_RDONLY | posix.O_CLOEXEC)
        except OSError:
            continue
        try:
            stat = posix.read(fd, 1024)
        except OSError:
            continue
        finally:
            posix.close(fd)
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 3 and fields[0] != b"Z" and fields[3] == str(sid).encode():
            found.append(int(name))
    return sorted(found)


def kill_all(pgid: int, pids: list[int], signum: int) -> None:
    """Send ``signum`` to process group ``pgid`` and to each of ``pids``."""
    for target, send in ((pgid, posix.killpg), *((pid, posix.kill) for pid in pids)):
        try:  # noqa: SIM105 - contextlib costs an import
            send(target, signum)
        except OSError:
            pass  # already gone
