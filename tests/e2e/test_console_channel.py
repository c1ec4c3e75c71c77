"""The control channel on a console port, as cloud-hypervisor offers it: one virtio-console
port without a name, the guest's /dev/hvc0, a tty. Booted on QEMU with a `virtconsole`
in place of the named `virtserialport`, so that the guest side (raw mode, the ready line)
and the host side (waiting for it before the hello) run for real."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from guest import contract
from hostrun.api import Machine
from hostrun.plan import Request, plan
from hostrun.vmm import BootConfig, CloudHypervisor, Qemu

if TYPE_CHECKING:
    from conftest import Store  # tests/e2e/conftest.py

pytestmark = pytest.mark.e2e


class QemuConsole(Qemu):
    """QEMU whose control channel is a console port with no name (cloud-hypervisor's)."""

    channel_device = CloudHypervisor.channel_device

    @staticmethod
    def _channel(config: BootConfig) -> list[str]:
        if config.channel_socket is None:
            return []
        return ["-device", "virtio-serial-device",
                "-chardev", f"socket,id=ctl,path={config.channel_socket},server=on,wait=off",
                "-device", "virtconsole,chardev=ctl"]


@pytest.fixture(scope="module")
def vm(e2e_kernel: Path, e2e_initrd: Path, store: Store) -> Iterator[Machine]:
    spec = plan(Request(kernel=e2e_kernel, initrd=e2e_initrd, store=store.root,
                        vmm="qemu", accel="tcg"))
    assert isinstance(spec.vmm, Qemu)
    spec = dataclasses.replace(spec, vmm=QemuConsole(spec.vmm.binary, spec.vmm.tsc_khz))
    with Machine.from_spec(spec, timeout=120) as machine:
        yield machine


def test_the_guest_serves_the_console_device(vm: Machine) -> None:
    assert contract.is_console_channel(QemuConsole.channel_device)
    # The agent (the shell's parent) has the tty; the command's own stdin is not it.
    links = vm.succeed("for f in /proc/$PPID/fd/* /proc/self/fd/0; do readlink $f; done"
                       ).stdout.splitlines()
    assert contract.CHANNEL_CONSOLE.encode() in links[:-1], links
    assert links[-1] != contract.CHANNEL_CONSOLE.encode(), links


def test_every_byte_crosses_the_tty_unchanged(vm: Machine) -> None:
    """Raw mode: no echo, no CR/LF mapping, no ^C/^D/^S/^Q/^Z handling, 8 bits."""
    data = bytes(range(256)) * 64 + b"\r\n\x03\x04\x11\x13\x1a\x7f\xff"
    result = vm.run(["/bin/busybox", "cat"], input=data)
    assert result.returncode == 0
    assert result.stdout == data
    assert result.stderr == b""


def test_stdout_and_stderr_apart_and_the_exit_code(vm: Machine) -> None:
    result = vm.run("printf 'out\\r\\n'; printf 'err\\n' >&2; exit 7")
    assert (result.returncode, result.stdout, result.stderr) == (7, b"out\r\n", b"err\n")


def test_a_megabyte_comes_back(vm: Machine) -> None:
    result = vm.run("head -c 1048576 /dev/urandom | tee /tmp/r | md5sum; md5sum < /tmp/r")
    first, second = result.stdout.splitlines()
    assert first == second
    out = vm.run(["/bin/busybox", "cat", "/tmp/r"])
    assert len(out.stdout) == 1 << 20
