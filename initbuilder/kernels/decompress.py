"""Recognise and undo the compressions found in kernel images and kernel modules.

gzip, xz, lzma and bzip2 use the standard library. zstd and lz4 (the kernel's legacy lz4
frame) go through libarchive, already a dependency for the cpio writer: it needs no extra
program on PATH and reads both in-process; Python 3.11's standard library has neither.
"""

from __future__ import annotations

import bz2
import lzma
import zlib

import libarchive

from initkit.errors import InitkitError

# Leading bytes of each stream, as the kernel's own decompressors recognise them.
MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lz4", b"\x02\x21\x4c\x18"),  # legacy frame, what `lz4 -l` and the kernel write
    ("lz4", b"\x04\x22\x4d\x18"),  # modern frame
    ("bzip2", b"BZh"),
    ("lzo", b"\x89LZO\x00\r\n\x1a\n"),
    ("lzma", b"\x5d\x00\x00"),  # "alone" format with the usual lc/lp/pb; checked last
)

SUFFIXES = {".gz": "gzip", ".xz": "xz", ".zst": "zstd"}


def detect(data: bytes) -> str | None:
    """The compression whose magic ``data`` starts with, or None."""
    for name, magic in MAGICS:
        if data.startswith(magic):
            return name
    return None


def decompress(data: bytes, kind: str, *, what: str = "data") -> bytes:
    """Decompress one ``kind`` stream; bytes after its end are ignored where the format
    marks its own end (gzip, xz, lzma, bzip2). ``what`` names the input in errors."""
    try:
        if kind == "gzip":
            return zlib.decompressobj(wbits=31).decompress(data)
        if kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
        if kind == "lzma":
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
        if kind == "bzip2":
            return bz2.BZ2Decompressor().decompress(data)
        if kind in ("zstd", "lz4"):
            return _libarchive_raw(data, kind)
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise InitkitError(f"{what}: corrupt {kind} data ({exc})") from None
    except libarchive.ArchiveError as exc:
        raise InitkitError(f"{what}: corrupt {kind} data ({exc})") from None
    if kind == "lzo":
        raise InitkitError(
            f"{what}: lzo compression is not supported; rebuild with another "
            "CONFIG_KERNEL_* compression (gzip, xz, zstd, lz4, lzma, bzip2)"
        )
    raise InitkitError(f"{what}: unknown compression {kind!r}")


def _libarchive_raw(data: bytes, kind: str) -> bytes:
    out = bytearray()
    with libarchive.memory_reader(data, format_name="raw", filter_name=kind) as archive:
        for entry in archive:
            for block in entry.get_blocks():
                out += block
    return bytes(out)
