"""One ``<hash>.narinfo`` of a binary cache: which store path, where its NAR is, how it is
compressed, its hashes and references. A cache is untrusted: every field that decides a
file name or a check is validated here, before anything is read through it."""

from __future__ import annotations

import posixpath
import urllib.parse
from dataclasses import dataclass

from hostrun.storeview.nixbase32 import STORE_DIR, is_store_name, parse_sha256
from initkit.errors import InitkitError

COMPRESSIONS = ("xz", "zstd", "bzip2", "none")
MAX_NARINFO_BYTES = 1 << 20  # a narinfo is a few hundred bytes; a bigger one is refused


@dataclass(frozen=True)
class NarInfo:
    """What a narinfo file says about one store path."""

    store_name: str  # <hash>-<name>, the base name under /nix/store
    url: str  # the NAR file's path relative to the cache (URL-decoded, checked)
    compression: str  # one of COMPRESSIONS
    file_hash: bytes | None  # SHA-256 of the file at url (None: not given)
    file_size: int | None
    nar_hash: bytes  # SHA-256 of the uncompressed NAR
    nar_size: int
    references: tuple[str, ...]  # base names of the paths it refers to (itself included)
    source: str  # where it was read, for messages

    @property
    def hash_part(self) -> str:
        return self.store_name[:32]


def parse_narinfo(text: str, *, source: str) -> NarInfo:
    """Parse and check a narinfo file's text; ``source`` names it in every error."""
    fields: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise InitkitError(f"{source}:{number}: not a 'Key: value' line: {line[:80]!r}")
        fields[key] = value.strip()

    def need(key: str) -> str:
        if key not in fields:
            raise InitkitError(f"{source}: no {key} field; the binary cache is incomplete "
                               "(write it again with nix copy --to file://DIR)")
        return fields[key]

    store_path = need("StorePath")
    directory, name = posixpath.split(store_path)
    if directory != STORE_DIR or not is_store_name(name):
        raise InitkitError(f"{source}: StorePath {store_path!r} is not a path in {STORE_DIR}")
    url = need("URL")
    path = urllib.parse.unquote(url)  # checked as it will be opened: %2e%2e is ..
    parts = path.split("/")
    if (path.startswith("/") or "\\" in path or "\0" in path
            or any(p in ("", ".", "..") for p in parts)):
        raise InitkitError(f"{source}: URL {url!r} leaves the cache directory; refused")
    compression = fields.get("Compression", "bzip2")  # Nix's default when none is named
    if compression not in COMPRESSIONS:
        raise InitkitError(f"{source}: Compression {compression!r} is not supported; use "
                           f"one of {', '.join(COMPRESSIONS)} (nix copy --to "
                           "'file://DIR?compression=xz')")
    references = tuple(fields.get("References", "").split())
    for ref in references:
        if not is_store_name(ref):
            raise InitkitError(f"{source}: References names {ref!r}, not a store path")
    return NarInfo(
        store_name=name, url=path, compression=compression,
        file_hash=(parse_sha256(fields["FileHash"], what=f"{source}: FileHash")
                   if "FileHash" in fields else None),
        file_size=_size(fields, "FileSize", source) if "FileSize" in fields else None,
        nar_hash=parse_sha256(need("NarHash"), what=f"{source}: NarHash"),
        nar_size=_size(fields, "NarSize", source),
        references=references, source=source,
    )


def _size(fields: dict[str, str], key: str, source: str) -> int:
    value = fields.get(key, "")
    if not value.isdigit():
        raise InitkitError(f"{source}: {key} {value!r} is not a number of bytes")
    return int(value)
