"""Child processes that never outlive hostrun, and how to stop them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_CLONE_NEWNS = 0x00020000
_MS_RDONLY = 0x1
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000

_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # The running program's own symbols include libc's; find_library would run
        # ldconfig -p (a subprocess) on every start.
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def child_setup(readonly: Path | None = None,
                binds: Sequence[tuple[Path, Path]] = ()) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when hostrun dies (even by SIGKILL), and,
    with ``readonly``, a private mount namespace where that directory is read-only.

    ``binds`` (source, mount point) are then bind-mounted read-only in that namespace
    (a store view, hostrun/storeview/view.py): only the child and what it execs see
    them, and they vanish with it. A bind that fails ends the child with status 126
    and a line on its stderr naming the path, since serving the view without it would
    show the guest an empty directory.
    """
    libc = _load_libc()
    parent = os.getpid()
    ro = os.fsencode(readonly) if readonly is not None else None
    pairs = [(os.fsencode(source), os.fsencode(target)) for source, target in binds]

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # hostrun died before prctl took effect
            os._exit(1)
        if ro is None and not pairs:
            return
        if not _private_namespace(libc):  # never mount in hostrun's own namespace
            _fail_or_warn(b"make a private mount namespace", fatal=bool(pairs))
            return
        if ro is not None and not _readonly_bind(libc, ro, ro, recursive=True):
            _fail_or_warn(b"make " + ro + b" read-only", fatal=bool(pairs))
        for source, target in pairs:
            if not _readonly_bind(libc, source, target, recursive=False):
                _fail_or_warn(b"bind " + source + b" on " + target, fatal=True)

    return setup


def _fail_or_warn(what: bytes, *, fatal: bool) -> None:
    err = os.strerror(ctypes.get_errno()).encode()
    if not fatal:
        os.write(2, b"hostrun: warning: could not " + what + b": " + err + b"\n")
        return
    os.write(2, b"hostrun: cannot " + what + b": " + err + b"\n")
    os._exit(126)


def _private_namespace(libc: ctypes.CDLL) -> bool:
    if libc.unshare(_CLONE_NEWNS) != 0:
        return False
    return libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) == 0


def _readonly_bind(libc: ctypes.CDLL, source: bytes, target: bytes, *,
                   recursive: bool) -> bool:
    flags = _MS_BIND | (_MS_REC if recursive else 0)
    if libc.mount(source, target, None, flags, None) != 0:
        return False
    return libc.mount(None, target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None) == 0


def stop_process(proc: subprocess.Popen[bytes], *, grace: float,
                 term: int = signal.SIGTERM) -> None:
    """Stop ``proc`` and its process group (it was started in a session of its own):
    ``term`` first, SIGKILL after ``grace`` seconds; always reaps it."""
    if proc.poll() is None:
        _signal_group(proc.pid, term)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # The group may outlive its leader (a daemon's forked sandbox): kill what is left.
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
