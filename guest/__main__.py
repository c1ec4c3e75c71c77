"""PID 1 of the VM: boot, run the action, report its status, power off.

It never returns and never lets an exception escape: init exiting panics the kernel.
Whatever fails is printed, reported as status 125, and the machine powers off.
"""

from __future__ import annotations

import posix  # not os: importing it costs every boot (guest/system.py)
import sys
import time

from guest import contract
from guest.boot import Outcome, boot
from guest.system import System

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which is slow at boot
if TYPE_CHECKING:
    from collections.abc import Callable

    from guest.interface import SystemInterface

_GRACE_SECONDS = contract.GRACE_SECONDS


def main(started: float | None = None) -> None:
    """Run as PID 1; refuse anywhere else (it would mount over and power off a host).
    ``started``: when /init began, before importing the guest (seconds since boot)."""
    imported = time.clock_gettime(time.CLOCK_BOOTTIME)
    if posix.getpid() != 1:
        sys.stderr.write("guest: this is a VM's init; it runs only as PID 1 (it mounts "
                         "file systems and powers the machine off)\n")
        raise SystemExit(1)
    system, outcome = run(System, imported if started is None else started, imported)
    finish(system, outcome)
    _hang()


def run(make_system: Callable[[], SystemInterface], started: float,
        imported: float | None = None) -> tuple[SystemInterface | None, Outcome]:
    """Boot and run the action; any exception is printed and becomes status 125."""
    outcome = Outcome()
    system = None
    try:
        system = make_system()
        boot(system, outcome, started, imported)
    except BaseException as exc:  # PID 1 must outlive every error, bugs included
        _report_crash(exc)
        outcome.status = contract.ExitStatus.exited(contract.INIT_FAILED)
    return system, outcome


def _report_crash(exc: BaseException) -> None:
    try:
        sys.stderr.write("initkit: the init failed:\n")
        # The C hook, not the traceback module: the initrd may already be gone (init=).
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
        sys.stderr.flush()
    except BaseException:
        pass  # nothing left to tell it with


def finish(system: SystemInterface | None, outcome: Outcome) -> None:
    """End stray processes, report the status, sync, power off (returns only if refused)."""
    record = contract.record(outcome.nonce, outcome.status)
    if system is not None:
        try:
            system.end_all(_GRACE_SECONDS)
        except BaseException as exc:
            _report_crash(exc)
    try:
        if system is not None:
            system.write_out(record)
        else:
            posix.write(1, record)
    except BaseException as exc:
        _report_crash(exc)
    try:
        if system is not None:
            system.power_off()
    except BaseException as exc:
        _report_crash(exc)


def _hang() -> None:
    """Keep PID 1 alive when reboot(2) was refused: init exiting panics the kernel."""
    while True:
        try:  # noqa: SIM105 - contextlib costs an import at boot
            time.sleep(3600)
        except BaseException:
            pass  # a late signal must not end PID 1


if __name__ == "__main__":
    main()
