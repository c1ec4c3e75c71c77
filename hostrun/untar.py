"""Unpack a tar stream that the guest sent, which is not trusted, into a host directory.

Nothing it holds may write outside the target, nor leave there a way out of it, nor
grow the host's memory without bound. So, instead of tarfile, a reader of its own:

- every member's path is walked from the target one directory at a time with
  ``O_NOFOLLOW``, so no write ever goes through a symbolic link, whatever the archive
  or the target held before; files are created under a temporary name and renamed;
- absolute names and ``..`` components are refused, and so are device nodes, fifos
  and every type but directories, regular files, symbolic links and hard links;
- a symbolic link must stay inside: relative, its ``..`` components all leading and
  no more of them than the link has parent directories (each of which is a real
  directory, so the kernel climbs exactly where the text says; a ``..`` in the middle
  could climb out of wherever a link before it leads);
- a hard link may only name a regular file unpacked earlier from the same stream;
- the stream's length, the number of members and each extension header are capped;
- owners are never set, set-id and sticky bits are dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from initkit.errors import InitkitError

BLOCK = 512
MAX_EXTENSION = 1 << 20  # a PAX header or a GNU long name, at most
_COPY = 1 << 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REGULAR = (b"0", b"\0", b"7")
_REFUSED = {b"3": "a character device", b"4": "a block device", b"6": "a fifo"}


class UnsafeArchive(InitkitError):
    """The stream holds something that would reach outside the target, or is not a
    tar stream the host can unpack safely; the message names the member."""


@dataclass
class Unpacked:
    """What an extraction wrote."""

    entries: int = 0
    data_bytes: int = 0
    stream_bytes: int = 0


class _Stream:
    """Exact reads from a read(n) function, counted against a limit."""

    def __init__(self, read: Callable[[int], bytes], limit: int) -> None:
        self._read = read
        self._limit = limit
        self.count = 0

    def reserve(self, size: int, what: str) -> None:
        """Refuse now if ``size`` more bytes would pass the limit."""
        if self.count + size > self._limit:
            raise UnsafeArchive(f"the archive is larger than the limit of {self._limit} "
                                f"bytes (at {what}); raise the limit if this is expected")

    def exactly(self, size: int, what: str) -> bytes:
        self.reserve(size, what)
        parts = []
        left = size
        while left:
            chunk = self._read(min(left, _COPY))
            if not chunk:
                raise UnsafeArchive(f"the archive ends inside {what}")
            parts.append(chunk)
            left -= len(chunk)
        self.count += size
        return b"".join(parts)


@dataclass
class _Member:
    name: bytes
    kind: bytes
    mode: int
    size: int
    mtime: int
    link: bytes


def extract(read: Callable[[int], bytes], target: Path, *, max_bytes: int,
            max_entries: int) -> Unpacked:
    """Unpack the tar stream that ``read(n)`` yields (b"" at its end) into ``target``
    (created if missing), reading up to its end-of-archive blocks. UnsafeArchive for
    anything refused; what was written before stays, inside ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    stream = _Stream(read, max_bytes)
    done = Unpacked()
    root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        writer = _Writer(root)
        while True:
            member = _next_member(stream)
            if member is None:
                break
            done.entries += 1
            if done.entries > max_entries:
                raise UnsafeArchive(f"the archive has more than {max_entries} members; "
                                    "raise the limit if this is expected")
            done.data_bytes += writer.add(member, stream)
        writer.finish()
    except OSError as exc:
        raise InitkitError(f"copying out into {target}: {exc}") from exc
    finally:
        os.close(root)
    done.stream_bytes = stream.count
    return done


# -- reading headers ----------------------------------------------------------------------
def _next_member(stream: _Stream) -> _Member | None:
    """The next member with its extension headers applied; None at the end."""
    overrides: dict[str, bytes] = {}
    while True:
        header = stream.exactly(BLOCK, "a header")
        if header == bytes(BLOCK):
            return None  # end of archive (a second zero block may follow; not needed)
        _check_sum(header)
        kind = header[156:157]
        size = _number(header[124:136], "size")
        if kind in (b"x", b"g", b"L", b"K"):
            if size > MAX_EXTENSION:
                raise UnsafeArchive(f"an extension header of {size} bytes (over "
                                    f"{MAX_EXTENSION})")
            body = stream.exactly(_padded(size), "an extension header")[:size]
            if kind == b"x":
                overrides.update(_pax(body))
            elif kind == b"L":
                overrides["path"] = body.rstrip(b"\0")
            elif kind == b"K":
                overrides["linkpath"] = body.rstrip(b"\0")
            continue  # a global header ("g") changes nothing this reader uses
        name = _string(header[0:100])
        if header[257:262] == b"ustar" and header[345:500].strip(b"\0"):
            name = _string(header[345:500]) + b"/" + name
        member = _Member(
            name=overrides.get("path", name), kind=kind,
            mode=_number(header[100:108], "mode"),
            size=int(overrides["size"]) if "size" in overrides else size,
            mtime=int(float(overrides["mtime"])) if "mtime" in overrides else
            _number(header[136:148], "mtime"),
            link=overrides.get("linkpath", _string(header[157:257])))
        if member.size < 0:
            raise UnsafeArchive(f"member {_show(member.name)} has a negative size")
        return member


def _check_sum(header: bytes) -> None:
    stored = _number(header[148:156], "checksum")
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = unsigned - 2 * sum(b for b in header[:148] + header[156:] if b > 127)
    if stored not in (unsigned, signed):
        raise UnsafeArchive("a header's checksum is wrong: this is not a tar stream, "
                            "or it is damaged")


def _number(field: bytes, what: str) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return -value if field[:1] == b"\xff" else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise UnsafeArchive(f"a header's {what} field {field!r} is not a number") from None


def _string(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _pax(body: bytes) -> dict[str, bytes]:
    """PAX records ``LENGTH key=value\\n``, the few this reader uses."""
    found: dict[str, bytes] = {}
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        try:
            length = int(body[pos:space])
        except ValueError:
            raise UnsafeArchive("a malformed PAX header") from None
        record = body[space + 1:pos + length]
        if space < 0 or length <= 0 or pos + length > len(body) or not record.endswith(b"\n"):
            raise UnsafeArchive("a malformed PAX header")
        key, sep, value = record[:-1].partition(b"=")
        if not sep:
            raise UnsafeArchive("a malformed PAX header")
        if key in (b"path", b"linkpath", b"size", b"mtime"):
            found[key.decode()] = value
        pos += length
    if "size" in found and not found["size"].isdigit():
        raise UnsafeArchive(f"a PAX size {found['size']!r} is not a number")
    if "mtime" in found:
        try:
            float(found["mtime"])
        except ValueError:
            raise UnsafeArchive(f"a PAX mtime {found['mtime']!r} is not a number") from None
    return found


def _components(name: bytes, what: str) -> list[bytes]:
    """A member name as components below the target; refuses what could leave it."""
    if b"\0" in name:
        raise UnsafeArchive(f"{what} {_show(name)} has a NUL byte")
    if name.startswith(b"/"):
        raise UnsafeArchive(f"{what} {_show(name)} is absolute")
    parts = [part for part in name.split(b"/") if part not in (b"", b".")]
    if b".." in parts:
        raise UnsafeArchive(f"{what} {_show(name)} climbs out with '..'")
    return parts


def _check_symlink(parts: list[bytes], link: bytes) -> None:
    name = b"/".join(parts)
    if not link or b"\0" in link:
        raise UnsafeArchive(f"symbolic link {_show(name)} has an empty or NUL target")
    if link.startswith(b"/"):
        raise UnsafeArchive(f"symbolic link {_show(name)} points to {_show(link)}, outside "
                            "the target (absolute)")
    steps = [part for part in link.split(b"/") if part not in (b"", b".")]
    ups = 0
    while ups < len(steps) and steps[ups] == b"..":
        ups += 1
    if ups > len(parts) - 1 or b".." in steps[ups:]:
        raise UnsafeArchive(f"symbolic link {_show(name)} points to {_show(link)}, which "
                            "may lead outside the target")


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


# -- writing ------------------------------------------------------------------------------
class _Writer:
    """Creates members below an open directory, never following a symbolic link."""

    def __init__(self, root: int) -> None:
        self._root = root
        self._files: set[tuple[bytes, ...]] = set()  # regular files written, by path
        self._dirs: dict[tuple[bytes, ...], int] = {}  # directories and their modes
        self._serial = 0

    def add(self, member: _Member, stream: _Stream) -> int:
        parts = _components(member.name, "member")
        what = f"member {_show(member.name)}"
        data = member.size if member.kind in _REGULAR else 0
        stream.reserve(_padded(member.size), what)
        if member.kind in _REFUSED:
            raise UnsafeArchive(f"{what} is {_REFUSED[member.kind]}; only directories, "
                                "files and links are copied out")
        if member.kind not in (*_REGULAR, b"1", b"2", b"5"):
            raise UnsafeArchive(f"{what} has tar type {member.kind!r}, which is not copied "
                                "out")
        if not parts:
            if member.kind != b"5":
                raise UnsafeArchive(f"{what} is the target itself, as a non-directory")
            self._dirs[()] = member.mode & 0o777
            self._skip(stream, member.size, what)
            return 0
        if member.kind == b"2":
            _check_symlink(parts, member.link)
        if member.kind == b"1":
            source = tuple(_components(member.link, "hard link target"))
            if source not in self._files:
                raise UnsafeArchive(f"{what} is a hard link to {_show(member.link)}, which "
                                    "is not a file unpacked before it")
        parent = self._open_parent(parts, what)
        try:
            key = tuple(parts)
            if member.kind == b"5":
                self._make_dir(parent, parts[-1], what)
                self._dirs[key] = member.mode & 0o777
                self._files.discard(key)
                self._skip(stream, member.size, what)
                return 0
            temp = self._temp_name()
            if member.kind in _REGULAR:
                self._write_file(parent, temp, member, stream, what)
            elif member.kind == b"2":
                os.symlink(member.link, temp, dir_fd=parent)
                self._skip(stream, member.size, what)
            else:
                source_parent = self._open_parent(list(source), what)
                try:
                    os.link(source[-1], temp, src_dir_fd=source_parent, dst_dir_fd=parent,
                            follow_symlinks=False)
                finally:
                    os.close(source_parent)
                self._skip(stream, member.size, what)
            self._replace(parent, temp, parts[-1], what)
            if member.kind in _REGULAR or member.kind == b"1":
                self._files.add(key)
            else:
                self._files.discard(key)
            self._dirs.pop(key, None)
        finally:
            os.close(parent)
        return data

    def finish(self) -> None:
        """Give directories their modes, deepest first (they were 0700 while filled)."""
        for parts in sorted(self._dirs, key=len, reverse=True):
            if not parts:
                os.chmod(self._root, self._dirs[parts])
                continue
            parent = self._open_parent(list(parts), "directory")
            try:
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except OSError:
                continue  # replaced by a later member
            finally:
                os.close(parent)
            try:
                os.fchmod(fd, self._dirs[parts])
            finally:
                os.close(fd)

    def _open_parent(self, parts: list[bytes], what: str) -> int:
        fd = os.dup(self._root)
        try:
            for depth, part in enumerate(parts[:-1], 1):
                try:
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:  # a directory the archive implies
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self._dirs.setdefault(tuple(parts[:depth]), 0o755)
                    next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise UnsafeArchive(f"{what}: its path passes through {_show(part)}, "
                                        "which is a symbolic link or not a directory"
                                        ) from exc
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _make_dir(self, parent: int, name: bytes, what: str) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                raise UnsafeArchive(f"{what}: a directory where the target already has a "
                                    "symbolic link or a file") from exc
            os.close(fd)

    def _write_file(self, parent: int, temp: bytes, member: _Member, stream: _Stream,
                    what: str) -> None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            left = member.size
            while left:
                chunk = stream.exactly(min(left, _COPY), what)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                left -= len(chunk)
            stream.exactly(_padded(member.size) - member.size, what)
            os.fchmod(fd, member.mode & 0o777)
            os.utime(fd, (member.mtime, member.mtime))
        except BaseException:
            os.close(fd)
            os.unlink(temp, dir_fd=parent)
            raise
        os.close(fd)

    def _replace(self, parent: int, temp: bytes, name: bytes, what: str) -> None:
        try:
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as exc:
            os.unlink(temp, dir_fd=parent)
            raise UnsafeArchive(f"{what} cannot be put in place (is a directory there?): "
                                f"{exc.strerror}") from exc

    def _skip(self, stream: _Stream, size: int, what: str) -> None:
        left = _padded(size)
        while left:
            left -= len(stream.exactly(min(left, _COPY), what))

    def _temp_name(self) -> bytes:
        self._serial += 1
        return f".initkit-untar-{os.getpid()}-{self._serial}".encode()

