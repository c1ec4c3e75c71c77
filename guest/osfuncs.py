"""What os (and stat) add to posix, for the guest's few uses, written on posix alone.

Importing os (with posixpath, _collections_abc, stat) costs ~14 ms of every boot under
TCG, and PID 1 needs none of its Python layer but these few functions.
"""

from __future__ import annotations

import posix
import time

from guest.contract import CHANNEL_PORT, VIRTIO_PORTS

S_IFMT, S_IFDIR, S_IFCHR = 0o170000, 0o040000, 0o020000  # st_mode's file type (stat.h)


def read_file(path: str) -> bytes:
    """The whole file, read with the bare system calls (no io objects)."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks = []
        while chunk := posix.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        posix.close(fd)


# The guest's Python runs in UTF-8 mode (the kernel gives init no locale), so file names
# and the environment are UTF-8, undecodable bytes kept as surrogates (os.fsencode).
def fsencode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def fsdecode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def lexists(path: str) -> bool:
    """os.path.lexists: ``path`` exists, a dangling symlink counting."""
    try:
        posix.lstat(path)
    except OSError:
        return False
    return True


def make_dirs(path: str, mode: int = 0o755) -> None:
    """mkdir -p (os.makedirs with exist_ok=True)."""
    parts = [part for part in path.split("/") if part]
    current = ""
    for part in parts:
        current += "/" + part
        try:
            posix.mkdir(current, mode)
        except FileExistsError:
            if posix.stat(current).st_mode & S_IFMT != S_IFDIR:
                raise
        except OSError:
            if not lexists(current):  # e.g. a read-only parent; EEXIST wins as in os
                raise


def execvpe(file: str, args: list[str], env: dict[str, str]) -> None:
    """os.execvpe: exec ``file``, searched on env's PATH unless it has a slash; raises
    the most telling error (anything but ENOENT/ENOTDIR beats them, as in os)."""
    if "/" in file:
        posix.execve(file, args, env)
    error: OSError | None = None
    for directory in env.get("PATH", "/bin:/usr/bin").split(":"):
        try:
            posix.execve(f"{directory or '.'}/{file}", args, env)
        except (FileNotFoundError, NotADirectoryError) as exc:
            error = error or exc
        except OSError as exc:
            error = exc if error is None or isinstance(
                error, FileNotFoundError | NotADirectoryError) else error
    if error is None:  # PATH names no directory at all
        import errno  # only for this error: it costs ~2 ms of every boot under TCG

        error = FileNotFoundError(errno.ENOENT, posix.strerror(errno.ENOENT), file)
    raise error


def make_raw(fd: int) -> None:
    """Put the tty on ``fd`` in raw mode, as cfmakeraw(3): bytes through as they are,
    no echo, no line editing, no signals, no flow control, no output processing."""
    import termios  # only a console channel needs it

    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
               | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF)
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])
    termios.tcflush(fd, termios.TCIFLUSH)  # nothing should be there: the host waits


def find_port(name: str = CHANNEL_PORT, *, sysfs: str = VIRTIO_PORTS, dev: str = "/dev",
              timeout: float = 5.0) -> str | None:
    """The device node of the port called ``name``, waiting up to ``timeout`` seconds
    for it to be announced; None if no such port appears."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ports = sorted(posix.listdir(sysfs))
        except FileNotFoundError:
            ports = []
        for port in ports:
            try:
                with open(f"{sysfs}/{port}/name", "rb") as f:
                    found = f.read().strip()
            except FileNotFoundError:
                continue  # announced, not named yet
            if found == name.encode():
                return f"{dev}/{port}"
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.002)
