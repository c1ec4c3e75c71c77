"""ld.so.conf and ld.so.cache, read the way glibc's ldconfig writes and ld.so reads them.

The loader itself only reads the binary cache. When a tree has no usable cache (a fresh
sysroot), :class:`ConfIndex` derives the same answers from its ld.so.conf, as ldconfig
would have: directories from the configuration first, then the trusted ones.
"""

from __future__ import annotations

import glob
import logging
import os
import posixpath
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from initbuilder.loader.elf import ElfError, ElfInfo, read_elf
from initbuilder.loader.sysroot import Sysroot

log = logging.getLogger("initkit.closure")

CACHE_PATH = "/etc/ld.so.cache"
CONF_PATH = "/etc/ld.so.conf"
_OLD_MAGIC = b"ld.so-1.7.0"
_NEW_MAGIC = b"glibc-ld.so.cache1.1"
_EXTENSION_MAGIC = 0xEAA42174
_EXTENSION_TAG_HWCAPS = 1
HWCAP_EXTENSION = 1 << 62  # DL_CACHE_HWCAP_EXTENSION: hwcap's low word indexes glibc-hwcaps


def read_conf(root: Sysroot, path: str = CONF_PATH) -> list[str]:
    """Directories named by ld.so.conf (guest paths, in order), ``include`` globs sorted."""
    dirs: list[str] = []
    _read_conf(root, path, dirs, set())
    return dirs


def _read_conf(root: Sysroot, path: str, dirs: list[str], seen: set[str]) -> None:
    if path in seen:  # an include loop; ldconfig would recurse until it fails
        return
    seen.add(path)
    try:
        with open(root.host(path), "rb") as f:
            text = f.read().decode("utf-8", "surrogateescape")
    except OSError:
        return
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include") and line[7:8] in (" ", "\t"):
            for pattern in line[8:].split():
                if not pattern.startswith("/"):
                    pattern = posixpath.join(posixpath.dirname(path), pattern)
                for found in sorted(_glob(root, pattern)):
                    _read_conf(root, found, dirs, seen)
        elif line[:5].lower() == "hwcap" and line[5:6] in (" ", "\t"):
            continue  # obsolete; ldconfig ignores it too
        else:
            # One directory per line; a "=TYPE" suffix is an old library type tag.
            item = line.split("=", 1)[0].rstrip().rstrip("/") or "/"
            if item not in dirs:
                dirs.append(item)


def _glob(root: Sysroot, pattern: str) -> list[str]:
    if root.is_host:
        return glob.glob(pattern)
    found = glob.glob(root.host_literal(pattern))
    return [g for g in (root.guest(p) for p in found) if g is not None]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    flags: int
    path: str
    hwcap: int


class LdCache:
    """A parsed ld.so.cache: key (a soname) -> entries in file order."""

    def __init__(self, entries: dict[str, list[CacheEntry]], hwcaps: list[str]) -> None:
        self.entries = entries
        self.hwcaps = hwcaps

    @classmethod
    def load(cls, root: Sysroot, path: str = CACHE_PATH) -> LdCache | None:
        """Parse the cache of ``root``; None when it is missing or not a glibc cache."""
        try:
            with open(root.host(path), "rb") as f:
                data = f.read()
        except OSError:
            return None
        try:
            return cls.parse(data)
        except (struct.error, ValueError, IndexError) as exc:
            log.warning("%s%s: unreadable ld.so.cache (%s); using ld.so.conf instead",
                        "" if root.is_host else root.root, path, exc)
            return None

    @classmethod
    def parse(cls, data: bytes) -> LdCache | None:
        """Parse cache bytes: the new format, alone or after the old one."""
        start = 0
        if data.startswith(_OLD_MAGIC):
            (nlibs,) = struct.unpack_from("<I", data, 12)
            start = (16 + nlibs * 12 + 7) & ~7
            if data[start:start + len(_NEW_MAGIC)] != _NEW_MAGIC:
                return cls._parse_old(data, nlibs)
        elif not data.startswith(_NEW_MAGIC):
            return None
        endian = "<" if data[start + 28] != 3 else ">"  # cache_file_new.flags: 2 LE, 3 BE
        nlibs, _len_strings, _flags, ext_offset = struct.unpack_from(
            endian + "IIB3xI", data, start + 20)

        def string(offset: int) -> str:
            at = start + offset
            return os.fsdecode(data[at:data.index(b"\0", at)])

        hwcaps: list[str] = []
        if ext_offset and data[start + ext_offset:]:
            magic, count = struct.unpack_from(endian + "II", data, start + ext_offset)
            if magic == _EXTENSION_MAGIC:
                for i in range(count):
                    tag, _f, off, size = struct.unpack_from(
                        endian + "IIII", data, start + ext_offset + 8 + 16 * i)
                    if tag == _EXTENSION_TAG_HWCAPS:
                        offsets = struct.unpack_from(endian + f"{size // 4}I", data,
                                                     start + off)
                        hwcaps = [string(o) for o in offsets]
        entries: dict[str, list[CacheEntry]] = {}
        for flags, key, value, _osv, hwcap in struct.iter_unpack(
                endian + "iIIIQ", data[start + 48:start + 48 + 24 * nlibs]):
            entries.setdefault(string(key), []).append(CacheEntry(flags, string(value), hwcap))
        return cls(entries, hwcaps)

    @classmethod
    def _parse_old(cls, data: bytes, nlibs: int) -> LdCache:
        strings_at = 16 + nlibs * 12
        entries: dict[str, list[CacheEntry]] = {}

        def string(offset: int) -> str:
            at = strings_at + offset
            return os.fsdecode(data[at:data.index(b"\0", at)])

        for flags, key, value in struct.iter_unpack("<iII", data[16:strings_at]):
            entries.setdefault(string(key), []).append(CacheEntry(flags, string(value), 0))
        return cls(entries, [])

    def lookup(self, name: str, flags: frozenset[int], hwcaps: tuple[str, ...]) -> str | None:
        """The path ld.so takes from the cache for ``name`` (glibc's search_cache):
        the best active glibc-hwcaps entry, else the first plain entry."""
        best: CacheEntry | None = None
        best_rank = len(hwcaps)
        for entry in self.entries.get(name, ()):
            if entry.flags not in flags:
                continue
            if entry.hwcap & HWCAP_EXTENSION:
                index = entry.hwcap & 0xFFFFFFFF
                sub = self.hwcaps[index] if index < len(self.hwcaps) else None
                if sub in hwcaps and hwcaps.index(sub) < best_rank:
                    best, best_rank = entry, hwcaps.index(sub)
                continue
            if best is not None:
                break
            if entry.hwcap:
                continue  # legacy hwcap subdirectory entries: see docs/closure.md
            return entry.path
        return best.path if best else None


class ConfIndex:
    """What ldconfig would put in the cache for a tree: name -> path, first directory wins."""

    def __init__(self, root: Sysroot, dirs: Iterable[str],
                 accepts: Callable[[ElfInfo], bool], hwcaps: tuple[str, ...] = ()) -> None:
        self._root = root
        self._dirs = list(dirs)
        self._accepts = accepts
        self._hwcaps = hwcaps
        self._index: dict[str, str] | None = None
        self._hw_index: dict[tuple[str, str], str] = {}

    def lookup(self, name: str, hwcaps: tuple[str, ...] = ()) -> str | None:
        """Path for ``name``: a glibc-hwcaps copy in ``hwcaps`` order first, then the plain one."""
        if self._index is None:
            self._build()
        for sub in hwcaps:
            path = self._hw_index.get((sub, name))
            if path is not None:
                return path
        assert self._index is not None
        return self._index.get(name)

    def _build(self) -> None:
        index: dict[str, str] = {}
        for directory in self._dirs:
            self._scan(directory, index)
            for sub in self._hwcaps:
                found: dict[str, str] = {}
                self._scan(f"{directory.rstrip('/')}/glibc-hwcaps/{sub}", found)
                for key, path in found.items():
                    self._hw_index.setdefault((sub, key), path)
        self._index = index

    def _scan(self, directory: str, index: dict[str, str]) -> None:
        directory = directory.rstrip("/") or "/"
        try:
            names = sorted(os.listdir(self._root.host(directory)))
        except OSError:
            return
        by_soname: dict[str, str] = {}
        for name in names:
            if not (name.startswith(("lib", "ld-")) and ".so" in name):
                continue
            path = posixpath.join(directory, name)
            host = self._root.host(path)
            try:
                if not stat.S_ISREG(os.stat(host).st_mode):
                    continue
                info = read_elf(host)
            except (OSError, ElfError):
                continue
            if not self._accepts(info):
                continue
            index.setdefault(name, path)
            soname = info.soname or name
            # The soname symlink ldconfig maintains, or else the newest file.
            if name == soname or soname not in by_soname:
                by_soname[soname] = path
        for soname, path in by_soname.items():
            index.setdefault(soname, posixpath.join(directory, soname)
                             if soname in names else path)
