"""A binary cache's NAR file as a stream of NAR bytes, whatever its compression.

xz and bzip2 through the standard library's incremental decompressors, zstd through
libarchive (already a dependency; Python 3.11 has no zstd), none as is. Every reader
hands out at most what was asked, so memory stays bounded by the chunk size.
"""

from __future__ import annotations

import bz2
import lzma
from collections.abc import Iterator
from typing import BinaryIO

from initkit.errors import InitkitError

READ_SIZE = 1 << 16


class CorruptStream(InitkitError):
    """The compressed data does not decompress."""


class DecompressingReader:
    """``read(n)`` over the decompressed bytes of ``compression`` data in ``raw``."""

    def __init__(self, raw: BinaryIO, compression: str, what: str) -> None:
        self.what = what
        self.compression = compression
        self._buffer = bytearray()  # grows in place; only a partial block is kept over
        self._blocks = self._decompressed(raw)

    def read(self, size: int, /) -> bytes:
        while len(self._buffer) < size:
            block = next(self._blocks, None)
            if block is None:
                break
            self._buffer += block
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _decompressed(self, raw: BinaryIO) -> Iterator[bytes]:
        try:
            if self.compression == "none":
                yield from iter(lambda: raw.read(READ_SIZE), b"")
            elif self.compression in ("xz", "bzip2"):
                yield from self._standard(raw)
            elif self.compression == "zstd":
                yield from self._libarchive(raw)
            else:
                raise InitkitError(f"{self.what}: unknown compression {self.compression!r}")
        except (lzma.LZMAError, OSError, EOFError) as exc:
            raise CorruptStream(f"{self.what}: corrupt {self.compression} data ({exc}); "
                                "refused") from None

    def _standard(self, raw: BinaryIO) -> Iterator[bytes]:
        def fresh() -> lzma.LZMADecompressor | bz2.BZ2Decompressor:
            if self.compression == "xz":
                return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            return bz2.BZ2Decompressor()

        decompressor = fresh()
        pending = b""
        while True:
            if decompressor.eof:  # concatenated streams are one stream (xz -T, pbzip2)
                pending = decompressor.unused_data + pending
                if not pending and not (pending := raw.read(READ_SIZE)):
                    return
                decompressor = fresh()
            if decompressor.needs_input:
                if not pending:
                    pending = raw.read(READ_SIZE)
                    if not pending:
                        raise EOFError("the compressed data ends early")
                data, pending = pending, b""
            else:
                data = b""
            # max_length bounds each output block, however well the data compresses.
            out = decompressor.decompress(data, max_length=READ_SIZE)
            if out:
                yield out

    def _libarchive(self, raw: BinaryIO) -> Iterator[bytes]:
        # Imported here, not at the top: binding libarchive costs ~90 ms, which every
        # --closure run would pay, and only zstd needs it.
        import libarchive

        try:
            with libarchive.stream_reader(raw, format_name="raw",
                                          filter_name=self.compression,
                                          block_size=READ_SIZE) as archive:
                for entry in archive:
                    yield from entry.get_blocks(READ_SIZE)
        except libarchive.ArchiveError as exc:
            raise OSError(str(exc)) from None  # reported as corrupt data by the caller
