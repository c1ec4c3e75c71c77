"""The dynamic loader's search rules -> a closure graph (who needs what, found where).

Follows glibc's ld.so without running anything: breadth-first loading of DT_NEEDED;
reuse of an object already loaded under the requested name, its path, its SONAME or
as the same file; per name the search order DT_RPATH chain, LD_LIBRARY_PATH, DT_RUNPATH,
ld.so.cache, default directories, each directory tried in its active glibc-hwcaps
subdirectories first. The rules live in initbuilder.loader.search, the caches shared by
many resolutions in initbuilder.loader.treecache; this module holds the public entry
points. docs/closure.md lists every rule and where ldd differs.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence

from initbuilder.loader.elf import ElfError
from initbuilder.loader.linkmap import Closure, LoadedObject, Missing
from initbuilder.loader.search import DLOPEN_LEVELS, Search
from initbuilder.loader.sysroot import Sysroot
from initbuilder.loader.treecache import Probe, TreeCache
from initkit.errors import InitkitError

__all__ = ["Closure", "LoadedObject", "Missing", "Resolver", "resolve_closure"]


class Resolver:
    """Resolves closures; one instance caches files, ld.so.cache and loader facts (its
    TreeCache), so resolving thousands of programs reads each file once."""

    def __init__(self, root: str | os.PathLike[str] | None = None,
                 library_path: Sequence[str] = (), dlopen: str = "recommended") -> None:
        if dlopen not in DLOPEN_LEVELS:
            raise InitkitError(f"--dlopen {dlopen}: choose one of {', '.join(DLOPEN_LEVELS)}")
        self.root = Sysroot(root)
        self.tree = TreeCache(self.root)
        self.library_path = ":".join(library_path)
        self.dlopen_level = DLOPEN_LEVELS[dlopen]

    def resolve(self, file: str) -> Closure:
        """The closure of FILE, an executable or a shared object (ElfError if not ELF)."""
        guest, probe = self.read_main(file)
        assert probe.info is not None
        return Search(self.tree, file, guest, probe.info, probe.identity,
                      library_path=self.library_path, dlopen_level=self.dlopen_level).run()

    def read_main(self, path: str) -> tuple[str, Probe]:
        """Guest path and probe of a FILE argument; errors name the file."""
        guest = self.guest_path(path)
        probe = self.tree.probe(guest)
        where = "" if self.root.is_host else f" in {self.root.root}"
        if probe is None:
            host = self.root.host(guest)
            what = "not a regular file" if os.path.lexists(host) else "no such file"
            raise InitkitError(f"{path}: {what}{where}; give an existing ELF file")
        if probe.info is None:
            raise ElfError(f"{path}: {probe.error}")
        return guest, probe

    def guest_path(self, path: str) -> str:
        """FILE as an absolute guest path (inside --root, also accepting host paths in it)."""
        if self.root.is_host:
            return os.path.abspath(path)
        if os.path.isabs(path):
            inside = self.root.guest(path)
            if inside is not None and self.tree.probe(path) is None:
                return inside
            return path
        inside = self.root.guest(os.path.abspath(path))
        return inside if inside is not None else posixpath.join("/", path)


def resolve_closure(file: str, *, root: str | os.PathLike[str] | None = None,
                    library_path: Sequence[str] = (), dlopen: str = "recommended") -> Closure:
    """The closure of one FILE; use one Resolver to resolve many."""
    return Resolver(root, library_path, dlopen).resolve(file)

