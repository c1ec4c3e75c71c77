"""`hostrun --exec/--run` over the control channel: one boot, one command, any bytes.

The argv travels in an exec request instead of on the kernel command line, so spaces,
quotes, newlines, bytes that are not UTF-8 and arguments of any length arrive as given;
the program's stdout goes to hostrun's stdout and its stderr to hostrun's stderr; the
exit code is the program's (docs/hostrun.md, "Sessions").
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from hostrun.action import Action
from hostrun.exitcodes import ExitCode, exit_code_for_host_signal
from hostrun.session import RunSpec

if TYPE_CHECKING:  # loaded with the first boot (hostrun's start stays light)
    from hostrun.api import Machine
    from hostrun.channel import Execution

_READ = 1 << 16


class _Stopped(BaseException):
    """SIGTERM or SIGHUP: unwind so that the Machine tears down."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def argv_of(action: Action) -> list[str]:
    """The argv an --exec or --run action stands for."""
    if action.kind == "exec":
        return list(action.argv)
    if action.kind == "run":
        return ["/bin/sh", "-c", action.command]
    raise ValueError(f"{action.kind} does not run over the channel")


def run_over_channel(spec: RunSpec, action: Action, timeout: float | None) -> int:
    """Boot ``spec``, run ``action`` in it over the channel, power off; the exit code.
    ``timeout`` bounds the whole run, the boot included (124 when it expires)."""
    from hostrun.api import BOOT_TIMEOUT, BootFailed, Machine
    from hostrun.channel import ChannelError

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    started = time.monotonic()
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            machine = Machine.from_spec(spec, timeout=timeout or BOOT_TIMEOUT)
        except BootFailed as exc:  # the daemon or the VMM failed, the guest died...
            sys.stderr.write(f"hostrun: {exc}\n")
            return exc.outcome.code if exc.outcome is not None else ExitCode.NO_STATUS
        except ChannelError as exc:
            sys.stderr.write(f"hostrun: {exc}\n")
            return ExitCode.TIMEOUT if timeout else ExitCode.NO_STATUS
        with machine:
            left = None if timeout is None else max(0.001, timeout - (time.monotonic()
                                                                      - started))
            code = _command(machine, argv_of(action), left, timeout)
        if code is None:  # the channel broke: the session, now ended, knows why
            outcome = machine.outcome
            if outcome is not None and outcome.code in _HOST_FAILURES:
                return outcome.code
            return ExitCode.NO_STATUS
        return code
    except KeyboardInterrupt:
        sys.stderr.write("hostrun: interrupted; stopped the VM\n")
        return ExitCode.INTERRUPTED
    except _Stopped as stopped:
        sys.stderr.write("hostrun: interrupted; stopped the VM\n")
        return exit_code_for_host_signal(stopped.signum)
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)


# Ends of a session that break its channel and that hostrun reports with codes of their
# own, as on the console path: the daemon died (121), the VMM died (122).
_HOST_FAILURES = (ExitCode.DAEMON_FAILED, ExitCode.VMM_FAILED)


def _command(machine: Machine, argv: list[str], timeout: float | None,
             given: float | None) -> int | None:
    """The program's exit code, or None if the channel broke before it ended.
    ``timeout``: what is left of ``given``, the user's --timeout, after the boot."""
    from hostrun.channel import ChannelError

    assert machine.channel is not None
    piped = not os.isatty(0)
    try:
        execution = machine.channel.exec(argv, stream_stdin=piped, timeout=timeout)
        if piped:
            threading.Thread(target=_feed, args=(execution,), daemon=True,
                             name="hostrun-stdin").start()
        for stream, chunk in execution:
            _write(1 if stream == "stdout" else 2, chunk)
        result = execution.wait()
    except ChannelError as exc:
        sys.stderr.write(f"hostrun: {exc}\n")
        return None
    if result.timed_out:
        sys.stderr.write(f"hostrun: the program did not finish within --timeout "
                         f"{given:g} s; killed it and stopped the VM\n")
        return ExitCode.TIMEOUT
    if result.error:
        sys.stderr.write(f"hostrun: {result.error}\n")
    return result.returncode


def _feed(execution: Execution) -> None:
    """hostrun's stdin to the program's, then end of file."""
    with contextlib.suppress(BrokenPipeError, OSError):
        while data := os.read(0, _READ):
            execution.write(data)
        execution.close_stdin()


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    with contextlib.suppress(BrokenPipeError):
        while view:
            view = view[os.write(fd, view):]
