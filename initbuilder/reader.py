"""Read initrds back: every record of every concatenated archive, compressed or not.

A small newc parser of our own, because an initrd may be several archives one after
another (early microcode, then the main one) and libarchive's cpio reader stops at the
first trailer. libarchive only decompresses.
"""

from __future__ import annotations

import mmap
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import libarchive

from initbuilder.image import Kind
from initkit.errors import InitkitError, reading


@dataclass(frozen=True)
class ArchiveMember:
    """One record of an initrd as read back."""

    path: str
    kind: Kind
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    ino: int
    nlink: int
    major: int = 0
    minor: int = 0
    target: str | None = None  # symlink text, or the first name of a hardlink group
    data: bytes | None = None  # file content (the group's content for hardlinks)
    archive: int = 0  # which concatenated archive it came from (0-based)


_NEWC_MAGICS = (b"070701", b"070702")
_HEADER = 110
_TRAILER = "TRAILER!!!"
_KIND_OF = {
    stat.S_IFDIR: Kind.DIR, stat.S_IFREG: Kind.FILE, stat.S_IFLNK: Kind.SYMLINK,
    stat.S_IFCHR: Kind.CHAR, stat.S_IFBLK: Kind.BLOCK, stat.S_IFIFO: Kind.FIFO,
}
_COMPRESSED_MAGICS = (
    b"\x1f\x8b", b"\x1f\x9e", b"BZh", b"\xfd7zXZ\x00", b"\x5d\x00\x00", b"\x02\x21\x4c\x18",
    b"\x04\x22\x4d\x18", b"\x28\xb5\x2f\xfd", b"\x89LZO",
)


def read_initrd(path: str | os.PathLike[str], *, with_data: bool = False) -> list[ArchiveMember]:
    """Every record of an initrd (compressed or not, concatenated archives included),
    in archive order, without the trailers. File contents only ``with_data``; the file
    is mapped, not read, so listing a large initrd stays cheap."""
    src = Path(path)
    with reading(src, "initrd"), src.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise InitkitError(f"{src}: empty file, not an initrd")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            members: list[ArchiveMember] = []
            for index, raw in enumerate(_archives(blob, src, with_data)):
                members.extend(_link_groups(raw, index))
    if not members:
        raise InitkitError(f"{src}: holds no entries")
    return members


def _archives(blob: mmap.mmap, src: Path, with_data: bool,
              offset: int | None = None) -> Iterator[list[ArchiveMember]]:
    """Parse newc archives one after the other, skipping NUL padding between them as
    the kernel does; a compressed stream is unpacked to a temp file and parsed in turn."""
    pos = 0
    while pos < len(blob):
        if blob[pos] == 0:
            pos += 1
            continue
        if blob[pos:pos + 6] in _NEWC_MAGICS:
            records, pos = _parse_newc(blob, pos, src, with_data)
            yield records
            continue
        if offset is None and blob[pos:pos + 8].startswith(_COMPRESSED_MAGICS):
            with tempfile.TemporaryFile() as spool:
                _decompress(bytes(blob[pos:]), spool, src, pos)
                spool.flush()
                if spool.tell() == 0:
                    raise InitkitError(f"{src}: compressed data at offset {pos} is empty")
                with mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ) as inner:
                    yield from _archives(inner, src, with_data, offset=pos)
            return
        where = "" if offset is None else f"in the data decompressed from offset {offset} "
        raise InitkitError(
            f"{src}: corrupt or unsupported initrd: no newc cpio archive {where}at offset {pos} "
            f"(bytes {blob[pos:pos + 6]!r}); the kernel reads newc cpio, optionally compressed"
        )


def _decompress(data: bytes, out: BinaryIO, src: Path, offset: int) -> None:
    try:
        with libarchive.memory_reader(data, format_name="raw", filter_name="all") as archive:
            for entry in archive:
                for block in entry.get_blocks():
                    out.write(block)
    except libarchive.ArchiveError as exc:
        raise InitkitError(
            f"{src}: corrupt compressed data at offset {offset}: {exc.msg}"
        ) from None


def _parse_newc(blob: mmap.mmap, pos: int, src: Path,
                with_data: bool) -> tuple[list[ArchiveMember], int]:
    records: list[ArchiveMember] = []
    while True:
        start = pos
        header = blob[pos:pos + _HEADER]
        if len(header) < _HEADER or header[:6] not in _NEWC_MAGICS:
            raise InitkitError(f"{src}: corrupt newc header at offset {start}; archive truncated?")
        try:
            fields = [int(header[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise InitkitError(f"{src}: corrupt newc header at offset {start}") from None
        ino, mode, uid, gid, nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _chk = fields
        name_end = pos + _HEADER + namesize
        raw_name = blob[pos + _HEADER:name_end]
        if namesize == 0 or len(raw_name) < namesize or raw_name[-1] != 0:
            raise InitkitError(f"{src}: corrupt name in the newc record at offset {start}")
        name = raw_name[:-1].decode("utf-8", errors="surrogateescape")
        body = _align4(name_end)
        if body + size > len(blob):
            raise InitkitError(f"{src}: /{name} is cut short at offset {body}; archive truncated")
        pos = _align4(body + size)
        if name == _TRAILER:
            return records, pos
        kind = _KIND_OF.get(stat.S_IFMT(mode))
        if kind is None:
            raise InitkitError(f"{src}: /{name} has an unknown file type {mode:o}")
        target = None
        if kind is Kind.SYMLINK:
            target = blob[body:body + size].decode("utf-8", errors="surrogateescape")
        data = blob[body:body + size] if with_data and kind is Kind.FILE else None
        records.append(ArchiveMember(
            path=name, kind=kind, mode=stat.S_IMODE(mode), uid=uid, gid=gid,
            size=size, mtime=mtime, ino=ino, nlink=nlink,
            major=rmaj, minor=rmin, target=target, data=data,
        ))


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _link_groups(records: list[ArchiveMember], index: int) -> list[ArchiveMember]:
    """Turn later names of a multiply linked file into HARDLINK members of the first,
    and give every name of the group the content (newc stores it with one of them)."""
    first: dict[int, ArchiveMember] = {}
    content: dict[int, tuple[int, bytes | None]] = {}
    for rec in records:
        if rec.kind is Kind.FILE and rec.nlink > 1:
            first.setdefault(rec.ino, rec)
            if rec.size:
                content[rec.ino] = (rec.size, rec.data)
    out: list[ArchiveMember] = []
    for rec in records:
        if rec.kind is Kind.FILE and rec.nlink > 1:
            size, data = content.get(rec.ino, (0, b"" if rec.data is not None else None))
            head = first[rec.ino]
            if rec is head:
                rec = replace(rec, data=data, size=size, archive=index)
            else:
                rec = replace(rec, kind=Kind.HARDLINK, target=head.path, data=data,
                            size=size, archive=index)
        else:
            rec = replace(rec, archive=index)
        out.append(rec)
    return out


