"""The dynamic loader's search rules -> a closure graph (who needs what, found where).

Follows glibc's ld.so without running anything: breadth-first loading of DT_NEEDED;
reuse of an object already loaded under the requested name, its path, its SONAME or
as the same file; per name the search order DT_RPATH chain, LD_LIBRARY_PATH, DT_RUNPATH,
ld.so.cache, default directories, each directory tried in its active glibc-hwcaps
subdirectories first. The rules live in initbuilder.loader.search; this module holds the
caches shared by many resolutions and the public entry points. docs/closure.md lists
every rule and where ldd differs.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from initbuilder.errors import InitkitError
from initbuilder.loader.elf import ElfError, ElfInfo, read_elf
from initbuilder.loader.ldconfig import ConfIndex, LdCache, read_conf
from initbuilder.loader.ldso import LoaderFacts, loader_facts
from initbuilder.loader.linkmap import Closure, LoadedObject, Missing
from initbuilder.loader.search import DLOPEN_LEVELS, Search
from initbuilder.loader.sysroot import Sysroot

if TYPE_CHECKING:
    from initbuilder.image import Image

__all__ = ["Closure", "LoadedObject", "Missing", "Resolver", "add_binaries",
           "resolve_closure"]

log = logging.getLogger("initkit.closure")


@dataclass(frozen=True, slots=True)
class Probe:
    """What the loader finds when it opens a path: the file's identity and ELF facts,
    or why it would refuse the file with an error."""

    identity: tuple[int, int]
    info: ElfInfo | None
    error: str | None


class Resolver:
    """Resolves closures; one instance caches files, ld.so.cache and loader facts, so
    resolving thousands of programs reads each file once."""

    def __init__(self, root: str | os.PathLike[str] | None = None,
                 library_path: Sequence[str] = (), dlopen: str = "recommended") -> None:
        if dlopen not in DLOPEN_LEVELS:
            raise InitkitError(f"--dlopen {dlopen}: choose one of {', '.join(DLOPEN_LEVELS)}")
        self.root = Sysroot(root)
        self.library_path = ":".join(library_path)
        self.dlopen_level = DLOPEN_LEVELS[dlopen]
        self._probes: dict[str, Probe | None] = {}
        self._elves: dict[tuple[int, int], ElfInfo | str] = {}
        self._facts: dict[tuple[object, ...], LoaderFacts] = {}
        self._caches: dict[str, LdCache | None] = {}
        self._conf: dict[tuple[object, ...], ConfIndex] = {}

    def resolve(self, file: str) -> Closure:
        """The closure of FILE, an executable or a shared object (ElfError if not ELF)."""
        guest, probe = self.read_main(file)
        assert probe.info is not None
        return Search(self, file, guest, probe.info, probe.identity).run()

    def probe(self, path: str) -> Probe | None:
        """What opening guest ``path`` gives the loader; None when nothing is there."""
        known = self._probes.get(path, False)
        if known is not False:
            return known  # type: ignore[return-value]
        if not path.startswith("/"):
            path_abs = os.path.abspath(path) if self.root.is_host else "/" + path
        else:
            path_abs = path
        result: Probe | None = None
        try:
            st = os.stat(self.root.host(path_abs))
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            identity = (st.st_dev, st.st_ino)
            elf = self._elves.get(identity)
            if elf is None:
                try:
                    elf = read_elf(self.root.host(path_abs))
                except ElfError as exc:
                    elf = str(exc).split(": ", 1)[-1]
                self._elves[identity] = elf
            result = Probe(identity, None, elf) if isinstance(elf, str) else \
                Probe(identity, elf, None)
        self._probes[path] = result
        return result

    def read_main(self, path: str) -> tuple[str, Probe]:
        """Guest path and probe of a FILE argument; errors name the file."""
        guest = self.guest_path(path)
        probe = self.probe(guest)
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
            if inside is not None and self.probe(path) is None:
                return inside
            return path
        inside = self.root.guest(os.path.abspath(path))
        return inside if inside is not None else posixpath.join("/", path)

    def facts(self, info: ElfInfo, interpreter: str | None) -> LoaderFacts:
        """Loader facts for objects like ``info``, read from the loader at ``interpreter``
        (a guest path) or, without one, the ABI's usual loader."""
        key = (info.abi, info.flags & 0x400, interpreter)
        facts = self._facts.get(key)
        if facts is None:
            facts = loader_facts(info, self.root.host(interpreter) if interpreter else None)
            if interpreter is None and facts.interpreter:
                facts = loader_facts(info, self.root.host(facts.interpreter))
            self._facts[key] = facts
        return facts

    def ld_cache(self, facts: LoaderFacts) -> LdCache | None:
        """The ld.so.cache the loader reads (in the tree), parsed once; None without one."""
        path = facts.cache_path
        if path not in self._caches:
            self._caches[path] = LdCache.load(self.root, path)
            if self._caches[path] is None:
                log.info("no %s%s; deriving it from %s", "" if self.root.is_host else
                         self.root.root, path, facts.conf_path)
        return self._caches[path]

    def conf_index(self, main: ElfInfo, facts: LoaderFacts) -> ConfIndex:
        """ld.so.conf's directories then the trusted ones, indexed as ldconfig would."""
        key = (main.abi, facts.system_dirs, facts.hwcaps, facts.conf_path)
        index = self._conf.get(key)
        if index is None:
            conf = read_conf(self.root, facts.conf_path)
            dirs = conf + [d.rstrip("/") for d in facts.system_dirs]
            index = ConfIndex(self.root, dirs, lambda lib: lib.abi == main.abi, facts.hwcaps)
            self._conf[key] = index
        return index


def resolve_closure(file: str, *, root: str | os.PathLike[str] | None = None,
                    library_path: Sequence[str] = (), dlopen: str = "recommended") -> Closure:
    """The closure of one FILE; use one Resolver to resolve many."""
    return Resolver(root, library_path, dlopen).resolve(file)


def add_binaries(image: Image, names: Sequence[str], *, root: Path | None = None,
                 library_path: Sequence[str] = (), dlopen: str = "recommended",
                 allow_missing: bool = False) -> list[str]:
    """Add each binary (NAME looked up on PATH, PATH as is; shebang scripts with their
    interpreter; shared objects too) with its interpreter and closure to ``image``;
    return the guest paths to invoke them by, in order."""
    from initbuilder.loader.binaries import BinaryAdder

    adder = BinaryAdder(image, Resolver(root, library_path, dlopen), allow_missing=allow_missing)
    return [adder.add(name) for name in names]
