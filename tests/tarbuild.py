"""Raw tar streams for tests, hostile ones included: every field as the test says, with
none of tarfile's own checks. Importable from every test module."""

from __future__ import annotations

import os
import stat
from pathlib import Path

BLOCK = 512


def header(name: bytes, kind: bytes = b"0", *, size: int = 0, mode: int = 0o644,
           link: bytes = b"", major: int = 0, minor: int = 0, prefix: bytes = b"",
           checksum: int | None = None) -> bytes:
    """One ustar header block."""
    def octal(value: int, width: int) -> bytes:
        return f"{value:0{width - 1}o}".encode() + b"\0"

    block = bytearray(BLOCK)
    block[0:len(name[:100])] = name[:100]
    block[100:108] = octal(mode, 8)
    block[108:116] = octal(0, 8)
    block[116:124] = octal(0, 8)
    block[124:136] = octal(size, 12) if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    block[136:148] = octal(0, 12)
    block[148:156] = b" " * 8
    block[156:157] = kind
    block[157:157 + len(link[:100])] = link[:100]
    block[257:265] = b"ustar\x0000"
    block[329:337] = octal(major, 8)
    block[337:345] = octal(minor, 8)
    block[345:345 + len(prefix)] = prefix
    total = sum(block) if checksum is None else checksum
    block[148:156] = f"{total:06o}".encode() + b"\0 "
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes, kind: bytes = b"0", data: bytes = b"", **fields: object) -> bytes:
    return header(name, kind, size=len(data), **fields) + padded(data)  # type: ignore[arg-type]


def pax(records: dict[bytes, bytes], kind: bytes = b"x") -> bytes:
    body = b""
    for key, value in records.items():
        text = b" " + key + b"=" + value + b"\n"
        length = len(text) + 1
        while len(str(length).encode()) + len(text) != length:
            length = len(str(length).encode()) + len(text)
        body += str(length).encode() + text
    return member(b"././@PaxHeader", kind, body)


def end() -> bytes:
    return bytes(2 * BLOCK)


def snapshot(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int, bytes]]:
    """Every path under ``root`` (not below ``skip``) with its type, mode and content
    or link target: equal snapshots mean nothing was written there."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None:
            dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in [*dirnames, *filenames]:
            path = here / name
            if path == skip:
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content = os.fsencode(os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                content = path.read_bytes()
            else:
                content = b""
            found[os.fsdecode(path.relative_to(root))] = (stat.S_IFMT(st.st_mode),
                                                           stat.S_IMODE(st.st_mode), content)
    return found
