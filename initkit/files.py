"""Atomic writes, scratch directories beside their target, and the identity of a file.

Every file initkit puts in place (an output, a cache entry, a note) is written to a
temporary file beside the target and renamed over it: a reader sees the old file or the
whole new one, never half, and on any failure the temporary file is removed. Nothing is
fsynced: a cache entry or a note lost in a power cut is made again, and no site has
needed more.

A temporary name carries its entry's name and its writer (pid and start time, see
owner.py) and a number unique in that process, so any number of threads and processes
may write one entry at once (the last rename wins, with the same bytes for a cache
entry), and what a writer killed by SIGKILL left is removed by the next writer of the
same entry once that writer is shown to be gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from initkit.errors import InitkitError, writing
from initkit.owner import Owner

log = logging.getLogger("initkit.files")

# The way around a $TMPDIR that cannot be written, for messages.
TMPDIR_ELSEWHERE = "set $TMPDIR to another directory"

_SUFFIX = ".tmp"
_NAME_MAX = 255
_serial = itertools.count()  # next() on a count is atomic: unique across threads


def identity(path: str | os.PathLike[str]) -> str:
    """What a cache key takes for a file instead of its bytes, as make does: its path,
    size, mtime (ns), inode and device. Raises OSError if it cannot be stat'ed."""
    st = os.stat(path)
    return f"{os.fspath(path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"


def identity_or_missing(path: str | os.PathLike[str]) -> str:
    """identity(), or a marker saying ``path`` is missing (a key input may be absent)."""
    try:
        return identity(path)
    except OSError:
        return f"{os.fspath(path)}:missing"


def temp_path(target: Path) -> Path:
    """A new temporary name beside ``target``, recognisable as one of its temp files."""
    return target.with_name(f"{_prefix(target.name)}{Owner.current()}-{next(_serial)}{_SUFFIX}")


@contextmanager
def replacing(target: str | os.PathLike[str], *, mode: int | None = None, what: str = "",
              instead: str = "") -> Iterator[Path]:
    """Yield the path of a new, empty temporary file beside ``target``; when the block
    ends without an exception, rename it over ``target`` (after ``mode`` is set, if
    given; otherwise it has the umask's mode, as open() would give it), else remove it.
    The OSErrors of making and renaming it become one line naming ``target`` (``what``
    it is, and ``instead``, the way around a fault: see errors.writing); OSErrors inside
    the block are the caller's to explain."""
    target = Path(target)
    doing = f"write {what}" if what else "write"
    with writing(target, doing, instead=instead):
        reap_abandoned(target)
        tmp = temp_path(target)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
    try:
        yield tmp
        with writing(target, doing, instead=instead):
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomically(target: str | os.PathLike[str], data: bytes | str, *,
                     mode: int | None = None, what: str = "", instead: str = "") -> None:
    """Put ``data`` at ``target`` whole or not at all (see replacing())."""
    payload = data.encode() if isinstance(data, str) else data
    with replacing(target, mode=mode, what=what, instead=instead) as tmp, \
            writing(target, f"write {what}" if what else "write", instead=instead), \
            open(tmp, "wb") as fh:
        fh.write(payload)


def remember(note: str | os.PathLike[str], text: str) -> bool:
    """Write a note that only saves work next time (a probe's answer, a lookup's result):
    a failure is no error, the next run decides again. True if it was written."""
    try:
        write_atomically(note, text)
    except InitkitError as exc:
        log.debug("not remembered: %s", exc)
        return False
    return True


@contextmanager
def scratch_beside(target: str | os.PathLike[str], *, what: str = "",
                   instead: str = "") -> Iterator[Path]:
    """A new private (0700) directory beside ``target`` to assemble it in, removed when
    the block ends; the caller renames what it built onto ``target``. Named like a temp
    file of ``target``, so a scratch directory left by a killed process is removed by
    the next one."""
    target = Path(target)
    with writing(target.parent, f"make a temporary directory for {what or target.name} in",
                 instead=instead, inside=True):
        reap_abandoned(target)
        scratch = temp_path(target)
        os.mkdir(scratch, 0o700)
    try:
        yield scratch
    finally:
        remove_tree(scratch)


@contextmanager
def private_scratch(prefix: str) -> Iterator[Path]:
    """A new private (0700) directory in $TMPDIR for the block's work, removed after it
    (tempfile.TemporaryDirectory, with the OSError of making it told as one line)."""
    base = temp_base()
    with writing(base, "make a temporary directory in", instead=TMPDIR_ELSEWHERE,
                 inside=True):
        scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield scratch
    finally:
        remove_tree(scratch)


def temp_base() -> str:
    """Where temporary directories go: tempfile.tempdir if the program set it, else
    $TMPDIR as given, else tempfile's choice (/tmp, /var/tmp, ...).

    tempfile passes over a $TMPDIR it cannot write and quietly takes /tmp; initkit does
    not, because the programs it runs (gcc, dpkg-deb) take $TMPDIR as given: making a
    directory in a bad one fails, with a message naming it."""
    if tempfile.tempdir is not None:
        return tempfile.tempdir
    given = os.environ.get("TMPDIR")
    if given:
        return os.path.abspath(given)
    try:
        return tempfile.gettempdir()
    except FileNotFoundError:  # not one of them takes a file
        raise InitkitError("no usable temporary directory: none of /tmp, /var/tmp, "
                           "/usr/tmp and the working directory takes a new file; set "
                           "$TMPDIR to a directory you may write") from None


def check_temp_base() -> str:
    """temp_base(), shown to take a new file with a byte in it, for the programs initkit
    runs that put their own temporary files there (gcc, dpkg-deb, apt): a $TMPDIR that
    cannot take them is one line naming it before they start, not their own last words
    later."""
    base = temp_base()
    with writing(base, "make a temporary file in", instead=TMPDIR_ELSEWHERE, inside=True):
        fd, name = tempfile.mkstemp(prefix=".initkit-probe-", dir=base)
        try:
            os.write(fd, b"\0")
        finally:
            os.close(fd)
            os.unlink(name)
    return base


def reap_abandoned(target: Path) -> int:
    """Remove the temp files and scratch directories of ``target`` whose writers are
    gone (killed; any other end removes its own); returns how many. Best effort: what
    cannot be removed, or whose writer may be alive, stays."""
    prefix = _prefix(target.name)
    removed = 0
    try:
        names = os.listdir(target.parent)
    except OSError:
        return 0
    for name in names:
        owner = _temp_owner(name, prefix)
        if owner is None or not owner.gone():
            continue
        remove_tree(target.parent / name)
        removed += 1
    return removed


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` (a file or a directory tree) without following symlinks and
    without crossing into another filesystem mounted inside it (that stays, and so do
    the directories above it); read-only directories are made writable first. Best
    effort, like ``shutil.rmtree(ignore_errors=True)``."""
    top = os.fspath(path)
    try:
        st = os.lstat(top)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(top)
        return
    _remove_dir(top, st.st_dev, None)


def _remove_dir(name: str, device: int, dir_fd: int | None) -> None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        with contextlib.suppress(OSError):  # swapped for a non-directory meanwhile
            os.unlink(name, dir_fd=dir_fd)
        return
    try:
        st = os.fstat(fd)
        if st.st_dev != device:
            return  # a mount point: never empty another filesystem
        if st.st_mode & 0o700 != 0o700:
            with contextlib.suppress(OSError):
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
        with os.scandir(fd) as entries:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for child, is_dir in children:
            if is_dir:
                _remove_dir(child, device, fd)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=dir_fd)


def _prefix(name: str) -> str:
    """The start of every temp name of the entry ``name``: ".NAME.", or for a name too
    long to take the suffix, a shortened one made unique by a hash of the whole."""
    prefix = f".{name}."
    if len(os.fsencode(prefix)) + 48 <= _NAME_MAX:
        return prefix
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    short = os.fsencode(name)[:150].decode(errors="ignore")
    return f".{short}~{digest}."


_TEMP = re.compile(r"(\d+-\d+)-\d+" + re.escape(_SUFFIX))
_ANY_TEMP = re.compile(r"\..+\." + _TEMP.pattern)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is that of a temp file or scratch directory of some entry
    (.ENTRY.PID-START-N.tmp): what a writer killed by SIGKILL can leave (bench/soak.py
    counts them)."""
    return _ANY_TEMP.fullmatch(name) is not None


def _temp_owner(name: str, prefix: str) -> Owner | None:
    """The writer of temp file ``name`` if it is one of the entry with ``prefix``."""
    if not name.startswith(prefix):
        return None
    match = _TEMP.fullmatch(name, len(prefix))
    return Owner.parse(match.group(1)) if match else None
