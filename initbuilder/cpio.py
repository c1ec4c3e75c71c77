"""newc cpio: write an Image as the initrd the kernel unpacks.

Writing goes through libarchive (format and compression filters); every header field is
set here so the bytes depend only on the Image: entries sorted, one mtime, inode numbers
assigned in order, hardlinks kept (data with the last name, as GNU cpio does).
Reading initrds back is initbuilder/reader.py.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import libarchive
from libarchive import ffi

from initbuilder.image import Entry, Image, Kind
from initkit.errors import InitkitError, write_error, writing
from initkit.files import replacing

log = logging.getLogger("initkit.cpio")

# libarchive-c does not wrap these; declare them on the same library.
ffi.ffi("entry_set_ino64", [ctypes.c_void_p, ctypes.c_int64], None)
ffi.ffi("entry_set_nlink", [ctypes.c_void_p, ctypes.c_uint], None)
ffi.ffi("entry_set_dev", [ctypes.c_void_p, ctypes.c_uint64], None)
ffi.ffi("entry_set_pathname_utf8", [ctypes.c_void_p, ctypes.c_char_p], None)
ffi.ffi("entry_set_symlink_utf8", [ctypes.c_void_p, ctypes.c_char_p], None)
ffi.ffi("write_add_filter_program", [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int, ffi.check_int)

# Every compression the kernel's initramfs unpacker knows, by our name.
COMPRESSIONS = ("none", "gzip", "bzip2", "lzma", "xz", "lz4", "zstd")
_SUFFIXES = {
    ".gz": "gzip", ".gzip": "gzip", ".bz2": "bzip2", ".lzma": "lzma", ".xz": "xz",
    ".lz4": "lz4", ".zst": "zstd", ".zstd": "zstd",
}
# The kernel's lz4 decompressor reads only the legacy frame, and its xz decoder only
# CRC32 (or no) integrity checks; libarchive writes neither, so its "program" filter
# pipes through the lz4 and xz tools for those two.
_PROGRAMS = {"lz4": b"lz4 -l -9 -q", "xz": b"xz --check=crc32 -T1 -q -c"}
_CHUNK = 1 << 20
_TYPE_BITS = {
    Kind.DIR: stat.S_IFDIR, Kind.FILE: stat.S_IFREG, Kind.HARDLINK: stat.S_IFREG,
    Kind.SYMLINK: stat.S_IFLNK, Kind.CHAR: stat.S_IFCHR, Kind.BLOCK: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
}


def compression_for(out: str | os.PathLike[str], explicit: str | None = None) -> str:
    """The compression to use: ``explicit`` if given, else the one the suffix names, else none."""
    if explicit is not None:
        if explicit not in COMPRESSIONS:
            raise InitkitError(
                f"unknown compression {explicit!r}; choose one of {', '.join(COMPRESSIONS)}"
            )
        return explicit
    return _SUFFIXES.get(Path(out).suffix.lower(), "none")


def source_date_epoch(explicit: int | None = None) -> int:
    """The mtime of every entry: ``explicit``, else $SOURCE_DATE_EPOCH, else 0."""
    if explicit is not None:
        value: int | str = explicit
    else:
        value = os.environ.get("SOURCE_DATE_EPOCH", "0") or "0"
    try:
        epoch = int(value)
    except ValueError:
        raise InitkitError(
            f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds"
        ) from None
    if epoch < 0 or epoch > 0xFFFFFFFF:
        raise InitkitError(f"source date epoch {epoch} does not fit newc's 32-bit mtime")
    return epoch


@dataclass(frozen=True)
class WriteReport:
    path: Path
    entries: int
    compression: str
    size: int


def write_initrd(
    image: Image,
    out: str | os.PathLike[str],
    *,
    compression: str | None = None,
    mtime: int | None = None,
    instead: str = "",
    pad_to: int = 1,
) -> WriteReport:
    """Write ``image`` as a newc initrd at ``out``, atomically (temp file + rename).
    ``instead`` is the way around an output that cannot be written, for the message.
    ``pad_to`` N > 1 pads an uncompressed archive with zeros to a multiple of N bytes
    (compressed ones would no longer decompress with their own tools)."""
    out_path = Path(out)
    kind = compression_for(out_path, compression)
    if pad_to > 1 and kind != "none":
        raise ValueError(f"pad_to applies to uncompressed archives, not {kind}")
    epoch = source_date_epoch(mtime)
    with writing(out_path, "write the initrd", instead=instead):
        if os.path.isdir(out_path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(out_path))
    with replacing(out_path, mode=0o644, what="the initrd", instead=instead) as tmp:
        with writing(out_path, "write the initrd", instead=instead):
            fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            count = _write_archive(image, fd, kind, epoch, out_path, instead, pad_to)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    return WriteReport(out_path, count, kind, size)


def _write_archive(image: Image, fd: int, compression: str, epoch: int, out: Path,
                   instead: str, pad_to: int = 1) -> int:
    items = image.items()
    plan = _plan_inodes(items)
    archive = ffi.write_new()
    try:
        ffi.write_set_format_cpio_newc(archive)
        if compression in _PROGRAMS:
            ffi.write_add_filter_program(archive, _PROGRAMS[compression])
        elif compression != "none":
            ffi.get_write_filter_function(compression)(archive)
        if compression == "gzip":
            # libarchive stamps the build time into the gzip header unless told not to.
            ffi.write_set_options(archive, b"gzip:!timestamp")
        elif compression == "zstd":
            # zstd's multi-threaded output does not depend on the number of workers, so
            # using every core keeps builds reproducible across machines.
            ffi.write_set_options(archive, f"zstd:threads={_zstd_workers()}".encode())
        ffi.write_set_bytes_per_block(archive, _CHUNK)
        ffi.write_set_bytes_in_last_block(archive, pad_to)
        ffi.write_open_fd(archive, fd)
        entry = ffi.entry_new()
        try:
            for path, item in items:
                ino, nlink, carries_data = plan[path]
                content = _content_entry(image, item) if carries_data else None
                ffi.entry_clear(entry)
                _fill_header(entry, path, item, ino, nlink, content, epoch)
                ffi.write_header(archive, entry)
                if content is not None:
                    _write_data(archive, content)
        finally:
            ffi.entry_free(entry)
        ffi.write_close(archive)
    except libarchive.ArchiveError as exc:
        ffi.write_fail(archive)
        if exc.errno:  # the OS refused the bytes (a full disk...): say why, and where
            fault = OSError(exc.errno, os.strerror(exc.errno))
            raise write_error(fault, out, "write the initrd", instead=instead) from None
        raise InitkitError(f"writing the initrd failed: {exc.msg}") from None
    finally:
        ffi.write_free(archive)
    return len(items)


def _zstd_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def _plan_inodes(items: list[tuple[str, Entry]]) -> dict[str, tuple[int, int, bool]]:
    """path -> (inode, nlink, carries data). A hardlink group shares the inode of its
    first member in archive order; only its last member carries the data."""
    groups: dict[str, list[str]] = {}
    for path, item in items:
        if item.kind is Kind.FILE:
            groups.setdefault(path, []).append(path)
        elif item.kind is Kind.HARDLINK:
            assert item.target is not None
            groups.setdefault(item.target, []).append(path)
    plan: dict[str, tuple[int, int, bool]] = {}
    order = {path: i for i, (path, _) in enumerate(items)}
    next_ino = 1
    for path, item in items:
        if path in plan:
            continue
        if item.kind in (Kind.FILE, Kind.HARDLINK):
            root = path if item.kind is Kind.FILE else item.target
            assert root is not None
            members = sorted(groups[root], key=order.__getitem__)
            for member in members:
                plan[member] = (next_ino, len(members), member == members[-1])
        else:
            plan[path] = (next_ino, 2 if item.kind is Kind.DIR else 1, False)
        next_ino += 1
    return plan


def _content_entry(image: Image, item: Entry) -> Entry:
    """The FILE entry whose bytes a FILE or HARDLINK record carries."""
    if item.kind is Kind.HARDLINK:
        assert item.target is not None
        found = image.get(item.target)
        assert found is not None and found.kind is Kind.FILE
        return found
    return item


def _fill_header(entry: int, path: str, item: Entry, ino: int, nlink: int,
                 content: Entry | None, epoch: int) -> None:
    ffi.entry_set_pathname_utf8(entry, path.encode())
    ffi.entry_set_mode(entry, _TYPE_BITS[item.kind] | item.mode)
    ffi.entry_set_uid(entry, item.uid)
    ffi.entry_set_gid(entry, item.gid)
    ffi.entry_set_mtime(entry, epoch, 0)
    ffi.entry_set_ino64(entry, ino)
    ffi.entry_set_nlink(entry, nlink)
    ffi.entry_set_dev(entry, 0)
    size = 0
    if item.kind is Kind.SYMLINK:
        assert item.target is not None
        ffi.entry_set_symlink_utf8(entry, item.target.encode())
    elif item.kind in (Kind.CHAR, Kind.BLOCK):
        ffi.entry_set_rdevmajor(entry, item.major)
        ffi.entry_set_rdevminor(entry, item.minor)
    if content is not None:
        try:
            size = content.size()
        except OSError as exc:
            raise InitkitError(f"{content.host}: cannot read: {exc.strerror}") from None
    ffi.entry_set_size(entry, size)


def _write_data(archive: int, item: Entry) -> None:
    if item.data is not None:
        if item.data:
            ffi.write_data(archive, item.data, len(item.data))
        return
    assert item.host is not None
    expected = item.size()
    written = 0
    try:
        with open(item.host, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                ffi.write_data(archive, chunk, len(chunk))
                written += len(chunk)
    except OSError as exc:
        raise InitkitError(f"{item.host}: cannot read: {exc.strerror}") from None
    if written != expected:
        raise InitkitError(f"{item.host} changed size while the initrd was written; build again")
