"""guest.contract: the status record and its parser, against real wait statuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from guest.contract import ExitStatus, parse_line, record, valid_nonce

NONCE = "0123456789abcdef"


@pytest.mark.parametrize("code", [0, 1, 2, 125, 126, 127, 128, 255])
def test_real_exit_codes_decode(code: int) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert ExitStatus.from_wait(status) == ExitStatus.exited(code)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_real_signal_deaths_decode(signum: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    proc.send_signal(signum)
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = -signum  # keep Popen from waiting again
    assert ExitStatus.from_wait(status) == ExitStatus.killed(signum)


def test_record_format_and_round_trip() -> None:
    data = record(NONCE, ExitStatus.exited(3))
    assert data == b"\ninitkit-status:0123456789abcdef:exit=3\n"
    line = data.decode().splitlines()[1]
    assert parse_line(line + "\r\n", NONCE) == ExitStatus.exited(3)
    assert parse_line(f"initkit-status:{NONCE}:signal=9", NONCE) == ExitStatus.killed(9)


@pytest.mark.parametrize("line", [
    "initkit-status:ffffffffffffffff:exit=0",  # another run's nonce
    "xinitkit-status:0123456789abcdef:exit=0",  # not at the start of the line
    "initkit-status:0123456789abcdef:exit=",
    "initkit-status:0123456789abcdef:exit=256",
    "initkit-status:0123456789abcdef:exit=-1",
    "initkit-status:0123456789abcdef:exit=\u0662",  # a non-ASCII digit
    "initkit-status:0123456789abcdef:code=1",
    "initkit-status:0123456789abcdef:exit=1 trailing",
])
def test_lookalikes_do_not_parse(line: str) -> None:
    assert parse_line(line, NONCE) is None


def test_nonce_validation() -> None:
    assert valid_nonce(NONCE) and valid_nonce(NONCE.upper())
    for bad in (None, "", "0123", NONCE + "0", "0123456789abcdeg", "0x23456789abcdef"):
        assert not valid_nonce(bad)


@pytest.mark.parametrize(("kind", "number"), [
    ("exit", 256), ("exit", -1), ("signal", 0), ("signal", 128), ("stopped", 1),
])
def test_status_bounds(kind: str, number: int) -> None:
    """What waitpid cannot report is no status: a host reading it gets None."""
    with pytest.raises(ValueError):
        ExitStatus(kind, number)
    assert parse_line(f"initkit-status:{NONCE}:{kind}={number}", NONCE) is None


def test_status_as_a_shell_reports_it() -> None:
    assert ExitStatus.exited(0).success and not ExitStatus.killed(1).success
    exited, killed = ExitStatus.exited(3), ExitStatus.killed(9)
    assert (exited.exit, exited.signal, exited.code) == (3, None, 3)
    assert (killed.exit, killed.signal, killed.code) == (None, 9, 137)
    assert ExitStatus.exited(255).code == 255 and ExitStatus.killed(127).code == 255


def test_not_pid_1_refuses_before_touching_anything() -> None:
    proc = subprocess.run([sys.executable, "-m", "guest"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "only as PID 1" in proc.stderr
