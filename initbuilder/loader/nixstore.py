"""Moving /nix/store files out of the way of the store mount, and keeping them loadable.

At boot the guest mounts the store share on /nix/store, hiding whatever the initrd put
there. Files from the store therefore go to a private prefix instead, under a name of
exactly the same length: ``/nix/store/<32-char hash>-name`` becomes
``/usr/lib/initkit/store/<last 20 hash chars>-name``. Because the length is unchanged,
the few strings the loader reads (PT_INTERP, and DT_NEEDED/DT_RPATH/DT_RUNPATH in the
dynamic string table) and a script's ``#!`` line can be rewritten in place without
moving a byte of anything else, so relocated programs start and find their libraries
directly. Other strings (data paths compiled into a program) are left alone: they name
the store, which the guest mounts.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING

from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.errors import InitkitError
from initkit.files import write_atomically

if TYPE_CHECKING:
    from initbuilder.loader.elf import ElfInfo

NIX_STORE = "/nix/store"
PRIVATE_STORE = "/usr/lib/initkit/store"
_HASH = 32  # nix store path hashes: 32 base-32 characters
_SHEBANG_MAX = 256  # how much of a #! line the kernel reads (BINPRM_BUF_SIZE)


class StoreRelocation:
    """Same-length renaming of ``store`` paths to ``target`` paths, and the rewriting."""

    def __init__(self, store: str = NIX_STORE, target: str = PRIVATE_STORE) -> None:
        self.store = store.rstrip("/")
        self.target = target.rstrip("/")
        self.cut = len(self.target) - len(self.store)
        if not 0 <= self.cut <= _HASH - 8:
            raise ValueError(f"cannot relocate {self.store} to {self.target}: the prefix "
                             f"must be 0 to {_HASH - 8} characters longer")
        self._pattern = re.compile(re.escape(self.store.encode()) + rb"/([0-9a-z]{32})-")
        self._owners: dict[str, str] = {}  # relocated top directory -> store top directory

    def applies(self, path: str) -> bool:
        """True for a path inside the store (which the store mount would hide)."""
        return path.startswith(self.store + "/")

    def relocate(self, path: str) -> str:
        """The private path for a store path; other paths unchanged."""
        if not self.applies(path):
            return path
        top, _, rest = path[len(self.store) + 1:].partition("/")
        if len(top) < _HASH + 2 or top[_HASH] != "-":
            raise InitkitError(f"{path}: not a store path of the form "
                               f"{self.store}/<32-char hash>-<name>; cannot relocate it")
        moved = top[self.cut:]
        owner = self._owners.setdefault(moved, top)
        if owner != top:
            raise InitkitError(f"{self.store}/{top} and {self.store}/{owner} would both move "
                               f"to {self.target}/{moved}; pack only one of them")
        return f"{self.target}/{moved}" + (f"/{rest}" if rest else "")

    def link_target(self, link: str, target: str) -> str:
        """A symlink's text once both ends may have moved."""
        if target.startswith("/"):
            return self.relocate(target)
        if not self.applies(link):
            return target
        pointed = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
        if not self.applies(pointed):
            return target
        if _top(link, self.store) == _top(pointed, self.store):
            return target  # inside one store path: moves along with the link
        return self.relocate(pointed)

    def rewrite(self, data: bytes, ranges: list[tuple[int, int]]) -> bytes | None:
        """``data`` with store paths inside ``ranges`` renamed; None when nothing changes."""
        out = bytearray(data)
        changed = False
        for offset, size in ranges:
            for match in self._pattern.finditer(data, offset, offset + size):
                digest = match.group(1).decode()
                new = f"{self.target}/{digest[self.cut:]}-".encode()
                assert len(new) == match.end() - match.start()
                self.relocate(f"{self.store}/{digest}-x")  # registers, checks collisions
                out[match.start():match.end()] = new
                changed = True
        return bytes(out) if changed else None

    def mentions_store(self, data: bytes) -> bool:
        return self._pattern.search(data) is not None

    def relocated_copy(self, host: str | os.PathLike[str], elf: ElfInfo | None) -> Path | None:
        """A copy of the file at ``host`` whose loader strings (PT_INTERP and the dynamic
        string table from ``elf``, its facts, or a script's ``#!`` line) have store paths
        relocated, kept in the cache; None when those strings name no store path."""
        with open(host, "rb") as f:
            head = f.read(_SHEBANG_MAX)
            if head.startswith(b"#!"):
                end = head.find(b"\n")
                ranges = [(0, end if end >= 0 else len(head))]
            elif elf is not None:
                ranges = [r for r in (elf.interp_range, elf.dynstr_range) if r]
            else:
                return None
            chunks = []
            for offset, size in ranges:
                f.seek(offset)
                chunks.append(f.read(size))
            if not any(self.mentions_store(c) for c in chunks):
                return None
            f.seek(0)
            data = f.read()
        new = self.rewrite(data, ranges)
        return rewritten_copy(new, os.fspath(host)) if new is not None else None


def _top(path: str, store: str) -> str:
    return path[len(store) + 1:].split("/", 1)[0]


def rewritten_copy(data: bytes, name: str) -> Path:
    """Store rewritten bytes in the cache (content-addressed) and return the file."""
    digest = hashlib.sha256(data).hexdigest()
    directory = cache_dir("nix-relocated")
    path = directory / f"{digest[:32]}-{os.path.basename(name)}"
    if not path.exists():
        write_atomically(path, data, what="the cache entry", instead=CACHE_ELSEWHERE)
    return path
