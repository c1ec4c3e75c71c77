"""The directory a virtiofs daemon serves when the guest gets exactly a closure.

The view is a fresh directory in the run's private temp dir with one entry per store
path. Where hostrun may mount (as root), a directory or file path is an empty mount
point, and the daemon's preexec (hostrun/procs.py) bind-mounts the real path there,
read-only, in the daemon's own private mount namespace: one mkdir and two mount calls per
path, whatever its size, and the mounts vanish with the daemon, so removing the view can
never reach through them into the host store or the cache. Elsewhere the view is a tree
of hard links (every file linked, so the cost grows with the number of files), copies
where the file system refuses a link (another file system, or protected_hardlinks). A
symlink store path is recreated as a symlink in both cases.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from initbuilder.errors import InitkitError


@dataclass(frozen=True)
class ViewEntry:
    """One store path of a view: its base name and where its contents are on the host."""

    name: str  # <hash>-<name>
    source: Path  # in the host store, or an unpacked NAR in the cache
    origin: str  # where it was found, for messages ("--store /nix/store", a substituter)


@dataclass(frozen=True)
class StoreView:
    """Exactly the store paths the guest sees, and how the set was found."""

    entries: tuple[ViewEntry, ...]
    how: str  # "nix database", "narinfo references", "reference scan", or a mix

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]


@dataclass(frozen=True)
class BuiltView:
    """A view made on disk: the directory to serve and the bind mounts it still needs."""

    root: Path
    binds: tuple[tuple[Path, Path], ...]  # (source, mount point), read-only
    linked_files: int = 0
    copied_files: int = 0


def can_mount() -> bool:
    """True if hostrun may make bind mounts in a private mount namespace (as root)."""
    return os.geteuid() == 0


def build_view(view: StoreView, root: Path, *, mounts: bool | None = None) -> BuiltView:
    """Make ``root`` (must not exist) hold ``view``: mount points to bind (``mounts``;
    default: when hostrun may mount) or links and copies."""
    use_mounts = can_mount() if mounts is None else mounts
    root.mkdir(mode=0o755)
    binds: list[tuple[Path, Path]] = []
    counts = [0, 0]  # linked, copied
    for entry in view.entries:
        target = root / entry.name
        try:
            st = os.lstat(entry.source)
        except OSError as exc:
            raise InitkitError(f"/nix/store/{entry.name} (from {entry.origin}): "
                               f"{entry.source}: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.source), target)
        elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise InitkitError(f"/nix/store/{entry.name} (from {entry.origin}): "
                               f"{entry.source} is neither a file, a directory nor a "
                               "symlink; a store path cannot be one")
        elif use_mounts:
            if stat.S_ISDIR(st.st_mode):
                target.mkdir()
            else:
                target.touch(mode=0o444)
            binds.append((entry.source, target))
        elif stat.S_ISDIR(st.st_mode):
            _link_tree(entry.source, target, counts)
        else:
            _link_or_copy(entry.source, target, counts)
    return BuiltView(root, tuple(binds), linked_files=counts[0], copied_files=counts[1])


def _link_tree(source: Path, target: Path, counts: list[int]) -> None:
    target.mkdir()
    for directory, dirs, files in os.walk(source):
        here = target / os.path.relpath(directory, source)
        for name in dirs:
            full = os.path.join(directory, name)
            if os.path.islink(full):
                os.symlink(os.readlink(full), here / name)
            else:
                (here / name).mkdir()
        for name in files:
            full = os.path.join(directory, name)
            if os.path.islink(full):
                os.symlink(os.readlink(full), here / name)
            else:
                _link_or_copy(Path(full), here / name, counts)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]


def _link_or_copy(source: Path, target: Path, counts: list[int]) -> None:
    try:
        os.link(source, target)
        counts[0] += 1
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
            raise
        shutil.copy2(source, target)
        counts[1] += 1
