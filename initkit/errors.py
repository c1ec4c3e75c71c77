"""The one exception type for errors a user or the machine can cause, its exit codes, and
the way the OS errors of reading an input or writing an output become one line."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

USER_ERROR_EXIT = 2  # a flag, an input or a path of the user's is wrong: they can fix it
ENVIRONMENT_EXIT = 120  # the machine ran short: a full disk, a quota, open files, I/O


class InitkitError(Exception):
    """A mistake in the user's input or environment.

    The message names the input and says what to do; front ends print it on one
    line without a traceback and exit with ``exit_code``. Bugs raise anything else.
    """

    exit_code = USER_ERROR_EXIT


class EnvironmentFault(InitkitError):
    """The machine, not the input, stopped the work (no space left, a disk quota, too
    many open files, an I/O error): the same command works once that is fixed.
    Front ends exit with ENVIRONMENT_EXIT (120)."""

    exit_code = ENVIRONMENT_EXIT


@contextmanager
def reading(path: str | os.PathLike[str], what: str = "") -> Iterator[None]:
    """Turn the OSError of opening or reading an input into an InitkitError that names
    it (``what`` says what the input is: "kernel image", "kernel module", ...)."""
    label = f"{what} {os.fspath(path)}" if what else os.fspath(path)
    try:
        yield
    except FileNotFoundError:
        raise InitkitError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InitkitError(f"{label}: is a directory where a file is expected") from None
    except NotADirectoryError:
        blocker = _first_non_directory(os.path.dirname(os.path.abspath(path))) or "a part"
        if not os.path.isabs(path):  # as the user named it
            blocker = blocker.replace(os.getcwd() + os.sep, "")
        raise InitkitError(f"{label}: {blocker} is not a directory") from None
    except PermissionError:
        raise InitkitError(f"{label}: permission denied") from None
    except OSError as exc:
        raise InitkitError(f"{label}: {exc.strerror or exc}") from None


@contextmanager
def writing(path: str | os.PathLike[str], doing: str, *, instead: str = "",
            inside: bool = False) -> Iterator[None]:
    """Turn the OSError of creating or writing ``path`` into one line: what was being
    done (``doing``, e.g. "write the initrd"), the cause, and the fix; ``instead`` is
    the way around it ("pass another -o", "set $TMPDIR to another directory").
    ``inside``: ``path`` is the directory something new is made in, not the new thing."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, path, doing, instead=instead, inside=inside) from exc


# Resources the machine ran out of: nothing about the path is wrong.
_ENVIRONMENT = {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                errno.EIO}


def write_error(exc: OSError, path: str | os.PathLike[str], doing: str, *,
                instead: str = "", inside: bool = False) -> InitkitError:
    """The InitkitError (EnvironmentFault for a resource the machine ran out of) that
    says why writing ``path`` (or, ``inside``, making something in the directory
    ``path``) failed with ``exc`` and what to do about it."""
    where = os.fspath(path)
    full = os.path.abspath(where)
    cause, fix = _explain(exc, full if inside else os.path.dirname(full))
    if not os.path.isabs(where):  # name the other paths as the user did: relative
        cause = cause.replace(os.getcwd() + os.sep, "")
    fix = f"{fix}, or {instead}" if fix and instead else fix or instead
    message = f"cannot {doing} {where}: {cause}" + (f"; {fix}" if fix else "")
    kind = EnvironmentFault if exc.errno in _ENVIRONMENT else InitkitError
    return kind(message)


@dataclass(frozen=True)
class WriteSite:
    """Where a program initkit runs writes (dpkg-deb, tar, make, strip), to explain its
    failure when the machine, not the input, is why: ``path``, ``doing``, ``instead``
    and ``inside`` as writing() takes them."""

    path: str | os.PathLike[str]
    doing: str
    instead: str = ""
    inside: bool = False

    def fault(self, output: str) -> InitkitError | None:
        """The error for the program that failed with ``output`` (its stderr), if the
        machine ran short: the output names such a fault in the C locale's words (the
        program's own last line often does not: "tar subprocess returned error exit
        status 2"), or the filesystem written to is full or read-only now."""
        code = next((c for c in _TOOL_FAULTS if os.strerror(c) in output), None)
        if code is None:
            code = _filesystem_fault(os.path.abspath(self.path))
        if code is None:
            return None
        return write_error(OSError(code, os.strerror(code)), self.path, self.doing,
                           instead=self.instead, inside=self.inside)


# What a program says when the machine stops it (most specific first: "Too many open
# files in system" holds "Too many open files").
_TOOL_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENFILE, errno.EMFILE,
                errno.EIO)


def _filesystem_fault(path: str) -> int | None:
    """ENOSPC if the filesystem holding ``path`` has no block or no inode left for its
    user, EROFS if it is mounted read-only, else None."""
    current = path
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    try:
        st = os.statvfs(current)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if (st.f_blocks and st.f_bavail == 0) or (st.f_files and st.f_favail == 0):
        return errno.ENOSPC
    return None


def _explain(exc: OSError, parent: str) -> tuple[str, str]:
    """(cause, fix) for the OSError of making something in the directory ``parent``
    (absolute)."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        fs = _filesystem(parent)
        if code == errno.EDQUOT:
            return f"disk quota exceeded on {fs}", "free some of your space there"
        return f"no space left on {fs}", "free some space there"
    if code == errno.EROFS:
        return f"{_filesystem(parent)} is mounted read-only", "write somewhere writable"
    if code in (errno.EACCES, errno.EPERM):
        return (f"permission denied (directory {parent} is not writable for you)",
                "choose a directory you may write, or fix its permissions")
    if code == errno.ENOENT:
        missing = _first_missing(parent)
        if missing is not None:
            return f"directory {missing} does not exist", "create it first"
        return (f"{_filesystem(parent)} takes no new files here",
                "write to a directory on an ordinary filesystem")
    if code == errno.ENOTDIR:
        blocker = _first_non_directory(parent)
        return (f"{blocker or parent} is not a directory",
                "choose a path whose parents are directories")
    if code == errno.EISDIR:
        return "it is a directory", "name a file, not a directory"
    if code == errno.EEXIST:
        return "it exists and is not a directory", "remove it or choose another path"
    if code == errno.ENAMETOOLONG:
        return ("the name is too long (a name part may have 255 bytes, a path 4095)",
                "choose a shorter path")
    if code == errno.ELOOP:
        return "too many levels of symbolic links on the way", "name the real directory"
    if code in (errno.EMFILE, errno.ENFILE):
        which = "this process's limit" if code == errno.EMFILE else "the system's limit"
        return (f"too many open files ({which})",
                "raise the limit (ulimit -n) or close other programs")
    if code == errno.ENOMEM:
        return "out of memory", "free some memory"
    if code == errno.EIO:
        return (f"input/output error on {_filesystem(parent)}",
                "check the disk (dmesg shows why)")
    return exc.strerror or str(exc), ""


def _first_missing(directory: str) -> str | None:
    """The topmost ancestor of ``directory`` (itself included) that does not exist."""
    missing = None
    current = directory
    while not os.path.lexists(current):
        missing = current
        up = os.path.dirname(current)
        if up == current:
            break
        current = up
    return missing


def _first_non_directory(directory: str) -> str | None:
    """The first part of ``directory``, from the root down, that exists but is no directory."""
    parts = directory.split(os.sep)
    for end in range(2, len(parts) + 1):
        prefix = os.sep.join(parts[:end]) or os.sep
        if os.path.lexists(prefix) and not os.path.isdir(prefix):
            return prefix
    return None


def _filesystem(path: str) -> str:
    """'MOUNTPOINT (FSTYPE)' of the filesystem holding ``path``, for messages."""
    current = path
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    real = os.path.realpath(current)
    best, fstype = "/", ""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount = _unescape(fields[1])
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, fstype = mount, fields[2]
    except OSError:
        return real
    return f"{best} ({fstype})" if fstype else best


def _unescape(field: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
    for raw, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(raw, char)
    return field
