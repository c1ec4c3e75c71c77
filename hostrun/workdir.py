"""hostrun's private directory: one per run, 0700, for the daemon's socket and the logs.

Teardown removes it on every way out but one, SIGKILL. So each directory holds a marker
naming its hostrun (pid and start time, initkit.owner), and every hostrun removes the
directories of hostruns that are gone. Only what is recognisably hostrun's is touched:
a real directory (never a symlink) named ``hostrun-*``, mode 0700, owned by this user,
whose marker names a process shown to have exited.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from initkit.errors import writing
from initkit.files import TMPDIR_ELSEWHERE, remove_tree, temp_base
from initkit.owner import Owner

PREFIX = "hostrun-"
MARKER = "owner"
# sun_path holds 107 bytes and a NUL; the socket is <base>/hostrun-XXXXXXXX/virtiofs.sock.
_SOCKET_ROOM = 107 - len("/hostrun-12345678/virtiofs.sock")


def base_dir() -> str:
    """Where private directories go: $TMPDIR (initkit.files.temp_base: a bad one is an
    error, not /tmp), or /tmp when it is too long for a socket path under it and would
    do otherwise (a bad one is refused all the same)."""
    base = temp_base()
    if len(os.fsencode(base)) <= _SOCKET_ROOM:
        return base
    usable = os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK)
    return "/tmp" if usable else base


def private_dir() -> Path:
    """A fresh 0700 directory for the socket and logs, marked as this process's."""
    base = base_dir()
    with writing(base, "make hostrun's private directory in", instead=TMPDIR_ELSEWHERE,
                 inside=True):
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    try:
        with writing(path / MARKER, "write", instead=TMPDIR_ELSEWHERE):
            fd = os.open(path / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as marker:
                marker.write(f"{Owner.current()}\n")
    except BaseException:
        remove_tree(path)
        raise
    return path


def reap_abandoned(base: str | None = None) -> list[Path]:
    """Remove the private directories of hostruns that are gone (killed with SIGKILL);
    returns them. Best effort: anything not shown to be abandoned stays."""
    base = base or base_dir()
    removed: list[Path] = []
    try:
        entries = [e.name for e in os.scandir(base) if e.name.startswith(PREFIX)]
    except OSError:
        return removed
    for name in entries:
        path = Path(base, name)
        owner = _owner(path)
        if owner is not None and owner.gone():
            remove_tree(path)
            removed.append(path)
    return removed


def _owner(path: Path) -> Owner | None:
    """The hostrun that made ``path``, if it is one of hostrun's private directories."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # a symlink, a file, gone, or not ours to open
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) != 0o700:
            return None
        try:
            marker = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError:
            return None  # no marker: being made right now, or not hostrun's
        with os.fdopen(marker, "rb") as f:
            text = f.read(64)
        return Owner.parse(text.decode(errors="replace"))
    finally:
        os.close(fd)
