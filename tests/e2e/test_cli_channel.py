"""`hostrun --exec/--run` over the control channel (hostrun's default initrd): any bytes,
stdout and stderr apart, the program's exit code, nothing left behind."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

from hostrun.exitcodes import ExitCode

if TYPE_CHECKING:
    from conftest import CliRun, StartCli, Store  # tests/e2e/conftest.py

pytestmark = pytest.mark.e2e


def test_exec_carries_any_bytes_and_keeps_the_streams_apart(hostrun_cli: StartCli,
                                                            store: Store) -> None:
    args = [b"a b", b'say "hi"', b"line\nbreak", b"\xff\xfe", b"x" * 100_000]
    script = b'printf "%s\\0" "$@"; echo to-err >&2; exit 7'
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "120", "--exec",
                              "/bin/sh", "--", "-c", os.fsdecode(script), "sh",
                              *map(os.fsdecode, args), initrd=False)
    assert run.finish() == 7, run.stderr
    assert run.stdout == b"".join(arg + b"\0" for arg in args)
    assert run.stderr == b"to-err\n"
    run.assert_nothing_left()


def test_run_takes_quotes_and_stdin(hostrun_cli: StartCli, store: Store,
                                    tmp_path: os.PathLike[str]) -> None:
    source = os.path.join(tmp_path, "in")
    with open(source, "wb") as f:
        f.write(b"piped\x00bytes\n" * 1000)
    fd = os.open(source, os.O_RDONLY)
    try:
        run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "120", "--run",
                                  'echo "a  b"; cat', initrd=False, stdin=fd)
    finally:
        os.close(fd)
    assert run.finish() == 0, run.stderr
    assert run.stdout == b"a  b\n" + b"piped\x00bytes\n" * 1000
    run.assert_nothing_left()


def test_a_program_that_is_missing_is_127(hostrun_cli: StartCli, store: Store) -> None:
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "120", "--exec",
                              "/nix/store/nothing-here/bin/x", initrd=False)
    assert run.finish() == 127
    assert b"/nix/store/nothing-here/bin/x" in run.stderr
    run.assert_nothing_left()


def test_sigterm_tears_the_session_down(hostrun_cli: StartCli, store: Store) -> None:
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "120", "--run",
                              "echo up; sleep 1000", initrd=False)
    assert run.proc.stdout is not None
    assert run.proc.stdout.readline() == b"up\n"  # the command runs in the session
    time.sleep(0.5)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == ExitCode.TERMINATED, run.stderr
    assert b"interrupted; stopped the VM" in run.stderr
    run.assert_nothing_left()


def test_seed_cmdline_keeps_the_console_path(hostrun_cli: StartCli, store: Store,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CH_CMDLINE", f"tvix.exec={store.hello}")
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "120", initrd=False)
    assert run.finish() == 0, run.stderr
    assert run.stdout == b"Hello, world!\n"
    run.assert_nothing_left()


def test_a_guest_that_panics_mid_command_is_123_with_the_reason(hostrun_cli: StartCli,
                                                                store: Store) -> None:
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "120", "--run",
                              # the pause lets "going" reach the host before the panic
                              "echo going; sleep 2; echo c > /proc/sysrq-trigger; sleep 100",
                              initrd=False)
    assert run.finish() == ExitCode.NO_STATUS, run.stderr
    assert run.stdout == b"going\n"
    assert b"closed the control channel" in run.stderr
    assert b"panic" in run.stderr.lower(), run.stderr
    run.assert_nothing_left()


def test_a_daemon_that_dies_at_start_is_121_as_on_the_console_path(hostrun_cli: StartCli,
                                                                    store: Store) -> None:
    run: CliRun = hostrun_cli("--store", str(store.root), "--run", "true", "--daemon",
                              "sh -c 'echo cannot serve {store} >&2; exit 1' {socket}",
                              initrd=False)
    assert run.finish() == ExitCode.DAEMON_FAILED, run.stderr
    assert f"cannot serve {store.root}".encode() in run.stderr
    run.assert_nothing_left()


@pytest.mark.parametrize(("victim", "code"), [("virtiofsd", ExitCode.DAEMON_FAILED),
                                              ("qemu-system", ExitCode.VMM_FAILED)])
def test_a_daemon_or_vmm_killed_mid_command_keeps_its_code(hostrun_cli: StartCli,
                                                           store: Store, victim: str,
                                                           code: int) -> None:
    """The soak found these 123 ("the guest closed the control channel"): the channel
    breaks, but the session knows why, and the code is the console path's."""
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "120", "--run",
                              "echo up; sleep 1000", initrd=False)
    assert run.proc.stdout is not None
    assert run.proc.stdout.readline() == b"up\n"
    pids = [line.split(":", 1)[0] for line in run.processes()
            if os.path.basename(line.split(":", 1)[1].split()[0]).startswith(victim)]
    assert pids, run.processes()
    os.kill(int(pids[0]), signal.SIGKILL)
    assert run.finish() == code, run.stderr
    run.assert_nothing_left()
