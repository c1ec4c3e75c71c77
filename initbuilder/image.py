"""The Image model: an ordered, validated map of guest path -> entry.

Every source (user files, busybox, ELF closures, kernel modules, the guest runtime, base
archives) adds entries here; the cpio writer serialises the result. Guest paths are
stored relative to the root, without a leading slash ("usr/bin/env"). The model walks
no host tree: initbuilder.hostfiles reads trees into it. A host file entry is only
checked to be a readable regular file, and read for its size and bytes when a conflict
rule or the writer needs them.
"""

from __future__ import annotations

import enum
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from initbuilder.linklimit import MAX_LINK_HOPS
from initkit.errors import InitkitError, reading


class Kind(enum.StrEnum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(frozen=True)
class Entry:
    """One thing in the initrd. ``mode`` holds permission bits only (07777).

    A FILE takes its bytes from ``host`` (read when the archive is written) or ``data``.
    A SYMLINK's ``target`` is the link text; a HARDLINK's ``target`` is the guest path
    of the FILE it shares an inode with.
    """

    kind: Kind
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    host: Path | None = None
    data: bytes | None = None
    target: str | None = None
    major: int = 0
    minor: int = 0
    # Where the entry came from, for messages; not part of its identity.
    source: str = field(default="", compare=False)
    # A default (implied parent, base skeleton) that an explicit entry may replace.
    weak: bool = field(default=False, compare=False)

    def size(self) -> int:
        """Bytes of file content (0 for everything but FILE)."""
        if self.kind is not Kind.FILE:
            return 0
        if self.data is not None:
            return len(self.data)
        assert self.host is not None
        return self.host.stat().st_size

    def describe(self) -> str:
        """Short human description: what and from where."""
        what = {
            Kind.FILE: f"file {self.host}" if self.host else f"{len(self.data or b'')} bytes",
            Kind.SYMLINK: f"symlink -> {self.target}",
            Kind.HARDLINK: f"hardlink to /{self.target}",
            Kind.CHAR: f"char device {self.major},{self.minor}",
            Kind.BLOCK: f"block device {self.major},{self.minor}",
            Kind.DIR: "directory",
            Kind.FIFO: "fifo",
        }[self.kind]
        mode = f"{self.mode:04o} {self.uid}:{self.gid}"
        return f"{what} ({mode}{', from ' + self.source if self.source else ''})"


def normalize(path: str | os.PathLike[str]) -> str:
    """Normalise a guest path to root-relative form; refuse paths that escape the root."""
    text = os.fspath(path)
    if "\0" in text:
        raise InitkitError(f"guest path {text!r} contains a NUL byte")
    norm = posixpath.normpath("/" + text.lstrip("/"))
    # normpath("/../x") is "/x": the leading slash clamps "..", so check the raw parts.
    depth = 0
    for part in text.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise InitkitError(f"guest path {text!r} escapes the initrd root through '..'")
        elif part not in ("", "."):
            depth += 1
    rel = norm.lstrip("/")
    if not rel:
        raise InitkitError(f"guest path {text!r} names the root itself, not an entry")
    return rel


def _same_content(a: Entry, b: Entry) -> bool:
    """True when two FILE entries would write the same bytes."""
    if a.host is not None and b.host is not None and os.path.samefile(a.host, b.host):
        return True
    if a.size() != b.size():
        return False
    return _read_all(a) == _read_all(b)


def _read_all(entry: Entry) -> bytes:
    if entry.data is not None:
        return entry.data
    assert entry.host is not None
    return entry.host.read_bytes()


def _equivalent(a: Entry, b: Entry) -> bool:
    if a == b:
        return True
    if a.kind is Kind.FILE and b.kind is Kind.FILE:
        meta = (a.mode, a.uid, a.gid) == (b.mode, b.uid, b.gid)
        return meta and _same_content(a, b)
    return False


class Image:
    """Guest path -> Entry, with implied parent directories and conflict checks."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._parents: set[str] = set()  # paths with at least one entry below them

    # -- reading ------------------------------------------------------------------
    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and normalize(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> Entry | None:
        return self._entries.get(normalize(path))

    def __getitem__(self, path: str) -> Entry:
        """The entry at ``path``; KeyError when there is none."""
        return self._entries[normalize(path)]

    def has_children(self, path: str) -> bool:
        """True when some entry lies below ``path`` (taken as stored: no links followed)."""
        return normalize(path) in self._parents

    def items(self) -> list[tuple[str, Entry]]:
        """Entries in archive order: sorted by path components, so parents come first."""
        return sorted(self._entries.items(), key=lambda kv: kv[0].split("/"))

    def __iter__(self) -> Iterator[str]:
        return iter(path for path, _ in self.items())

    def resolve(self, path: str) -> str:
        """Follow symlinks already in the image through every parent component, as the
        kernel does when it unpacks the archive; the last component is not followed."""
        rel = normalize(path)
        hops = 0
        parts = rel.split("/")
        done: list[str] = []
        while parts:
            part = parts.pop(0)
            candidate = "/".join([*done, part])
            entry = self._entries.get(candidate)
            if parts and entry is not None and entry.kind is Kind.SYMLINK:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise InitkitError(f"guest path /{rel}: too many levels of symbolic links")
                assert entry.target is not None
                base = "/" if entry.target.startswith("/") else "/" + "/".join(done)
                # Inside the initrd ".." at the root stays at the root, as in a chroot.
                joined = posixpath.normpath(posixpath.join(base, entry.target)).lstrip("/")
                done = joined.split("/") if joined else []
                continue
            if parts and entry is not None and entry.kind is not Kind.DIR:
                raise InitkitError(
                    f"cannot add /{rel}: /{candidate} is not a directory in the image "
                    f"({entry.describe()})"
                )
            done.append(part)
        return "/".join(done)

    # -- adding -------------------------------------------------------------------
    def add(self, path: str | os.PathLike[str], entry: Entry) -> str:
        """Add ``entry`` at ``path`` (parents implied 0755); return the stored path.

        The identical entry twice is fine; a different one is an error naming both.
        """
        rel = self.resolve(os.fspath(path))
        self._imply_parents(rel, entry.source)
        old = self._entries.get(rel)
        if old is not None and not _equivalent(old, entry):
            if old.weak and not entry.weak:
                if old.kind is Kind.DIR and entry.kind is not Kind.DIR and rel in self._parents:
                    raise self._conflict(rel, old, entry)
            elif entry.weak:
                return rel  # a default never overrides what is there
            else:
                raise self._conflict(rel, old, entry)
        elif old is not None and not (old.weak and not entry.weak):
            return rel
        if entry.kind is Kind.HARDLINK:
            assert entry.target is not None
            target = self.resolve(entry.target)
            found = self._entries.get(target)
            if found is None or found.kind is not Kind.FILE:
                raise InitkitError(
                    f"hardlink /{rel} names /{target}, which is not a regular file in the image"
                )
            entry = replace(entry, target=target)
        self._store(rel, entry)
        return rel

    def _store(self, rel: str, entry: Entry) -> None:
        self._entries[rel] = entry
        parent = rel.rpartition("/")[0]
        if parent:
            # Parents are always implied, so "has an entry below" is "has a child".
            self._parents.add(parent)

    @staticmethod
    def _conflict(rel: str, old: Entry, new: Entry) -> InitkitError:
        return InitkitError(
            f"conflicting entries for /{rel}: {old.describe()} and {new.describe()}; "
            "drop one of the inputs or give one another guest path"
        )

    def _imply_parents(self, rel: str, source: str) -> None:
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self._entries:
                self._store(parent, Entry(Kind.DIR, 0o755, source=source, weak=True))

    def add_directory(
        self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, *,
        source: str = "", weak: bool = False,
    ) -> str:
        return self.add(path, Entry(Kind.DIR, mode & 0o7777, uid, gid, source=source, weak=weak))

    def add_file(
        self,
        path: str,
        *,
        host: str | os.PathLike[str] | None = None,
        data: bytes | None = None,
        mode: int | None = None,
        uid: int = 0,
        gid: int = 0,
        source: str = "",
        weak: bool = False,
    ) -> str:
        """Add a regular file from a host path (read at write time) or from bytes.

        Without ``mode`` a host file keeps its permission bits, bytes get 0644. A weak
        file is a default that an explicit entry at its path replaces.
        """
        if (host is None) == (data is None):
            raise ValueError("add_file needs exactly one of host= or data=")
        host_path: Path | None = None
        if host is not None:
            host_path = Path(host)
            st = _stat_regular(host_path)
            if mode is None:
                mode = stat.S_IMODE(st.st_mode)
        if mode is None:
            mode = 0o644
        entry = Entry(Kind.FILE, mode & 0o7777, uid, gid, host=host_path, data=data,
                      source=source or (str(host_path) if host_path else ""), weak=weak)
        return self.add(path, entry)

    def add_symlink(self, path: str, target: str, *, uid: int = 0, gid: int = 0,
                    source: str = "") -> str:
        if not target or "\0" in target:
            raise InitkitError(f"symlink /{path.lstrip('/')} has an empty or invalid target")
        return self.add(path, Entry(Kind.SYMLINK, 0o777, uid, gid, target=target, source=source))

    def add_hardlink(self, path: str, target: str, *, source: str = "") -> str:
        """Add ``path`` as another name of the regular file at guest path ``target``."""
        found = self.get(self.resolve(target))
        if found is None:
            raise InitkitError(f"hardlink /{normalize(path)} names /{normalize(target)}, "
                               "which is not in the image; add the file first")
        return self.add(path, Entry(Kind.HARDLINK, found.mode, found.uid, found.gid,
                                    target=target, source=source))

    def add_device(self, path: str, kind: Kind, major: int, minor: int, mode: int = 0o600,
                   uid: int = 0, gid: int = 0, *, source: str = "", weak: bool = False) -> str:
        """Add a device node record (``kind`` is Kind.CHAR or Kind.BLOCK); no mknod is
        needed."""
        if kind is not Kind.CHAR and kind is not Kind.BLOCK:
            raise ValueError(f"device /{path.lstrip('/')}: kind must be Kind.CHAR or "
                             f"Kind.BLOCK, not {kind!r}")
        return self.add(path, Entry(kind, mode & 0o7777, uid, gid, major=major, minor=minor,
                                    source=source, weak=weak))

    def add_fifo(self, path: str, mode: int = 0o644, uid: int = 0, gid: int = 0, *,
                 source: str = "") -> str:
        return self.add(path, Entry(Kind.FIFO, mode & 0o7777, uid, gid, source=source))


def _stat_regular(path: Path) -> os.stat_result:
    with reading(path):
        st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        raise InitkitError(f"{path}: is a directory where a file is expected")
    if not stat.S_ISREG(st.st_mode):
        raise InitkitError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise InitkitError(f"{path}: file is not readable")
    return st

