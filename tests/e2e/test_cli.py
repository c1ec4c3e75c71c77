"""The `hostrun` command end to end: exit codes, messages, and nothing left behind."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hostrun.exitcodes import ExitCode

if TYPE_CHECKING:
    from conftest import CliRun, StartCli, Store  # tests/e2e/conftest.py

pytestmark = pytest.mark.e2e


def test_exec_prints_exactly_the_program_output(hostrun_cli: StartCli, store: Store) -> None:
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "60",
                              "--exec", store.hello, "exit", "3")
    assert run.finish() == 3, run.stderr
    assert run.stdout == b"Hello, world!\n"
    assert run.stderr == b""
    run.assert_nothing_left()


def test_seed_environment_variables(hostrun_cli: StartCli, store: Store,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """CH_CMDLINE picks the action as in the seed; CH_NUM_CPUS / CH_MEM_SIZE size the VM."""
    monkeypatch.setenv("CH_CMDLINE", "tvix.find")
    monkeypatch.setenv("CH_NUM_CPUS", "2")
    monkeypatch.setenv("CH_MEM_SIZE", "384M")
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "60", "-vv")
    assert run.finish() == 0, run.stderr
    assert store.docs.encode() in run.stdout.splitlines()
    assert b"-smp 2" in run.stderr and b"size=384M" in run.stderr
    run.assert_nothing_left()


def test_missing_kernel(hostrun_cli: StartCli, store: Store) -> None:
    run: CliRun = hostrun_cli("--kernel", "/nonexistent/vmlinuz", "--store", str(store.root),
                              "--find", kernel=False)
    assert run.finish() == ExitCode.USER_ERROR
    assert b"--kernel /nonexistent/vmlinuz: no such file" in run.stderr
    run.assert_nothing_left()


def test_missing_store(hostrun_cli: StartCli, tmp_path: Path) -> None:
    run: CliRun = hostrun_cli("--store", str(tmp_path / "nope"), "--find")
    assert run.finish() == ExitCode.USER_ERROR
    assert b"no such directory" in run.stderr
    run.assert_nothing_left()


def test_daemon_that_dies_at_start(hostrun_cli: StartCli, store: Store) -> None:
    run: CliRun = hostrun_cli("--store", str(store.root), "--find", "--daemon",
                              "sh -c 'echo cannot serve {store} >&2; exit 1' {socket}")
    assert run.finish() == ExitCode.DAEMON_FAILED
    assert b"exited with status 1" in run.stderr
    assert f"cannot serve {store.root}".encode() in run.stderr
    run.assert_nothing_left()


def test_daemon_killed_mid_boot(hostrun_cli: StartCli, store: Store) -> None:
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "60", "--run",
                              "sleep 1000")
    daemon = _wait_for_process(run, "virtiofsd")
    # The socket lives in hostrun's private dir under $TMPDIR, which must go at the end.
    private = [p for p in run.tmpdir.iterdir() if p.name.startswith("hostrun-")]
    assert len(private) == 1 and (private[0] / "virtiofs.sock").is_socket()
    assert private[0].stat().st_mode & 0o777 == 0o700
    time.sleep(0.5)  # the kernel is booting: the share is not mounted yet
    os.kill(daemon, signal.SIGKILL)
    started = time.monotonic()
    assert run.finish() == ExitCode.DAEMON_FAILED, run.stderr
    assert time.monotonic() - started < 10
    assert b"was killed by signal 9" in run.stderr
    run.assert_nothing_left()


def test_sigkill_leaves_a_private_dir_that_the_next_hostrun_removes(hostrun_cli: StartCli,
                                                                    store: Store) -> None:
    killed: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "60", "--run",
                                 "sleep 1000")
    qemu = _wait_for_process(killed, "qemu-system")
    daemon = _wait_for_process(killed, "virtiofsd")
    private = [p for p in killed.tmpdir.iterdir() if p.name.startswith("hostrun-")]
    assert len(private) == 1 and (private[0] / "owner").is_file()
    killed.proc.send_signal(signal.SIGKILL)
    assert killed.finish() == -signal.SIGKILL
    deadline = time.monotonic() + 10  # PR_SET_PDEATHSIG: the children die with it
    while any(os.path.exists(f"/proc/{pid}") and not _is_zombie(pid) for pid in (qemu, daemon)) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    # The Rust virtiofsd's sandboxed child dies with its parent in turn, a moment later.
    while killed.processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed.processes() == []
    assert private[0].is_dir() and (private[0] / "virtiofs.sock").is_socket()  # no teardown
    later: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "60",
                                "--exec", store.hello, tmpdir=killed.tmpdir)
    assert later.finish() == 0, later.stderr
    assert not private[0].exists()
    later.assert_nothing_left()  # its own private dir and the killed one's: both gone


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


@pytest.mark.parametrize("path", ["console", "channel"])
def test_guest_that_never_finishes_times_out(hostrun_cli: StartCli, store: Store,
                                            minimal_kernel: Path, minimal_initrd: Path,
                                            path: str) -> None:
    """On the console path (--initrd given) and over the channel (hostrun's own initrd),
    the message names the user's --timeout. On the minimal kernel, which boots in under a
    second here (about 2 s with both cores busy), so that 5 s is long enough for the
    guest to have said something: a silent guest gets another message."""
    started = time.monotonic()
    initrd = ["--initrd", str(minimal_initrd)] if path == "console" else []
    run: CliRun = hostrun_cli("--kernel", str(minimal_kernel), *initrd, "--store",
                              str(store.root), "--timeout", "5", "--run",
                              "echo started; sleep 1000", kernel=False, initrd=False)
    assert run.finish() == ExitCode.TIMEOUT
    assert 5 <= time.monotonic() - started < 23
    assert b"started" in run.stdout
    assert b"did not finish within --timeout 5 s" in run.stderr, run.stderr
    run.assert_nothing_left()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, ExitCode.INTERRUPTED),
                                              (signal.SIGTERM, ExitCode.TERMINATED)])
def test_ctrl_c_and_sigterm(hostrun_cli: StartCli, store: Store, signum: int, code: int) -> None:
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "60", "--run",
                              "sleep 1000")
    _wait_for_process(run, "qemu-system")
    time.sleep(1.0)
    run.proc.send_signal(signum)
    assert run.finish() == code
    assert b"interrupted; stopped the VM" in run.stderr
    run.assert_nothing_left()


def test_kernel_panic_is_no_status(hostrun_cli: StartCli, store: Store) -> None:
    """An init that exits panics the kernel: no status, so never success."""
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "60",
                              "--cmdline", "rdinit=/bin/busybox", "--find")
    assert run.finish() == ExitCode.NO_STATUS, run.stderr
    assert b"kernel panicked: Kernel panic - not syncing: Attempted to kill init" in run.stderr
    run.assert_nothing_left()


def _wait_for_process(run: CliRun, name: str, timeout: float = 30) -> int:
    """The pid of the run's child whose command line contains ``name``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in run.processes():
            pid, command = entry.split(": ", 1)
            if name in command.split(" ", 1)[0]:
                return int(pid)
        if run.proc.poll() is not None:
            break
        time.sleep(0.02)
    run.proc.kill()
    _, err = run.proc.communicate()
    raise AssertionError(f"no {name} process appeared; hostrun said: {err.decode()}")


HALT = bytes([0xFA, 0xF4, 0xEB, 0xFD])  # cli; hlt; jmp back to hlt
TRIPLE_FAULT = bytes([0x0F, 0x0B])  # ud2 with no IDT: a triple fault, QEMU's reset


def silent_pvh_kernel(path: Path, code: bytes = HALT) -> Path:
    """An ELF "kernel" with a PVH entry that runs ``code`` at once: QEMU boots it, and it
    never prints a byte (as a kernel that hangs, or dies, before its console would)."""
    entry, code_offset = 0x100000, 0x1000
    note = struct.pack("<III4sI", 4, 4, 18, b"Xen\0", entry)  # XEN_ELFNOTE_PHYS32_ENTRY
    note_offset = 64 + 2 * 56
    header = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, 2, 62, 1,
                         entry, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, code_offset, entry, entry, len(code), len(code),
                       0x1000)
    pt_note = struct.pack("<IIQQQQQQ", 4, 4, note_offset, 0, 0, len(note), len(note), 4)
    image = (header + load + pt_note + note).ljust(code_offset, b"\0") + code
    path.write_bytes(image)
    return path


def test_a_kernel_that_prints_nothing_is_reported_not_waited_for_silently(
        hostrun_cli: StartCli, store: Store, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = silent_pvh_kernel(tmp_path / "silent.elf")
    initrd = tmp_path / "unused.cpio"
    initrd.write_bytes(b"070701")
    monkeypatch.setenv("HOSTRUN_SILENCE_NOTICE", "1")
    run: CliRun = hostrun_cli("--kernel", str(kernel), "--initrd", str(initrd),
                              "--store", str(store.root), "--timeout", "3", "--exec", "/x",
                              kernel=False, initrd=False)
    started = time.monotonic()
    assert run.finish() == ExitCode.TIMEOUT
    assert time.monotonic() - started < 17  # within --timeout, plus teardown
    err = run.stderr.decode()
    # While it waits: that nothing came, until when, and the command line to try.
    assert "the guest has printed nothing 1 s after qemu started; still waiting until " \
           "--timeout 3 s" in err, err
    assert f"-kernel {kernel}" in err
    # At the end: what that means, the VMM and its version, and what to check.
    assert "the guest printed nothing in --timeout 3 s: the kernel never reached its " \
           "console" in err, err
    assert "QEMU emulator version" in err
    assert err.count("microvm") >= 2
    assert run.stdout == b""
    run.assert_nothing_left()


def test_a_guest_that_dies_before_its_init_is_booted_again_then_reported(
        hostrun_cli: StartCli, store: Store, tmp_path: Path) -> None:
    """Nothing of the user's has run when the guest dies before its init: hostrun boots
    it again (twice), then reports no status, saying so."""
    kernel = silent_pvh_kernel(tmp_path / "fault.elf", TRIPLE_FAULT)
    initrd = tmp_path / "unused.cpio"
    initrd.write_bytes(b"070701")
    run: CliRun = hostrun_cli("-v", "--kernel", str(kernel), "--initrd", str(initrd),
                              "--store", str(store.root), "--timeout", "30", "--exec", "/x",
                              kernel=False, initrd=False)
    assert run.finish() == ExitCode.NO_STATUS
    err = run.stderr.decode()
    assert err.count("booting: ") == 3, err
    assert "died before its init started" in err and "booting it again (2 of 3)" in err
    assert "(3 boots in a row died before the guest's init started)" in err
    run.assert_nothing_left()


def test_help_documents_exit_codes() -> None:
    out = subprocess.run(["hostrun", "--help"], capture_output=True, text=True, check=True)
    for code in ("121", "122", "123", "124", "130"):
        assert code in out.stdout


def test_dev_null_input_is_end_of_file_and_the_console_keeps_its_echo(
        hostrun_cli: StartCli, store: Store) -> None:
    """The guest reads EOF (the ^D hostrun sends, which a terminal does not echo), so
    hostrun need not turn the guest console's echo off (the init skips termios)."""
    run: CliRun = hostrun_cli("--store", str(store.root), "--timeout", "60", "-vv",
                              "--run", "cat; echo end")
    assert run.finish() == 0, run.stderr
    lines = run.stdout.splitlines()  # -vv: the kernel's messages too, and then ours
    assert lines.count(b"end") == 1 and b"^D" not in run.stdout, run.stdout
    assert b"tvix.run=" in run.stderr and b"initkit.noecho" not in run.stderr
    run.assert_nothing_left()


@pytest.mark.parametrize("tail", [4043, 3947])
def test_an_initrd_ending_in_the_acpi_tables_page_still_boots(
        hostrun_cli: StartCli, store: Store, e2e_initrd: Path, tmp_path: Path, tail: int,
) -> None:
    """QEMU puts the initrd's end in the last page of RAM, where microvm's firmware keeps
    the ACPI tables; these two tails broke the XSDT (no virtio-fs: 125) and the MADT (a
    hang) with QEMU 10. hostrun hands QEMU a padded copy, then removes it."""
    initrd = tmp_path / "initrd.cpio"
    data = e2e_initrd.read_bytes()
    initrd.write_bytes(data + bytes((tail - len(data)) % 4096))  # zeros after the archive
    assert initrd.stat().st_size % 4096 == tail
    run: CliRun = hostrun_cli("--initrd", str(initrd), "--store", str(store.root),
                              "--timeout", "60", "--exec", store.hello, initrd=False)
    assert run.finish() == 0, run.stderr
    assert run.stdout == b"Hello, world!\n"
    assert initrd.stat().st_size % 4096 == tail  # the user's file is left as it was
    run.assert_nothing_left()
