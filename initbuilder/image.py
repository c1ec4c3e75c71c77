"""The Image model: an ordered, validated map of guest path -> entry.

Every source (user files, busybox, ELF closures, kernel modules, the guest runtime, base
archives) adds entries here; the cpio writer serialises the result. Guest paths are
stored relative to the root, without a leading slash ("usr/bin/env").
"""

from __future__ import annotations

import enum
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from initkit.errors import InitkitError, reading

_MAX_LINK_HOPS = 40  # the kernel's own limit for following symlinks


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

    # -- reading ------------------------------------------------------------------
    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and normalize(path) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str) -> Entry | None:
        return self._entries.get(normalize(path))

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
                if hops > _MAX_LINK_HOPS:
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
                if old.kind is Kind.DIR and entry.kind is not Kind.DIR and self._has_children(rel):
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
            entry = _replace(entry, target=target)
        self._entries[rel] = entry
        return rel

    def _has_children(self, rel: str) -> bool:
        prefix = rel + "/"
        return any(p.startswith(prefix) for p in self._entries)

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
                self._entries[parent] = Entry(Kind.DIR, 0o755, source=source, weak=True)

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
    ) -> str:
        """Add a regular file from a host path (read at write time) or from bytes.

        Without ``mode`` a host file keeps its permission bits, bytes get 0644.
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
                      source=source or (str(host_path) if host_path else ""))
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

    def add_device(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600,
                   uid: int = 0, gid: int = 0, *, source: str = "", weak: bool = False) -> str:
        """Add a device node record (``kind`` is "c" or "b"); no mknod is needed."""
        if kind not in ("c", "b"):
            raise InitkitError(f"device /{normalize(path)}: kind must be 'c' or 'b', not {kind!r}")
        k = Kind.CHAR if kind == "c" else Kind.BLOCK
        return self.add(path, Entry(k, mode & 0o7777, uid, gid, major=major, minor=minor,
                                    source=source, weak=weak))

    def add_fifo(self, path: str, mode: int = 0o644, uid: int = 0, gid: int = 0, *,
                 source: str = "") -> str:
        return self.add(path, Entry(Kind.FIFO, mode & 0o7777, uid, gid, source=source))

    def merge(self, other: Image) -> None:
        """Add every entry of ``other`` (same conflict rules as add)."""
        for path, entry in other.items():
            if entry.kind is not Kind.HARDLINK:
                self.add(path, entry)
        for path, entry in other.items():
            if entry.kind is Kind.HARDLINK:
                self.add(path, entry)

    # -- host trees ---------------------------------------------------------------
    def add_host_path(self, host: str | os.PathLike[str], guest: str | None = None, *,
                      source: str = "") -> str:
        """Add a host file, symlink (kept as a symlink) or directory (recursively) at
        ``guest`` (default: the same path). Permission bits come from the host;
        ownership is 0:0 so the initrd does not depend on who built it."""
        host_path = Path(host)
        guest = guest if guest is not None else os.path.abspath(host_path)
        with reading(host_path):
            st = host_path.lstat()
        src = source or str(host_path)
        if stat.S_ISLNK(st.st_mode):
            return self.add_symlink(guest, os.readlink(host_path), source=src)
        if stat.S_ISDIR(st.st_mode):
            rel = self.add_directory(guest, stat.S_IMODE(st.st_mode), source=src)
            try:
                names = sorted(os.listdir(host_path))
            except PermissionError:
                raise InitkitError(f"{host_path}: directory is not readable") from None
            for name in names:
                self.add_host_path(host_path / name, f"{rel}/{name}", source=source)
            return rel
        if stat.S_ISREG(st.st_mode):
            return self.add_file(guest, host=host_path, source=src)
        if stat.S_ISFIFO(st.st_mode):
            return self.add_fifo(guest, stat.S_IMODE(st.st_mode), source=src)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
            return self.add_device(guest, kind, os.major(st.st_rdev), os.minor(st.st_rdev),
                                   stat.S_IMODE(st.st_mode), source=src)
        raise InitkitError(f"{host_path}: cannot put a socket or unknown file type in an initrd")

    def add_host_file_keeping_links(self, host: str | os.PathLike[str], *,
                                    source: str = "") -> str:
        """Add the file at absolute host path ``host`` under the same guest path,
        recreating every symlink met on the way (in parent directories and at the end)
        as a symlink, and adding what it points to. Returns the guest path of the
        final regular file. This is how libraries keep the paths the loader uses."""
        path = os.path.abspath(os.fspath(host))
        hops = 0
        while True:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts) + 1):
                prefix = "/" + "/".join(parts[:i])
                if os.path.islink(prefix):
                    key = self.resolve(prefix)
                    existing = self._entries.get(key)
                    if (existing is not None and existing.kind is Kind.DIR
                            and (not existing.weak or self._has_children(key))):
                        # The image already has a real directory where the host has a
                        # link (/lib with modules in it, on a merged-usr host): the
                        # loader's path works through the directory just as well.
                        continue
                    hops += 1
                    if hops > _MAX_LINK_HOPS:
                        raise InitkitError(f"{host}: too many levels of symbolic links")
                    target = os.readlink(prefix)
                    if existing is None or existing.kind is not Kind.SYMLINK:
                        self.add_symlink(prefix, target, source=source or str(host))
                    rest = "/".join(parts[i:])
                    resolved = os.path.normpath(os.path.join(os.path.dirname(prefix), target))
                    path = os.path.join(resolved, rest) if rest else resolved
                    break
            else:
                return self.add_file(path, host=path, source=source or str(host))


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


def _replace(entry: Entry, **changes: object) -> Entry:
    from dataclasses import replace

    return replace(entry, **changes)  # type: ignore[arg-type]
