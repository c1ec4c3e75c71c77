"""One program's resolution: ld.so's loading order and search rules, step by step.

Mirrors glibc's elf/dl-deps.c (breadth-first DT_NEEDED) and elf/dl-load.c
(_dl_map_object, _dl_dst_substitute, fillin_rpath, open_path, open_verify).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import deque
from typing import TYPE_CHECKING

from initbuilder.loader.elf import DlopenFeature, ElfInfo
from initbuilder.loader.linkmap import Closure, Edge, LinkMap, LoadedObject, UnmetFeature
from initbuilder.loader.treecache import Probe, TreeCache

if TYPE_CHECKING:
    from initbuilder.loader.ldso import LoaderFacts

DLOPEN_LEVELS = {"none": 0, "required": 1, "recommended": 2, "suggested": 3}
_VALID_OSABI = ("ELFOSABI_SYSV", "ELFOSABI_LINUX")
_IDENT = re.compile(r"[A-Za-z0-9_]")

# (path as the loader built it, what is there, kind of rule, the rule for people)
Hit = tuple[str, Probe, str, str]


class LoadError(Exception):
    """A candidate the loader opens and then refuses with an error (it does not go on)."""


def check_loadable(info: ElfInfo, main: ElfInfo) -> bool:
    """open_verify: False skips a candidate of another class or machine; LoadError
    where the loader stops instead."""
    if info.elfclass != main.elfclass:
        return False
    if info.little_endian != main.little_endian:
        raise LoadError("ELF file data encoding does not match the program's")
    if info.osabi not in _VALID_OSABI:
        raise LoadError(f"ELF file OS ABI invalid ({info.osabi})")
    if info.machine != main.machine:
        return False
    if info.type not in ("ET_DYN", "ET_EXEC"):
        raise LoadError("only ET_DYN and ET_EXEC can be loaded")
    return True


def expand_dst(text: str, origin: str | None, facts: LoaderFacts) -> str | None:
    """Substitute $ORIGIN, $PLATFORM, $LIB (and ${...}); None when a known token has no
    value. An unknown ``$NAME`` stays as it is, as in glibc."""
    if "$" not in text:
        return text
    values = (("ORIGIN", origin), ("PLATFORM", facts.platform), ("LIB", facts.lib))
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        i += 1
        if char != "$":
            out.append(char)
            continue
        for token, value in values:
            length = _dst_length(text, i, token)
            if length:
                if value is None:
                    return None
                out.append(value)
                i += length
                break
        else:
            out.append("$")
    return "".join(out)


def _dst_length(text: str, at: int, token: str) -> int:
    curly = text.startswith("{", at)
    start = at + 1 if curly else at
    if not text.startswith(token, start):
        return 0
    after = text[start + len(token):start + len(token) + 1]
    if curly:
        return len(token) + 2 if after == "}" else 0
    return 0 if after and _IDENT.match(after) else len(token)


class Search:
    """Resolves one FILE: builds its link map the way ld.so would at startup,
    then follows the dlopen notes."""

    def __init__(self, tree: TreeCache, file: str, guest: str, info: ElfInfo,
                 identity: tuple[int, int], *, library_path: str = "",
                 dlopen_level: int = DLOPEN_LEVELS["recommended"]) -> None:
        self.tree = tree
        self.dlopen_level = dlopen_level
        self.info = info
        self.facts = tree.facts(info, info.interpreter)
        self.map = LinkMap()
        self.queue: deque[LoadedObject] = deque()
        # Executed programs get $ORIGIN from /proc/self/exe (symlinks resolved); a
        # library given directly is treated as dlopen()ed by that path.
        program = info.interpreter is not None
        origin_of = tree.root.resolve(guest) if program else guest
        self.main = LoadedObject(guest, info, [guest], None, "main", "main", identity,
                                 posixpath.dirname(origin_of), label=file)
        self.file = file
        self._dirs: dict[tuple[int, str], list[str]] = {}
        llp = expand_path(library_path, ":;", self.main.origin, self.facts)
        self.library_path = llp

    # -- driver -------------------------------------------------------------------
    def run(self) -> Closure:
        self.map.add(self.main)
        self.map.add(LoadedObject(None, None, list(self.facts.vdso), None, "vDSO", "vdso"))
        interpreter = self._interpreter()
        if self.info.dynamic:
            self.queue.append(self.main)
        done: set[int] = set()
        unmet: list[UnmetFeature] = []
        while True:
            self._breadth_first()
            fresh = [o for o in self.map.objects if id(o) not in done and o.info is not None]
            if not fresh:
                break
            for obj in fresh:
                done.add(id(obj))
                unmet += self._dlopen(obj)
        return Closure(self.file, self.main, interpreter, self.map.libraries,
                       list(self.map.missing.values()), unmet, self.facts.system_dirs)

    def _interpreter(self) -> LoadedObject | None:
        path = self.info.interpreter
        reported = path is not None
        if path is None:
            # A library given directly: the loader that would run it is there all the
            # same, so requests for its soname reuse it (as under ldd).
            if not (self.info.dynamic and self.info.needed) or not self.facts.interpreter:
                return None
            path = self.facts.interpreter
        probe = self.tree.probe(path)
        if probe is None or probe.info is None:
            if reported:
                why = "not found" if probe is None else probe.error or "unreadable"
                self.map.lack(path, self.main, f"interpreter {why}")
            return None
        names = [path] + ([probe.info.soname] if probe.info.soname else [])
        obj = LoadedObject(path, probe.info, names, None,
                           "interpreter (PT_INTERP)" if reported else "default interpreter",
                           "interpreter", probe.identity, posixpath.dirname(path), label=path)
        self.map.add(obj)
        return obj if reported else None

    def _breadth_first(self) -> None:
        while self.queue:
            obj = self.queue.popleft()
            assert obj.info is not None
            for name in obj.info.needed:
                obj.edges.append(Edge(name, self.request(name, obj)))

    def _dlopen(self, obj: LoadedObject) -> list[UnmetFeature]:
        assert obj.info is not None
        unmet: list[UnmetFeature] = []
        for feature in obj.info.dlopen:
            if DLOPEN_LEVELS[feature.priority] > self.dlopen_level:
                continue
            target = None
            for soname in feature.sonames:
                target = self.request(soname, obj, feature, quiet=True)
                if target is not None:
                    obj.edges.append(Edge(soname, target, feature))
                    break
            if target is None:
                if feature.priority == "required":
                    names = " or ".join(feature.sonames)
                    self.map.lack(feature.sonames[0], obj,
                                  f"dlopen feature {feature.feature!r} needs {names}")
                else:
                    unmet.append(UnmetFeature(feature, obj))
        return unmet

    # -- one request ----------------------------------------------------------------
    def request(self, raw: str, requester: LoadedObject, feature: DlopenFeature | None = None,
                quiet: bool = False) -> LoadedObject | None:
        """Map ``raw`` for ``requester`` as _dl_map_object does; None when it fails."""
        name = expand_dst(raw, requester.origin, self.facts)
        if not name:
            if not quiet:
                self.map.lack(raw, requester, "empty dynamic string token substitution")
            return None
        found = self.map.find(name)
        if found is not None:
            if found.path is not None:
                self.map.alias(found, name)
            self._note(found, requester, name)
            return found
        try:
            hit: Hit | None = None
            if "/" in name:
                probe = self.tree.probe(name)
                if probe is not None and self._accept(name, probe):
                    hit = (name, probe, "path", "path in DT_NEEDED")
            else:
                hit = self.search(name, requester, self.facts.hwcaps)
        except LoadError as exc:
            if not quiet:
                self.map.lack(name, requester, str(exc))
            return None
        if hit is None:
            if not quiet:
                self.map.lack(name, requester, "not found")
            return None
        path, probe, kind, rule = hit
        same = self.map.same_file(probe.identity)
        if same is not None:
            self.map.alias(same, name)
            self._note(same, requester, name)
            return same
        absolute = path if path.startswith("/") else os.path.join(os.getcwd(), path)
        obj = LoadedObject(path, probe.info, [name], requester, rule, kind, probe.identity,
                           posixpath.dirname(absolute), label=path)
        if self.facts.hwcaps and "/glibc-hwcaps/" in path and "/" not in name:
            obj.baseline = self._baseline(name, requester, path)
        if feature is not None:
            obj.rule += f" (dlopen {feature.feature or feature.sonames[0]})"
        self.map.add(obj)
        self._note(obj, requester, name)
        self.queue.append(obj)
        return obj

    def _baseline(self, name: str, requester: LoadedObject, path: str) -> str | None:
        # What a CPU without any glibc-hwcaps level would load: shipped as well.
        try:
            plain = self.search(name, requester, ())
        except LoadError:
            return None
        return plain[0] if plain and plain[0] != path else None

    def _note(self, target: LoadedObject, requester: LoadedObject, name: str) -> None:
        if target.loader is None and target.path is not None and target is not self.main:
            if not target.listed and name in target.names:
                # The interpreter is listed under the name first asked for.
                target.names.remove(name)
                target.names.insert(0, name)
            self.map.note_interpreter(target, requester)
        else:
            self.map.note(target, requester)

    def search(self, name: str, loader: LoadedObject, hwcaps: tuple[str, ...]) -> Hit | None:
        """The search order for a name without a slash (dl-load.c, _dl_map_object)."""
        info = loader.info
        assert info is not None
        if info.runpath is None:
            did_main = False
            obj: LoadedObject | None = loader
            while obj is not None:
                dirs = self._search_dirs(obj, "rpath")
                if dirs:
                    hit = self._in_dirs(name, dirs, hwcaps, "rpath", f"RPATH of {obj.label}")
                    if hit:
                        return hit
                    did_main |= obj is self.main
                obj = obj.loader
            if not did_main:
                dirs = self._search_dirs(self.main, "rpath")
                hit = self._in_dirs(name, dirs, hwcaps, "rpath", f"RPATH of {self.main.label}")
                if hit:
                    return hit
        hit = self._in_dirs(name, self.library_path, hwcaps, "library_path", "LD_LIBRARY_PATH")
        if hit:
            return hit
        hit = self._in_dirs(name, self._search_dirs(loader, "runpath"), hwcaps, "runpath",
                            f"RUNPATH of {loader.label}")
        if hit:
            return hit
        cached = self._cache_lookup(name, hwcaps)
        # DF_1_NODEFLIB drops cache entries inside the default directories, and those.
        if cached and not (info.nodeflib and cached.startswith(self.facts.system_dirs)):
            probe = self.tree.probe(cached)
            if probe is not None and self._accept(cached, probe):
                return cached, probe, "cache", "ld.so.cache"
        if not info.nodeflib:
            return self._in_dirs(name, list(self.facts.system_dirs), hwcaps, "default",
                                 "default directories")
        return None

    def _cache_lookup(self, name: str, hwcaps: tuple[str, ...]) -> str | None:
        cache = self.tree.ld_cache(self.facts)
        if cache is not None:
            return cache.lookup(name, self.facts.cache_flags, hwcaps)
        return self.tree.conf_index(self.info, self.facts).lookup(name, hwcaps)

    def _in_dirs(self, name: str, dirs: list[str], hwcaps: tuple[str, ...], kind: str,
                 rule: str) -> Hit | None:
        for directory in dirs:
            for sub in hwcaps:
                candidate = f"{directory}glibc-hwcaps/{sub}/{name}"
                probe = self.tree.probe(candidate)
                if probe is not None and self._accept(candidate, probe):
                    return candidate, probe, kind, f"{rule}, glibc-hwcaps/{sub}"
            candidate = directory + name
            probe = self.tree.probe(candidate)
            if probe is not None and self._accept(candidate, probe):
                return candidate, probe, kind, rule
        return None

    def _accept(self, path: str, probe: Probe) -> bool:
        if probe.info is None:
            raise LoadError(f"{path}: {probe.error}")
        try:
            return check_loadable(probe.info, self.info)
        except LoadError as exc:
            raise LoadError(f"{path}: {exc}") from None

    def _search_dirs(self, obj: LoadedObject, kind: str) -> list[str]:
        key = (id(obj), kind)
        dirs = self._dirs.get(key)
        if dirs is None:
            info = obj.info
            text = None
            if info is not None:
                # An object with DT_RUNPATH has its DT_RPATH ignored (get-dynamic-info.h).
                text = info.runpath if kind == "runpath" else (
                    info.rpath if info.runpath is None else None)
            dirs = expand_path(text or "", ":", obj.origin, self.facts)
            self._dirs[key] = dirs
        return dirs


def expand_path(text: str, separators: str, origin: str | None,
                facts: LoaderFacts) -> list[str]:
    """Split a search path as fillin_rpath does: tokens expanded, elements whose token has
    no value dropped, trailing slashes made one, an empty element meaning the cwd."""
    if not text:
        return []
    dirs: list[str] = []
    for element in re.split(f"[{re.escape(separators)}]", text):
        if element:
            expanded = expand_dst(element, origin, facts)
            if not expanded:
                continue
            expanded = expanded.rstrip("/") + "/" if expanded != "/" else "/"
        else:
            expanded = ""
        if expanded not in dirs:
            dirs.append(expanded)
    return dirs
