"""hostrun.Machine on a real kernel under QEMU TCG: one boot per module for the commands,
one more each for a guest that dies and for the teardown."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hostrun.api import CommandFailed, Machine
from hostrun.channel import ChannelError

if TYPE_CHECKING:
    from conftest import Store  # tests/e2e/conftest.py

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 120.0
SH = b"/bin/sh"
ECHO_ARGS = b'printf "%s\\0" "$@"'  # each argument back, NUL-terminated


def boot(kernel: Path, initrd: Path, store: Store) -> Machine:
    return Machine(store=store.root, kernel=kernel, initrd=initrd, accel="tcg", vmm="qemu",
                   timeout=BOOT_TIMEOUT)


@pytest.fixture(scope="module")
def vm(e2e_kernel: Path, e2e_initrd: Path, store: Store) -> Iterator[Machine]:
    with boot(e2e_kernel, e2e_initrd, store) as machine:
        yield machine


def test_argv_arrives_byte_exact(vm: Machine) -> None:
    args = [b"a b", b'say "hi"', b"it's", b"line\nbreak", b"\xff\xfe not utf-8", b"", b"$HOME"]
    result = vm.run([SH, b"-c", ECHO_ARGS, b"sh", *args])
    assert result.returncode == 0, result
    assert result.stdout == b"".join(arg + b"\0" for arg in args)


def test_stdin_bytes_arrive_exact(vm: Machine) -> None:
    data = bytes(range(256)) * 4
    assert vm.run(["/bin/busybox", "cat"], input=data).stdout == data


def test_stdout_and_stderr_come_back_apart(vm: Machine) -> None:
    result = vm.run("echo to-out; echo to-err >&2; echo more-out")
    assert result.stdout == b"to-out\nmore-out\n"
    assert result.stderr == b"to-err\n"


@pytest.mark.parametrize("code", [0, 1, 3, 125, 255])
def test_exit_codes_come_back(vm: Machine, code: int) -> None:
    assert vm.run(f"exit {code}").returncode == code


def test_a_signal_is_128_plus_n(vm: Machine) -> None:
    assert vm.run("kill -TERM $$").returncode == 128 + 15


def test_store_is_there(vm: Machine, store: Store) -> None:
    result = vm.succeed([store.hello])
    assert result.stdout == b"Hello, world!\n"


def test_succeed_and_fail_raise_with_the_command_and_its_output(vm: Machine) -> None:
    with pytest.raises(CommandFailed) as failed:
        vm.succeed("echo visible; echo oops >&2; exit 4")
    text = str(failed.value)
    assert "exit status 4" in text and "visible" in text and "oops" in text
    assert failed.value.result.returncode == 4
    vm.fail("false")
    with pytest.raises(CommandFailed):
        vm.fail("true")


def test_timeout_kills_the_command_and_the_machine_goes_on(vm: Machine) -> None:
    started = time.monotonic()
    result = vm.run("sleep 100", timeout=1)
    assert result.timed_out
    assert time.monotonic() - started < 20
    assert vm.run(["/bin/busybox", "echo", "after"]).stdout == b"after\n"


def test_background_process_does_not_hold_the_command(vm: Machine) -> None:
    started = time.monotonic()
    result = vm.run("sleep 1000 & echo started")
    assert time.monotonic() - started < 20
    assert result.returncode == 0 and result.stdout == b"started\n"
    assert result.background, result  # reported, and killed: no sleep survives it
    assert b"sleep 1000" not in vm.run("ps").stdout


def test_wait_until_succeeds(vm: Machine) -> None:
    vm.run("rm -f /tmp/ready; (sleep 1; touch /tmp/ready) &", keep_background=True)
    vm.wait_until_succeeds("test -e /tmp/ready", timeout=30)


def test_stream_gives_output_while_it_runs(vm: Machine) -> None:
    chunks = list(vm.stream("echo one; sleep 0.3; echo two >&2"))
    assert ("stdout", b"one\n") in chunks and ("stderr", b"two\n") in chunks


def test_env_and_cwd(vm: Machine) -> None:
    result = vm.run('echo "$GREETING"; pwd', env={"GREETING": "hi there"}, cwd="/tmp")
    assert result.stdout == b"hi there\n/tmp\n"


def test_copy_a_file_in_and_out(vm: Machine, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(300_000))
    vm.copy_in(source, "/tmp/copied.bin")
    assert vm.run("wc -c < /tmp/copied.bin").stdout.strip() == b"300000"
    vm.copy_out("/tmp/copied.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()


def test_copy_a_directory_in_and_out(vm: Machine, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "sub" / "deeper" / "leaf.txt").write_text("leaf\n")
    (tree / "sub" / "link").symlink_to("deeper/leaf.txt")
    vm.copy_in(tree, "/tmp/tree")
    assert vm.run("cat /tmp/tree/sub/link").stdout == b"leaf\n"
    vm.run("echo made-in-guest > /tmp/tree/sub/new.txt")
    vm.copy_out("/tmp/tree", tmp_path / "back", directory=True)
    back = tmp_path / "back"
    assert (back / "top.txt").read_text() == "top\n"
    assert (back / "sub" / "deeper" / "leaf.txt").read_text() == "leaf\n"
    assert os.readlink(back / "sub" / "link") == "deeper/leaf.txt"
    assert (back / "sub" / "new.txt").read_text() == "made-in-guest\n"


def test_four_commands_at_once(vm: Machine) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: vm.run(f"sleep 2; echo {n}"), range(4)))
    assert [r.stdout for r in results] == [f"{n}\n".encode() for n in range(4)]
    assert time.monotonic() - started < 2 * 4  # they overlapped


def test_64_mib_of_stdout_streams_with_bounded_host_buffers(vm: Machine) -> None:
    execution = vm.execute(["/bin/busybox", "head", "-c", str(64 << 20), "/dev/zero"])
    total = 0
    for stream, chunk in execution:
        assert stream == "stdout"
        total += len(chunk)
    assert total == 64 << 20
    assert execution.wait().returncode == 0
    assert vm.channel is not None
    assert execution.high_water <= vm.channel.window  # never more than one window held


def test_minimal_kernel_serves_the_channel(minimal_kernel: Path, minimal_initrd: Path,
                                           store: Store) -> None:
    """virtio_console built in: no module to load, the same port."""
    with boot(minimal_kernel, minimal_initrd, store) as machine:
        assert machine.succeed([store.hello]).stdout == b"Hello, world!\n"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(f"{pid}: {command}")
    return found


def _assert_nothing_left(workdir: Path) -> None:
    deadline = time.monotonic() + 5
    while (left := _processes_mentioning(str(workdir))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left running: {left}"
    assert not workdir.exists(), f"{workdir} was left behind"


def test_close_powers_off_and_leaves_nothing(e2e_kernel: Path, e2e_initrd: Path,
                                             store: Store) -> None:
    machine = boot(e2e_kernel, e2e_initrd, store)
    assert machine.socket is not None
    workdir = machine.socket.parent
    assert _processes_mentioning(str(workdir)), "the VM should be running"
    machine.run("sleep 1000 &", keep_background=True)
    machine.close()
    _assert_nothing_left(workdir)
    with pytest.raises(Exception, match="closed"):
        machine.run("true")


def test_a_guest_that_dies_fails_pending_calls_with_the_console(e2e_kernel: Path,
                                                                e2e_initrd: Path,
                                                                store: Store) -> None:
    with boot(e2e_kernel, e2e_initrd, store) as machine:
        assert machine.socket is not None
        workdir = machine.socket.parent
        pending = machine.execute("sleep 1000")
        machine.execute("echo c > /proc/sysrq-trigger")
        with pytest.raises(ChannelError) as failed:
            pending.wait(timeout=60)
        message = str(failed.value)
        assert "closed the control channel" in message
        assert "panic" in message.lower(), message  # the console's tail says why
        with pytest.raises(ChannelError):
            machine.run("true")
    _assert_nothing_left(workdir)


def test_pytest_fixture_boots_once_per_module(e2e_kernel: Path, e2e_initrd: Path,
                                              store: Store, tmp_path: Path) -> None:
    (tmp_path / "test_foreign.py").write_text(textwrap.dedent(f"""\
        import pytest
        from hostrun import CommandFailed

        pytestmark = pytest.mark.initkit_machine(store={str(store.root)!r},
                                                 initrd={str(e2e_initrd)!r})

        def test_first(initkit_machine):
            initkit_machine.succeed("echo left-by-first > /tmp/mark")

        def test_second_sees_the_same_boot(initkit_machine):
            assert initkit_machine.succeed("cat /tmp/mark").stdout == b"left-by-first\\n"

        def test_failure_shows_the_command(initkit_machine):
            with pytest.raises(CommandFailed, match="exit status 7"):
                initkit_machine.succeed("echo shown; exit 7")
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--initkit-accel", "tcg", "--initkit-vmm", "qemu", "--initkit-kernel",
         str(e2e_kernel), "test_foreign.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=BOOT_TIMEOUT * 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
