"""Host files into an Image: the one place that reads a host tree for the image.

Two ways in. :meth:`HostFiles.copy` puts a host file, symlink (kept as a symlink) or
directory (recursively) at a chosen guest path (``--file HOST:GUEST``).
:meth:`HostFiles.add` puts the file a path names at that same path, recreating every
symlink met on the way (in directories and at the end) and adding what each points to,
so the guest's loader walks the paths the host's does (programs, their interpreters and
libraries, the guest runtime's libraries). The tree read is the host or a ``--root``
(a Sysroot); files under /nix/store move out of the store mount's way, with the strings
the loader reads rewritten (initbuilder.loader.nixstore).
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from initbuilder.image import Image, Kind
from initbuilder.linklimit import MAX_LINK_HOPS
from initbuilder.loader.nixstore import StoreRelocation
from initbuilder.loader.sysroot import Sysroot
from initkit.errors import InitkitError, reading

if TYPE_CHECKING:
    from initbuilder.loader.elf import ElfInfo

log = logging.getLogger("initkit.hostfiles")


class HostFiles:
    """Adds files of one tree (the host, or ``root``) to one Image."""

    def __init__(self, image: Image, root: Sysroot | None = None,
                 relocation: StoreRelocation | None = None) -> None:
        self.image = image
        self.root = root or Sysroot()
        self.relocation = relocation or StoreRelocation()
        self._done: dict[str, str] = {}  # tree path added -> image path of its file

    # -- a host path at a guest path, as it is --------------------------------------
    def copy(self, host: str | os.PathLike[str], guest: str | None = None, *,
             source: str = "") -> str:
        """Add a host file, symlink (kept as a symlink) or directory (recursively) at
        ``guest`` (default: the same path); return the image path. Permission bits come
        from the host; ownership is 0:0 so the initrd does not depend on who built it."""
        host_path = Path(host)
        guest = guest if guest is not None else os.path.abspath(host_path)
        try:
            st = os.lstat(host_path)
        except OSError:  # named by reading(); the context only on this path: a tree of
            with reading(host_path):  # thousands of files pays nothing for it
                raise
        src = source or str(host_path)
        mode = stat.S_IMODE(st.st_mode)
        image = self.image
        if stat.S_ISLNK(st.st_mode):
            return image.add_symlink(guest, os.readlink(host_path), source=src)
        if stat.S_ISDIR(st.st_mode):
            rel = image.add_directory(guest, mode, source=src)
            try:
                names = sorted(os.listdir(host_path))
            except PermissionError:
                raise InitkitError(f"{host_path}: directory is not readable") from None
            for name in names:
                self.copy(host_path / name, f"{rel}/{name}", source=source)
            return rel
        if stat.S_ISREG(st.st_mode):
            return image.add_file(guest, host=host_path, source=src)
        if stat.S_ISFIFO(st.st_mode):
            return image.add_fifo(guest, mode, source=src)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind = Kind.CHAR if stat.S_ISCHR(st.st_mode) else Kind.BLOCK
            return image.add_device(guest, kind, os.major(st.st_rdev), os.minor(st.st_rdev),
                                    mode, source=src)
        raise InitkitError(f"{host_path}: cannot put a socket or unknown file type in an initrd")

    # -- a tree path at the paths that reach it ---------------------------------------
    def add(self, guest: str, source: str = "", *, elf: ElfInfo | None = None) -> str:
        """Add the file at tree path ``guest`` at the same path (relocated out of the
        store), recreating each symlink met on the way and adding what it points to;
        return the image path of the final regular file. ``elf``, the file's ELF facts,
        says where its loader strings are, to rewrite the store paths in them."""
        if not guest.startswith("/"):
            guest = os.path.abspath(guest) if self.root.is_host else "/" + guest
        done = self._done.get(guest)
        if done is None:
            tree_at, image_at = self.walk(guest, source)
            done = self._add_regular(tree_at, image_at, guest, source, elf)
            self._done[guest] = done
        return done

    def add_directory(self, guest: str, source: str = "") -> str:
        """Make directory ``guest`` exist in the image the way it exists in the tree
        (a weak entry: an explicit one replaces it)."""
        _, image_at = self.walk(guest, source)
        return self.image.add_directory(self.relocation.relocate(image_at), source=source,
                                        weak=True)

    def loadable(self, host: str | os.PathLike[str], elf: ElfInfo | None) -> Path:
        """The file to pack for ``host`` under a path of its own choosing: the file, or
        a copy whose loader strings name the relocated store."""
        return self.relocation.relocated_copy(host, elf) or Path(host)

    def walk(self, guest: str, source: str = "") -> tuple[str, str]:
        """Follow ``guest`` in the tree, adding each symlink on the way; return the
        symlink-free tree path and where the entry goes in the image (not relocated)."""
        parts = [p for p in guest.split("/") if p]
        tree_at = "/"  # symlink-free path in the tree
        image_at: str | None = "/"  # where entries go in the image, while in step
        literal: str | None = None  # the image keeps a directory where the tree has a link
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                tree_at = posixpath.dirname(tree_at)
                image_at = posixpath.dirname(image_at) if image_at else None
                continue
            tree_next = posixpath.join(tree_at, part)
            try:
                st = os.lstat(self.root.host_literal(tree_next))
            except OSError as exc:
                raise InitkitError(f"{guest}: cannot add it: {tree_next} "
                                   f"({exc.strerror})") from None
            if not stat.S_ISLNK(st.st_mode):
                tree_at = tree_next
                image_at = posixpath.join(image_at, part) if image_at else None
                continue
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise InitkitError(f"{guest}: too many levels of symbolic links")
            target = os.readlink(self.root.host_literal(tree_next))
            if image_at is not None:
                link_at = posixpath.join(image_at, part)
                if self._keeps_directory(link_at):
                    # The image already has a real directory where the tree has a link
                    # (/lib with modules in it, on a merged-usr host): the entry goes
                    # below it under the same names, and the loader's path works as well.
                    literal = posixpath.normpath(posixpath.join(link_at, *parts))
                    image_at = None
                else:
                    text = self.relocation.link_target(link_at, target)
                    self.image.add_symlink(self.relocation.relocate(link_at), text,
                                           source=source or guest)
            parts = [p for p in target.split("/") if p] + parts
            tree_at = "/" if target.startswith("/") else tree_at
            image_at = tree_at if image_at is not None else None
        return tree_at, image_at if image_at is not None else str(literal)

    def _keeps_directory(self, image_path: str) -> bool:
        rel = image_path.lstrip("/")
        entry = self.image.get(self.image.resolve(rel)) if rel else None
        if entry is None or entry.kind is not Kind.DIR:
            return False
        return not entry.weak or self.image.has_children(self.image.resolve(rel))

    def _add_regular(self, tree_at: str, image_at: str, guest: str, source: str,
                     elf: ElfInfo | None) -> str:
        host = self.root.host_literal(tree_at)
        st = os.stat(host)
        if not stat.S_ISREG(st.st_mode):
            raise InitkitError(f"{guest}: {tree_at} is not a regular file")
        dest = self.relocation.relocate(image_at)
        rewritten = self.relocation.relocated_copy(host, elf)
        label = source or guest
        if rewritten is not None:
            self.image.add_file(dest, host=rewritten, mode=stat.S_IMODE(st.st_mode),
                                source=f"{label} ({tree_at}, store paths relocated)")
        else:
            self.image.add_file(dest, host=host, source=f"{label} ({tree_at})")
        log.info("added %s (%s)", dest, label)
        return dest
