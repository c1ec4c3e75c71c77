"""A NAR writer for tests: well-formed archives of a tree, and hostile ones built by hand
(names with '..', entries out of order, unknown node types) that no Nix would write."""

from __future__ import annotations

import hashlib
import lzma
import os
from pathlib import Path

from hostrun.storeview import nixbase32


def nar_string(data: bytes) -> bytes:
    return len(data).to_bytes(8, "little") + data + b"\0" * (-len(data) % 8)


def nar_tokens(*tokens: bytes) -> bytes:
    return b"".join(nar_string(t) for t in tokens)


def regular(contents: bytes, executable: bool = False) -> bytes:
    return nar_tokens(b"(", b"type", b"regular", *((b"executable", b"") if executable else ()),
                      b"contents", contents, b")")


def symlink(target: bytes) -> bytes:
    return nar_tokens(b"(", b"type", b"symlink", b"target", target, b")")


def directory(*entries: tuple[bytes, bytes]) -> bytes:
    """``entries`` (name, node) in the order given (sort them for a valid NAR)."""
    body = b"".join(nar_tokens(b"entry", b"(", b"name", name, b"node") + node
                    + nar_tokens(b")") for name, node in entries)
    return nar_tokens(b"(", b"type", b"directory") + body + nar_tokens(b")")


def nar(node: bytes) -> bytes:
    return nar_string(b"nix-archive-1") + node


def nar_of_tree(path: Path) -> bytes:
    """The NAR of ``path`` as Nix serialises it."""
    return nar(_node(path))


def _node(path: Path) -> bytes:
    if path.is_symlink():
        return symlink(os.fsencode(os.readlink(path)))
    if path.is_dir():
        return directory(*((os.fsencode(child.name), _node(child))
                           for child in sorted(path.iterdir(),
                                               key=lambda p: os.fsencode(p.name))))
    return regular(path.read_bytes(), executable=os.access(path, os.X_OK))


def write_cache_entry(cache: Path, store_name: str, nar_bytes: bytes, *,
                      references: tuple[str, ...] = (), compression: str = "xz",
                      nar_hash: bytes | None = None) -> Path:
    """A binary cache entry for ``store_name`` holding ``nar_bytes`` with correct hashes
    (``nar_hash`` overrides NarHash); returns the narinfo's path."""
    (cache / "nar").mkdir(parents=True, exist_ok=True)
    if not (cache / "nix-cache-info").exists():
        (cache / "nix-cache-info").write_text("StoreDir: /nix/store\n")
    data = lzma.compress(nar_bytes) if compression == "xz" else nar_bytes
    file_hash = nixbase32.encode(hashlib.sha256(data).digest())
    suffix = ".xz" if compression == "xz" else ""
    (cache / "nar" / f"{file_hash}.nar{suffix}").write_bytes(data)
    digest = nar_hash if nar_hash is not None else hashlib.sha256(nar_bytes).digest()
    info = cache / f"{store_name[:32]}.narinfo"
    info.write_text(
        f"StorePath: /nix/store/{store_name}\nURL: nar/{file_hash}.nar{suffix}\n"
        f"Compression: {compression}\nFileHash: sha256:{file_hash}\nFileSize: {len(data)}\n"
        f"NarHash: sha256:{nixbase32.encode(digest)}\nNarSize: {len(nar_bytes)}\n"
        f"References: {' '.join(references)}\n")
    return info
