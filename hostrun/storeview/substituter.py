"""A Nix binary cache directory (``file:///DIR``) as a source of store paths.

``<hash>.narinfo`` says where the path's NAR is and what its hashes are. A NAR is taken
into initkit's cache once: its file is hashed and checked against FileHash (and FileSize)
before a byte of it is decompressed, then it is unpacked into a temporary directory while
the NAR bytes are hashed, and only if NarHash and NarSize match is it renamed into place
as ``cache_dir("store", "nar")/<NarHash in base 32>``, content-addressed: two caches (or
two names) with the same contents share one entry. On any failure the temporary directory
is removed, so the cache only ever holds verified, complete entries (one left by a
process killed mid-unpack is removed by the next unpack); two runs unpacking the same NAR
at once each write their own and the first rename wins. The decompressed stream may not
exceed NarSize, so a lying cache cannot fill the disk beyond what it declared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import urllib.parse
from pathlib import Path
from typing import BinaryIO

from hostrun.storeview import nixbase32
from hostrun.storeview.compressed import DecompressingReader
from hostrun.storeview.nar import unpack_nar
from hostrun.storeview.narinfo import MAX_NARINFO_BYTES, NarInfo, parse_narinfo
from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.errors import InitkitError, reading, writing
from initkit.files import scratch_beside

HASH_READ = 1 << 20


class HashingReader:
    """``read(n)`` that also hashes and counts what passes through, and refuses to go
    past ``limit`` bytes (a NAR's NarSize: what the narinfo promised bounds the disk an
    unpack may fill, whatever the compressed data expands to)."""

    def __init__(self, stream: BinaryIO | DecompressingReader, limit: int, what: str) -> None:
        self.stream = stream
        self.limit = limit
        self.what = what
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int, /) -> bytes:
        data = self.stream.read(min(size, self.limit + 1 - self.size))
        self.sha256.update(data)
        self.size += len(data)
        if self.size > self.limit:
            raise InitkitError(f"{self.what}: the NAR is longer than its NarSize "
                               f"({self.limit} bytes); refused")
        return data


class FileBinaryCache:
    """A binary cache directory as ``nix copy --to file:///DIR`` writes it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = parse_file_url(url)
        info = self.root / "nix-cache-info"
        if not self.root.is_dir():
            raise InitkitError(f"--substituter {url}: {self.root} is not a directory")
        if info.is_file():
            with reading(info, "binary cache info"):
                fields = dict(line.partition(": ")[::2] for line in
                              info.read_text(errors="replace").splitlines())
            store_dir = fields.get("StoreDir", nixbase32.STORE_DIR).strip()
            if store_dir != nixbase32.STORE_DIR:
                raise InitkitError(f"--substituter {url}: its StoreDir is {store_dir}, not "
                                   f"{nixbase32.STORE_DIR}; its paths cannot be served there")

    def __str__(self) -> str:
        return self.url

    def narinfo(self, hash_part: str) -> NarInfo | None:
        """The narinfo of the store path with ``hash_part``, or None if the cache has none."""
        path = self.root / f"{hash_part}.narinfo"
        try:
            with open_regular(path, "narinfo") as f:
                data = f.read(MAX_NARINFO_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InitkitError(f"{path}: cannot read it ({exc.strerror})") from None
        if len(data) > MAX_NARINFO_BYTES:
            raise InitkitError(f"{path}: larger than {MAX_NARINFO_BYTES} bytes; refused")
        info = parse_narinfo(data.decode(errors="replace"), source=str(path))
        if info.hash_part != hash_part:
            raise InitkitError(f"{path}: its StorePath is /nix/store/{info.store_name}, "
                               "another path; refused")
        return info

    def nar_path(self, info: NarInfo) -> Path:
        return self.root / info.url

    def fetch(self, info: NarInfo) -> Path:
        """The verified, unpacked contents of ``info``'s NAR (a file, directory or
        symlink in initkit's cache), unpacked now if not there yet."""
        return fetch_nar(self.nar_path(info), info)


def open_regular(path: Path, what: str) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (a FIFO or a device in a cache
    would block or never end); InitkitError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InitkitError(f"{path}: the {what} is not a regular file; refused")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def parse_file_url(url: str) -> Path:
    """The directory of a ``file://`` binary cache URL (query parameters ignored)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise InitkitError(f"--substituter {url}: only file:///DIR binary caches are "
                           "supported (no network at run time); copy one there with nix "
                           "copy --to file:///DIR PATH")
    if not parsed.path.startswith("/"):
        raise InitkitError(f"--substituter {url}: give an absolute path, file:///DIR")
    return Path(urllib.parse.unquote(parsed.path))


def nar_cache() -> Path:
    """Where verified NARs are kept unpacked, one entry per NarHash."""
    return cache_dir("store", "nar")


def cached_entry(info: NarInfo) -> Path:
    return nar_cache() / nixbase32.encode(info.nar_hash)


def fetch_nar(nar_file: Path, info: NarInfo) -> Path:
    """``nar_file`` (compressed as ``info`` says), checked and unpacked into the cache once."""
    entry = cached_entry(info)
    if os.path.lexists(entry):
        return entry
    what = f"NAR {nar_file} (of /nix/store/{info.store_name}, from {info.source})"
    with reading(nar_file, f"NAR of /nix/store/{info.store_name} (from {info.source})"):
        raw = open_regular(nar_file, "NAR")  # closed below; reading() covers the open only
    with raw:
        _check_file_hash(raw, info, what)
        raw.seek(0)
        # Named as entry's temp files: one left by a run killed mid-unpack is removed here.
        with scratch_beside(entry, what=f"the NAR of /nix/store/{info.store_name}",
                            instead=CACHE_ELSEWHERE) as tmp:
            stream = HashingReader(DecompressingReader(raw, info.compression, what),
                                   info.nar_size, what)
            with writing(entry, "unpack a NAR into", instead=CACHE_ELSEWHERE):
                unpack_nar(stream, tmp / "root", what=what)
            if stream.read(1):
                raise InitkitError(f"{what}: data after the end of the NAR; refused")
            if stream.sha256.digest() != info.nar_hash:
                raise InitkitError(
                    f"{what}: NarHash mismatch: the narinfo says sha256:"
                    f"{nixbase32.encode(info.nar_hash)}, the NAR is sha256:"
                    f"{nixbase32.encode(stream.sha256.digest())}; refused")
            if stream.size != info.nar_size:
                raise InitkitError(f"{what}: NarSize mismatch: the narinfo says "
                                   f"{info.nar_size} bytes, the NAR has {stream.size}; refused")
            with contextlib.suppress(FileExistsError, OSError):
                # Another run may have put the same entry there first: same bytes, keep it.
                if not os.path.lexists(entry):
                    os.rename(tmp / "root", entry)
    if not os.path.lexists(entry):
        raise InitkitError(f"{what}: could not be put into the cache at {entry}")
    return entry


def _check_file_hash(raw: BinaryIO, info: NarInfo, what: str) -> None:
    """FileHash and FileSize of the compressed file, before any of it is decompressed."""
    if info.file_hash is None and info.file_size is None:
        return
    digest = hashlib.sha256()
    size = 0
    for block in iter(lambda: raw.read(HASH_READ), b""):
        digest.update(block)
        size += len(block)
    if info.file_size is not None and size != info.file_size:
        raise InitkitError(f"{what}: FileSize mismatch: the narinfo says {info.file_size} "
                           f"bytes, the file has {size}; refused")
    if info.file_hash is not None and digest.digest() != info.file_hash:
        raise InitkitError(f"{what}: FileHash mismatch: the narinfo says sha256:"
                           f"{nixbase32.encode(info.file_hash)}, the file is sha256:"
                           f"{nixbase32.encode(digest.digest())}; refused")
