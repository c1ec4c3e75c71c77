"""Child processes that never outlive hostrun, and how to stop them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hostrun.storeview.mounts import ViewMounts

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
                view: ViewMounts | None = None) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when hostrun dies (even by SIGKILL), and,
    with ``readonly``, a private mount namespace where that directory is read-only.

    With ``view`` the child makes that store view in a private mount namespace
    (hostrun/storeview/mounts.py); if it cannot, it writes why on its stderr and never
    execs (Popen raises SubprocessError), since a view half made would show the guest
    the wrong store."""
    libc = _load_libc()
    parent = os.getpid()
    ro = os.fsencode(readonly) if readonly is not None else None
    if view is not None:  # in the parent: the child must not import
        from hostrun.storeview.mounts import make_view_in_new_namespace

    def setup() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # hostrun died before prctl took effect
            os._exit(1)
        if ro is not None and not _readonly_bind(libc, ro):
            err = ctypes.get_errno()
            os.write(2, b"hostrun: warning: could not make " + ro + b" read-only: "
                     + os.strerror(err).encode() + b"\n")
        if view is not None and (failure := make_view_in_new_namespace(libc, view)):
            os.write(2, b"hostrun: " + failure + b"\n")
            # Raised, not _exit: Popen then fails in the parent at once (SubprocessError).
            raise OSError(failure.decode(errors="replace"))

    return setup


def _readonly_bind(libc: ctypes.CDLL, path: bytes) -> bool:
    if libc.unshare(_CLONE_NEWNS) != 0:
        return False
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False
    if libc.mount(path, path, None, _MS_BIND | _MS_REC, None) != 0:
        return False
    return int(libc.mount(None, path, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None)) == 0


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
