"""The directory a virtiofs daemon serves when the guest gets exactly a closure.

The view is a fresh directory in the run's private temp dir. Where hostrun may mount (as
root, where the kernel allows a private mount namespace: probed once) it stays empty on
disk: the daemon's preexec makes the view inside its own private
mount namespace (a tmpfs with a symlink or a read-only bind mount per store path,
hostrun/storeview/mounts.py), so it costs a few system calls per path whatever the
paths' sizes and vanishes with the daemon. Elsewhere the view is a tree of hard links
(every file linked, so the cost grows with the number of files), copies where the file
system refuses a link (another file system, or protected_hardlinks), and symlinks
recreated.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from hostrun.storeview.mounts import ViewMounts, mount_namespaces_work
from initkit.errors import InitkitError


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
    """A view made on disk: the directory to serve and, when mounting, what the daemon
    makes on it in its own mount namespace."""

    root: Path
    mounts: ViewMounts | None  # None: the directory holds the view (links and copies)
    linked_files: int = 0
    copied_files: int = 0


def can_mount() -> bool:
    """True if hostrun may make mounts in a private mount namespace (root, where the
    kernel lets it)."""
    return mount_namespaces_work()


def build_view(view: StoreView, root: Path, *, mounts: bool | None = None) -> BuiltView:
    """Make ``root`` (must not exist) the directory that serves ``view``: an empty one
    plus what the daemon mounts there (``mounts``; default: when hostrun may mount), or
    a tree of links and copies."""
    use_mounts = can_mount() if mounts is None else mounts
    kinds = [(entry, _kind(entry)) for entry in view.entries]
    root.mkdir(mode=0o755)
    if use_mounts:
        return BuiltView(root, ViewMounts(
            root,
            symlinks=tuple((e.name, os.readlink(e.source)) for e, k in kinds if k == "link"),
            binds=tuple((e.name, e.source, k == "dir") for e, k in kinds if k != "link"),
        ))
    counts = [0, 0]  # linked, copied
    for entry, kind in kinds:
        target = root / entry.name
        if kind == "link":
            os.symlink(os.readlink(entry.source), target)
        elif kind == "dir":
            _link_tree(entry, target, counts)
        else:
            _link_or_copy(entry, entry.source, target, counts)
    return BuiltView(root, None, linked_files=counts[0], copied_files=counts[1])


def _unreadable(entry: ViewEntry, exc: OSError) -> InitkitError:
    """A store path the view cannot be made of because hostrun cannot read it: the
    path's fault, not one of writing the view (the caller's writing() would say so)."""
    return InitkitError(f"/nix/store/{entry.name} (from {entry.origin}): cannot read "
                        f"{exc.filename}: {exc.strerror}; a store path is served whole, so "
                        "all of it must be readable for you")


def _kind(entry: ViewEntry) -> str:
    try:
        st = os.lstat(entry.source)
    except OSError as exc:
        raise InitkitError(f"/nix/store/{entry.name} (from {entry.origin}): "
                           f"{entry.source}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        return "link"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    raise InitkitError(f"/nix/store/{entry.name} (from {entry.origin}): {entry.source} is "
                       "neither a file, a directory nor a symlink; a store path cannot be one")


def _link_tree(entry: ViewEntry, target: Path, counts: list[int]) -> None:
    source = entry.source
    target.mkdir()

    def unreadable(exc: OSError) -> None:  # os.walk would skip the directory silently
        raise _unreadable(entry, exc)

    for directory, dirs, files in os.walk(source, onerror=unreadable):
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
                _link_or_copy(entry, Path(full), here / name, counts)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]


def _link_or_copy(entry: ViewEntry, source: Path, target: Path, counts: list[int]) -> None:
    try:
        os.link(source, target)
        counts[0] += 1
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
            raise
        try:
            with open(source, "rb"):  # what copy2 reads: its error would name no side
                pass
        except OSError as unreadable:
            raise _unreadable(entry, unreadable) from None
        shutil.copy2(source, target)
        counts[1] += 1
