"""The control channel in a real VM, before it is part of the boot: Debian's kernel
under QEMU TCG with a virtio-serial port on a unix socket, a small init that loads
virtio_console and serves the port with guest.port, and hostrun.channel on the host.

The QEMU argv is hostrun's own (hostrun/vmm.py) without the virtiofs device (this
guest needs no store) and with the port added.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from realparts import missing_part

from guest.port import PORT_NAME
from hostrun.channel import Channel, ChannelError
from hostrun.hostcpu import host_tsc_khz
from hostrun.placement import PAGE
from hostrun.vmm import BootConfig, Qemu
from initbuilder.cpio import write_initrd
from initbuilder.image import Image
from initbuilder.kernels.modules import add_modules
from initbuilder.runtime import add_runtime
from initbuilder.sources import add_busybox, add_skeleton

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 120.0
INIT = b"""import posix
from guest import port
from guest.system import System

system = System()
for source, target, kind in (("devtmpfs", "/dev", "devtmpfs"), ("proc", "/proc", "proc"),
                             ("sysfs", "/sys", "sysfs"), ("tmpfs", "/tmp", "tmpfs")):
    system.make_dir(target)
    system.mount(source, target, kind, 0, "")
system.ensure_console("/dev/console")
for module in open("/etc/initkit/modules").read().split():
    system.load_module(module)
found = port.find_port()
print(f"channel-init: serving {found}", flush=True)
system.become_subreaper()
print(f"channel-init: {port.serve_port(posix.open(found, posix.O_RDWR | posix.O_CLOEXEC))}",
      flush=True)
system.power_off()
"""


class Vm:
    """A booted guest: its QEMU, the port's socket and the console so far."""

    def __init__(self, qemu: subprocess.Popen[bytes], sock: Path) -> None:
        self.qemu = qemu
        self.sock = sock
        self.console: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.qemu.stdout is not None
        for line in self.qemu.stdout:
            self.console.append(line.decode(errors="replace").rstrip())

    def tail(self) -> str:
        return "console:\n" + "\n".join(self.console[-20:])

    def connect(self) -> Channel:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            try:
                return Channel.connect(self.sock, timeout=BOOT_TIMEOUT,
                                       describe_failure=self.tail)
            except OSError:
                pass
            except Exception:
                if time.monotonic() > deadline or self.qemu.poll() is not None:
                    raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def vm(debian_kernel: object, debian_vmlinux: Path,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    for tool in ("qemu-system-x86_64", "busybox"):
        if shutil.which(tool) is None:
            missing_part(f"{tool} is not installed")
    work = tmp_path_factory.mktemp("channel-vm")
    image = Image()
    add_skeleton(image)
    add_busybox(image, Path(shutil.which("busybox") or "busybox"))
    add_runtime(image)
    add_modules(image, kernel=debian_kernel.bzimage,  # type: ignore[attr-defined]
                modules_dir=debian_kernel.modules_dir,  # type: ignore[attr-defined]
                names=["virtio_mmio", "virtio_console"])
    image.add_file("channel-init", data=b"#!/usr/lib/initkit/python/bin/python%d.%d -IS\n"
                   % sys.version_info[:2] + INIT, mode=0o755)
    initrd = work / "initrd.cpio"
    write_initrd(image, initrd, compression="none", pad_to=PAGE)  # hostrun/placement.py
    qemu = Qemu(tsc_khz=host_tsc_khz())
    sock = work / "control.sock"
    words = [*qemu.cmdline_defaults("tcg"), "quiet", "rdinit=/channel-init"]
    argv = qemu.argv(BootConfig(kernel=debian_vmlinux, initrd=initrd,
                                cmdline=" ".join(words), fs_socket=work / "unused"))
    argv = [
        *_without_virtiofs(argv), "-device", "virtio-serial-device",
        "-chardev", f"socket,id=control,path={sock},server=on,wait=off",
        "-device", f"virtserialport,chardev=control,name={PORT_NAME}"]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    machine = Vm(process, sock)
    try:
        yield machine
    finally:
        with contextlib.suppress(Exception):
            machine.connect().shutdown(timeout=10)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _without_virtiofs(argv: list[str]) -> list[str]:
    """hostrun's argv minus the virtiofs chardev and device (the words naming fs0)."""
    kept: list[str] = []
    words = iter(argv)
    for word in words:
        value = next(words, "") if word in ("-chardev", "-device") else None
        if value is None:
            kept.append(word)
        elif "fs0" not in value:
            kept += [word, value]
    return kept


@pytest.fixture
def channel(vm: Vm) -> Iterator[Channel]:
    chan = vm.connect()
    try:
        yield chan
    finally:
        chan.close()  # the agent sees the host go and waits for the next one


def test_argv_stdout_and_stderr_exact(channel: Channel) -> None:
    args = [b"a b", b"\"'\n", b"\xff\xfe", b"", b"x" * 100_000]
    result = channel.run(["/bin/busybox", "sh", "-c", 'printf "%s\\0" "$@"; echo oops >&2',
                          "sh", *args], wait_timeout=120)
    assert result.returncode == 0, result
    assert result.stdout == b"".join(arg + b"\0" for arg in args)
    assert result.stderr == b"oops\n"


def test_stdin_and_exit_status(channel: Channel) -> None:
    data = bytes(range(256)) * 4096
    result = channel.run(["/bin/busybox", "sh", "-c", "cat; exit 7"], input=data,
                         wait_timeout=120)
    assert (result.returncode, result.stdout) == (7, data)


def test_64_mib_of_stdout_with_bounded_buffering(channel: Channel) -> None:
    execution = channel.exec(["/bin/busybox", "dd", "if=/dev/zero", "bs=65536", "count=1024"])
    total = sum(len(chunk) for stream, chunk in execution if stream == "stdout")
    assert execution.wait(120).returncode == 0
    assert total == 64 << 20
    assert execution.high_water <= channel.window


def test_four_commands_at_once(channel: Channel) -> None:
    script = ('touch /tmp/at-once-$1; n=0; '
              'while [ "$(ls /tmp | grep -c at-once-)" -lt 4 ]; do '
              'n=$((n+1)); [ $n -gt 3000 ] && exit 9; sleep 0.01; done; echo $1')
    executions = [channel.exec(["/bin/busybox", "sh", "-c", script, "sh", str(n)])
                  for n in range(4)]
    results = [execution.wait(120) for execution in executions]
    assert [(r.returncode, r.stdout) for r in results] == [(0, f"{n}\n".encode())
                                                           for n in range(4)]


def test_background_sleep_returns_at_once_and_is_killed(channel: Channel) -> None:
    result = channel.run(["/bin/busybox", "sh", "-c", "sleep 1000 & echo $!"],
                         wait_timeout=120)
    assert result.background == (int(result.stdout),) and result.background_killed
    left = channel.run(["/bin/busybox", "sh", "-c", "ps -o pid,args | grep 'sleep 1000' "
                        "| grep -v grep || true"], wait_timeout=120)
    assert left.stdout == b""


def test_timeout_then_the_next_command(channel: Channel) -> None:
    late = channel.run(["/bin/busybox", "sleep", "1000"], timeout=1, wait_timeout=120)
    assert late.timed_out and late.returncode == 137
    assert channel.run(["/bin/busybox", "echo", "next"], wait_timeout=120).stdout == b"next\n"


def test_files_and_directories_round_trip(channel: Channel, tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data").write_bytes(os.urandom(300_000))
    (source / "link").symlink_to("sub/data")
    channel.put_dir(source, "/tmp/tree")
    channel.get_dir("/tmp/tree", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "data").read_bytes() == \
        (source / "sub" / "data").read_bytes()
    assert os.readlink(tmp_path / "back" / "link") == "sub/data"
    channel.put_bytes(b"bytes\xff", "/tmp/file", mode=0o600)
    channel.get_file("/tmp/file", tmp_path / "file")
    assert (tmp_path / "file").read_bytes() == b"bytes\xff"


def test_a_new_host_after_the_old_one_left(vm: Vm) -> None:
    first = vm.connect()
    execution = first.exec(["/bin/busybox", "sleep", "1000"])
    first.close()  # the guest ends what it was running for that host
    with pytest.raises(ChannelError):
        execution.wait(5)
    second = vm.connect()
    try:
        left = second.run(["/bin/busybox", "sh", "-c", "ps -o args | grep -c '^sleep 1000'"],
                          wait_timeout=120)
        assert left.stdout == b"0\n"
    finally:
        second.close()
