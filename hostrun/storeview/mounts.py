"""A store view made entirely inside a child's private mount namespace.

The child (the virtiofs daemon, between fork and exec) mounts a small tmpfs on the
view's directory, creates there one symlink or one empty mount point per store path,
bind-mounts each path's real location (host store or NAR cache) on its mount point
read-only, and finally makes the tmpfs itself read-only. All of it is a few system
calls per path, independent of the paths' sizes, none of it touches a disk, and it
vanishes with the namespace when the daemon exits: hostrun's own namespace sees an
empty directory, so removing the run's private dir can never reach into a store.

Only the standard library and libc (passed in): this runs in a forked child.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from initkit import process
from initkit.errors import InitkitError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
CLONE_NEWNS = 0x00020000


@dataclass(frozen=True)
class ViewMounts:
    """What the child makes on ``root``: symlinks, and read-only binds of host paths."""

    root: Path
    symlinks: tuple[tuple[str, str], ...] = ()  # (name, link target)
    binds: tuple[tuple[str, Path, bool], ...] = ()  # (name, source, source is a directory)


@functools.cache
def mount_namespaces_work() -> bool:
    """True if this process may make a private mount namespace and mount in it: root,
    and not a container that withholds CAP_SYS_ADMIN (probed once per process, ~3 ms)."""
    true = shutil.which("true")
    if os.geteuid() != 0 or true is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)

    def probe() -> None:
        if (libc.unshare(CLONE_NEWNS) != 0
                or libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0):
            os._exit(1)

    try:
        return process.start([true], preexec_fn=probe).wait(timeout=10) == 0
    except (InitkitError, subprocess.SubprocessError):
        return False


def make_view_in_new_namespace(libc: ctypes.CDLL, view: ViewMounts) -> bytes | None:
    """Enter a private mount namespace and build ``view`` there; None on success, else
    what failed, for the child's stderr. Never mounts anything in the caller's
    namespace: if unsharing fails, nothing is mounted."""
    if libc.unshare(CLONE_NEWNS) != 0:
        return _failed(b"make a private mount namespace")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return _failed(b"make the mount namespace private")
    return make_view(libc, view)


def make_view(libc: ctypes.CDLL, view: ViewMounts) -> bytes | None:
    """Build ``view`` in the current mount namespace (it must be private)."""
    root = os.fsencode(view.root)
    if libc.mount(b"tmpfs", root, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755") != 0:
        return _failed(b"mount a tmpfs on " + root)
    try:
        for name, target in view.symlinks:
            os.symlink(target, os.path.join(root, os.fsencode(name)))
        for name, source, is_dir in view.binds:
            point = os.path.join(root, os.fsencode(name))
            if is_dir:
                os.mkdir(point, 0o755)
            else:
                os.close(os.open(point, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
            src = os.fsencode(source)
            if not readonly_bind(libc, src, point):
                return _failed(b"bind " + src + b" on " + point)
    except OSError as exc:
        return b"cannot make the store view in " + root + b": " + str(exc).encode()
    if libc.mount(None, root, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None) != 0:
        return _failed(b"make " + root + b" read-only")
    return None


def readonly_bind(libc: ctypes.CDLL, source: bytes, target: bytes) -> bool:
    """Bind ``source`` on ``target`` and make that mount read-only."""
    if libc.mount(source, target, None, MS_BIND, None) != 0:
        return False
    return int(libc.mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)) == 0


def _failed(what: bytes) -> bytes:
    return b"cannot " + what + b": " + os.strerror(ctypes.get_errno()).encode()
