"""The reference scanner: which known store paths a path's bytes mention.

This is Nix's own rule for finding references when it registers a build output: a store
path refers to another if the other's 32-character hash part occurs anywhere in its
serialisation (file contents, symlink targets, file names). Used only when neither the
Nix database nor a narinfo knows a path's references. Its limits, which are Nix's too:
it finds a hash only where it is written out plainly (not compressed, not in UTF-16, not
split or computed at run time), and only hashes of candidates it is given (the host
store's entries and the substituters' narinfo files); a coincidental match adds a
reference (over-approximation is safe here: the guest gets one path more).
"""

from __future__ import annotations

import os
import re
from collections.abc import Container, Iterable

from hostrun.storeview.nixbase32 import ALPHABET, HASH_CHARS

READ_SIZE = 1 << 20
# Runs of base-32 characters at least a hash long; every 32-character window of a run is
# a candidate, so a hash glued to other base-32 characters is still found.
_RUN = re.compile(b"[" + ALPHABET.encode() + b"]{%d,}" % HASH_CHARS)


def hashes_in(data: bytes, candidates: Container[bytes], found: set[bytes]) -> None:
    """Add to ``found`` the candidate hash parts that occur in ``data``."""
    for run in _RUN.finditer(data):
        text = run.group()
        for start in range(len(text) - HASH_CHARS + 1):
            window = text[start:start + HASH_CHARS]
            if window in candidates:
                found.add(window)


def scan_file(path: str, candidates: Container[bytes], found: set[bytes]) -> None:
    """Scan one regular file, in chunks overlapping by a hash's length less one."""
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(READ_SIZE):
            data = tail + block
            hashes_in(data, candidates, found)
            tail = data[-(HASH_CHARS - 1):]


def scan_references(path: str | os.PathLike[str],
                    candidates: Container[bytes]) -> set[bytes]:
    """The ``candidates`` (hash parts) that ``path`` (a file, symlink or directory tree,
    links not followed) mentions."""
    found: set[bytes] = set()
    for kind, full, name in _walk(os.fspath(path)):
        hashes_in(os.fsencode(name), candidates, found)
        if kind == "link":
            hashes_in(os.fsencode(os.readlink(full)), candidates, found)
        elif kind == "file":
            scan_file(full, candidates, found)
    return found


def _walk(top: str) -> Iterable[tuple[str, str, str]]:
    """(kind, path, name) of ``top`` and everything under it; kind: file, link, dir."""
    if os.path.islink(top):
        yield "link", top, ""
        return
    if not os.path.isdir(top):
        yield "file", top, ""
        return
    stack = [top]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_symlink():
                    yield "link", entry.path, entry.name
                elif entry.is_dir(follow_symlinks=False):
                    yield "dir", entry.path, entry.name
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    yield "file", entry.path, entry.name
