"""Where initkit keeps what it can reuse between runs (kernels, vmlinux, initrds, notes).

What is in the cache is run (kernels booted, programs copied into initrds), so the
directory must be the user's own: it is created 0700, and refused if it is a symbolic
link (whoever can change the link chooses the contents), belongs to another user, or
is writable by everyone.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from initkit.errors import InitkitError, write_error, writing

# The way around a cache that cannot be written, for messages.
CACHE_ELSEWHERE = "set $INITKIT_CACHE to a directory elsewhere"

_checked: set[str] = set()  # roots found fit in this process (checked once each)


def cache_root() -> Path:
    """$INITKIT_CACHE, else $XDG_CACHE_HOME/initkit, else ~/.cache/initkit (not created)."""
    root = os.environ.get("INITKIT_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "initkit")
    return Path(os.path.abspath(root))


def cache_dir(*parts: str) -> Path:
    """The cache directory ``parts`` below cache_root(), created 0700 (with the root);
    InitkitError if the root is not fit to hold what initkit will run, or cannot be made."""
    root = cache_root()
    if str(root) not in _checked or not root.is_dir():
        _check_root(root)
        _checked.add(str(root))
    path = root
    for part in parts:
        path = path / part
        if not path.is_dir():
            with writing(path, "create the cache directory", instead=CACHE_ELSEWHERE):
                try:
                    path.mkdir(mode=0o700)
                except FileExistsError:
                    if not path.is_dir():  # a file, or a link to one: not ours to remove
                        raise
    return path


def _check_root(root: Path) -> None:
    doing = "create the cache directory"
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        with writing(root, doing, instead=CACHE_ELSEWHERE):
            root.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):  # made by another process just now
                root.mkdir(mode=0o700)
        st = os.lstat(root)
    except OSError as exc:
        raise write_error(exc, root, doing, instead=CACHE_ELSEWHERE) from exc
    where = f"the cache directory {root}"
    if stat.S_ISLNK(st.st_mode):
        raise InitkitError(f"{where} is a symbolic link (to {os.readlink(root)}); refused, "
                           "because whoever may change the link chooses what initkit runs: "
                           "set $INITKIT_CACHE to the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise InitkitError(f"{where} is not a directory; remove it, or {CACHE_ELSEWHERE}")
    if st.st_uid != os.geteuid():
        raise InitkitError(f"{where} belongs to {_user(st.st_uid)}, not to you; refused, "
                           "because initkit runs what is in it: set $INITKIT_CACHE to a "
                           "directory of your own")
    if st.st_mode & stat.S_IWOTH:
        raise InitkitError(f"{where} is writable by everyone (mode "
                           f"{stat.S_IMODE(st.st_mode):04o}); refused: chmod o-w {root}")


def _user(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
