"""The NAR format (Nix ARchive), read as a stream and unpacked under one root.

A NAR is a sequence of strings, each an 8-byte little-endian length, the bytes, and zero
padding to a multiple of 8. After the magic ``nix-archive-1`` comes one node:
``( type regular [executable ""] contents <data> )``, ``( type symlink target <t> )`` or
``( type directory { entry ( name <n> node <node> ) }* )``, entries in strictly increasing
byte order of their names.

The input is untrusted (a binary cache, or whoever wrote it). So: only those three kinds
are created; a name is one path component (no ``/``, NUL, ``.`` or ``..``, not empty) and
every entry is created inside a directory this unpacker made itself, relative to its file
descriptor, with O_EXCL/O_NOFOLLOW, so nothing is written outside the root or through a
symlink; file data is streamed in bounded chunks; strings other than file data have caps;
nesting has a cap. Any violation raises NarError naming the input and the entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from initkit.errors import InitkitError

MAGIC = b"nix-archive-1"
CHUNK = 1 << 20  # file data goes through in pieces of this size
MAX_TOKEN = 64  # the longest keyword ("nix-archive-1", "executable", ...)
MAX_NAME = 255  # NAME_MAX
MAX_TARGET = 4095  # PATH_MAX - 1
MAX_DEPTH = 256


class NarError(InitkitError):
    """A NAR that is malformed or would create something it must not."""


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


@dataclass
class NarStats:
    """What an unpack created."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0


class NarReader:
    """Tokens of a NAR stream, read exactly: nothing is read ahead of what is asked."""

    def __init__(self, stream: Readable, what: str) -> None:
        self.stream = stream
        self.what = what

    def fail(self, message: str) -> NarError:
        return NarError(f"{self.what}: {message}; refused")

    def exact(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) == size:
            return data
        parts = [data]
        got = len(data)
        while got < size:
            more = self.stream.read(size - got)
            if not more:
                raise self.fail("the NAR ends early (truncated or corrupt)")
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def length(self) -> int:
        return int.from_bytes(self.exact(8), "little")

    def padding(self, size: int) -> None:
        pad = -size % 8
        if pad and self.exact(pad) != b"\0" * pad:
            raise self.fail("non-zero padding after a string")

    def string(self, limit: int, field: str) -> bytes:
        size = self.length()
        if size > limit:
            raise self.fail(f"a {field} of {size} bytes (at most {limit} allowed)")
        data = self.exact(size)
        self.padding(size)
        return data

    def expect(self, *tokens: bytes) -> None:
        for token in tokens:
            got = self.string(MAX_TOKEN, "keyword")
            if got != token:
                raise self.fail(f"expected {token.decode()!r}, found {_show(got)}")

    def copy_data(self, fd: int) -> int:
        """Stream one string (file contents) into ``fd``; returns its size."""
        size = left = self.length()
        while left:
            data = self.stream.read(min(left, CHUNK))
            if not data:
                raise self.fail("the NAR ends inside a file's contents")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            left -= len(data)
        self.padding(size)
        return size


def unpack_nar(stream: Readable, dest: str | os.PathLike[str], *, what: str) -> NarStats:
    """Unpack the NAR read from ``stream`` to the new path ``dest`` (its parent must exist;
    ``dest`` itself must not). On error, what was created is left for the caller to remove
    (unpack into a temporary directory). ``what`` names the input in errors."""
    reader = NarReader(stream, what)
    reader.expect(MAGIC)
    stats = NarStats()
    parent, name = os.path.split(os.path.abspath(dest))
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _node(reader, parent_fd, name, name, 0, stats)
    finally:
        os.close(parent_fd)
    return stats


def _node(reader: NarReader, dir_fd: int, name: str, where: str, depth: int,
          stats: NarStats) -> None:
    if depth > MAX_DEPTH:
        raise reader.fail(f"{where}: directories nested deeper than {MAX_DEPTH}")
    reader.expect(b"(", b"type")
    kind = reader.string(MAX_TOKEN, "keyword")
    if kind == b"regular":
        _regular(reader, dir_fd, name, stats)
    elif kind == b"symlink":
        reader.expect(b"target")
        target = reader.string(MAX_TARGET, "symlink target")
        if not target or b"\0" in target:
            raise reader.fail(f"{where}: an empty symlink target or one with a NUL byte")
        os.symlink(target, name, dir_fd=dir_fd)
        reader.expect(b")")
        stats.symlinks += 1
    elif kind == b"directory":
        _directory(reader, dir_fd, name, where, depth, stats)
    else:
        raise reader.fail(f"{where}: node type {_show(kind)} (only regular, symlink and "
                          "directory exist in a NAR)")


def _regular(reader: NarReader, dir_fd: int, name: str, stats: NarStats) -> None:
    token = reader.string(MAX_TOKEN, "keyword")
    executable = token == b"executable"
    if executable:
        reader.expect(b"")
        token = reader.string(MAX_TOKEN, "keyword")
    if token != b"contents":
        raise reader.fail(f"expected 'contents', found {_show(token)}")
    mode = 0o555 if executable else 0o444
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        stats.bytes += reader.copy_data(fd)
        os.fchmod(fd, mode)  # after writing: the final mode may not allow it
    finally:
        os.close(fd)
    reader.expect(b")")
    stats.files += 1


def _directory(reader: NarReader, dir_fd: int, name: str, where: str, depth: int,
               stats: NarStats) -> None:
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        previous: bytes | None = None
        while True:
            token = reader.string(MAX_TOKEN, "keyword")
            if token == b")":
                break
            if token != b"entry":
                raise reader.fail(f"{where}: expected 'entry' or ')', found {_show(token)}")
            reader.expect(b"(", b"name")
            raw = reader.string(MAX_NAME, "file name")
            entry = _check_name(reader, raw, where)
            if previous is not None and raw <= previous:
                raise reader.fail(f"{where}/{entry}: entries out of order or repeated")
            previous = raw
            reader.expect(b"node")
            _node(reader, fd, entry, f"{where}/{entry}", depth + 1, stats)
            reader.expect(b")")
        os.fchmod(fd, 0o555)
    finally:
        os.close(fd)
    stats.directories += 1


def _check_name(reader: NarReader, raw: bytes, where: str) -> str:
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw:
        raise reader.fail(f"{where}: an entry named {_show(raw)} (a name must be one path "
                          "component, not '.', '..' or empty)")
    return os.fsdecode(raw)


def _show(data: bytes) -> str:
    return repr(data[:60].decode(errors="replace"))


def make_removable(path: str | os.PathLike[str]) -> None:
    """Give the owner write access to every directory under ``path`` (unpacked ones are
    read-only), so it can be removed."""
    top = os.fspath(path)
    if not os.path.isdir(top) or os.path.islink(top):
        return
    for root, dirs, _files in os.walk(top):
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    os.chmod(top, 0o700)
