"""What the loader finds in one tree (the host, or a --root), each thing read once.

The files at each path (identity and ELF facts, or why the loader would refuse them),
the loader facts of each ABI, the ld.so.cache and the ld.so.conf index: a closure of a
thousand programs asks for the same few hundred files, so everything is kept by path,
by inode or by ABI. initbuilder.loader.search asks these questions; nothing here knows
about the search rules.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

from initbuilder.loader.elf import ElfError, ElfInfo, read_elf
from initbuilder.loader.ldconfig import ConfIndex, LdCache, read_conf
from initbuilder.loader.ldso import LoaderFacts, loader_facts
from initbuilder.loader.sysroot import Sysroot

log = logging.getLogger("initkit.closure")


@dataclass(frozen=True, slots=True)
class Probe:
    """What the loader finds when it opens a path: the file's identity and ELF facts,
    or why it would refuse the file with an error."""

    identity: tuple[int, int]
    info: ElfInfo | None
    error: str | None


class TreeCache:
    """One tree's files, loader facts, ld.so.cache and ld.so.conf, each read once."""

    def __init__(self, root: Sysroot) -> None:
        self.root = root
        self._probes: dict[str, Probe | None] = {}
        self._elves: dict[tuple[int, int], ElfInfo | str] = {}
        self._facts: dict[tuple[object, ...], LoaderFacts] = {}
        self._caches: dict[str, LdCache | None] = {}
        self._conf: dict[tuple[object, ...], ConfIndex] = {}

    def probe(self, path: str) -> Probe | None:
        """What opening guest ``path`` gives the loader; None when nothing is there."""
        if path in self._probes:
            return self._probes[path]
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
