"""The argv of each VMM, checked against the seed's runVM and QEMU's own parser."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from hostrun.action import Action, kernel_cmdline
from hostrun.vmm import (
    BootConfig,
    CloudHypervisor,
    Qemu,
    parse_cloud_hypervisor_version,
    parse_memory,
    request_queues,
)
from initkit.errors import InitkitError


def config(**changes: Any) -> BootConfig:  # Any: each field's own type
    values: dict[str, Any] = {
        "kernel": Path("/k/vmlinux"), "initrd": Path("/k/initrd"),
        "cmdline": "console=ttyS0 tvix.find", "fs_socket": Path("/run/x/virtiofs.sock"),
        "cpus": 2, "memory_mib": 512, "fs_queues": 1,
    }
    values.update(changes)
    return BootConfig(**values)


def option_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == flag]


def test_cloud_hypervisor_argv_matches_the_seed() -> None:
    argv = CloudHypervisor().argv(config())
    # The seed: --cpus boot=N --memory mergeable=on,shared=on,size=M --console off|null
    # --serial tty --kernel K --initramfs I --cmdline "console=ttyS0 ..."
    # --fs tag=tvix,socket=S,num_queues=Q,queue_size=512
    assert argv == [
        "cloud-hypervisor",
        "--cpus", "boot=2",
        "--memory", "mergeable=on,shared=on,size=512M",
        "--console", "off",
        "--serial", "tty",
        "--kernel", "/k/vmlinux",
        "--initramfs", "/k/initrd",
        "--cmdline", "console=ttyS0 tvix.find",
        "--fs", "tag=tvix,socket=/run/x/virtiofs.sock,num_queues=1,queue_size=512",
    ]


def test_cloud_hypervisor_cmdline_is_one_argument() -> None:
    words = CloudHypervisor().cmdline_defaults("kvm")
    line = kernel_cmdline(defaults=words, nonce="0" * 16, verbose=False,
                          action=Action("exec", argv=("/nix/store/x-hello/bin/hello", "a")))
    argv = CloudHypervisor().argv(config(cmdline=line))
    assert option_values(argv, "--cmdline") == [line]
    assert line.startswith("console=ttyS0 ")
    assert 'tvix.exec="/nix/store/x-hello/bin/hello a"' in line
    assert "panic=-1" not in line  # cloud-hypervisor would reboot into the action again


@pytest.mark.parametrize(("cpus", "daemon_max", "queues"),
                         [(1, 1, 1), (4, 1, 1), (4, 2, 2), (2, 8, 2), (0, 1, 1)])
def test_queues_never_above_cpus_or_daemon(cpus: int, daemon_max: int, queues: int) -> None:
    assert request_queues(cpus, daemon_max) == queues


@pytest.mark.parametrize(("version", "bzimage"),
                         [("cloud-hypervisor v39.0.0", True), ("cloud-hypervisor v38.0", False),
                          ("cloud-hypervisor v41.0.0-dirty", True), ("garbage", False)])
def test_cloud_hypervisor_takes_bzimage_from_v39(version: str, bzimage: bool) -> None:
    ch = CloudHypervisor(version=parse_cloud_hypervisor_version(version))
    assert ch.accepts_bzimage() is bzimage


def test_qemu_argv_microvm_vhost_user_fs() -> None:
    argv = Qemu().argv(config(accel="tcg"))
    machine = option_values(argv, "-M")[0]
    assert machine.startswith("microvm,accel=tcg,memory-backend=mem")
    # QEMU 10 hangs with x-option-roms=off; its legacy PIC kills a boot now and then.
    assert "x-option-roms" not in machine and "pic=off" in machine.split(",")
    assert option_values(argv, "-object") == [
        "memory-backend-memfd,id=mem,size=512M,share=on"]
    assert option_values(argv, "-global") == ["virtio-mmio.force-legacy=false"]
    assert option_values(argv, "-chardev")[0] == "socket,id=fs0,path=/run/x/virtiofs.sock"
    device = option_values(argv, "-device")[0]
    assert device.startswith("vhost-user-fs-device,chardev=fs0,tag=tvix,")
    assert "num-request-queues=1" in device
    assert option_values(argv, "-smp") == ["2"]
    assert option_values(argv, "-m") == ["512M"]
    assert option_values(argv, "-kernel") == ["/k/vmlinux"]
    assert option_values(argv, "-append") == ["console=ttyS0 tvix.find"]
    assert "-no-reboot" in argv
    assert option_values(argv, "-serial") == ["chardev:con"]


def test_qemu_cpu_model() -> None:
    argv = Qemu().argv(config(accel="kvm"))
    assert option_values(argv, "-M")[0].startswith("microvm,accel=kvm,")
    assert "host" not in option_values(argv, "-cpu")  # QEMU aborts with it on these hosts
    # TCG: "max" has RDRAND, so the guest's getrandom() does not block at boot; ERMS
    # and FSRM are off, since TCG runs `rep movsb` a byte at a time.
    assert option_values(Qemu().argv(config(accel="tcg")), "-cpu") == ["max,-erms,-fsrm"]


def test_qemu_rejects_unknown_accel() -> None:
    with pytest.raises(ValueError):
        Qemu().argv(config(accel="hvf"))


def test_tsc_rate_only_under_tcg() -> None:
    qemu = Qemu(tsc_khz=2_596_122)
    assert "tsc_early_khz=2596122" in qemu.cmdline_defaults("tcg")
    assert not any(w.startswith("tsc_early_khz") for w in qemu.cmdline_defaults("kvm"))
    assert "panic=-1" in qemu.cmdline_defaults("kvm")


@pytest.mark.parametrize(("text", "mib"), [("512M", 512), ("2G", 2048), ("1GiB", 1024),
                                           ("768", 768), ("65536K", 64), (" 1g ", 1024)])
def test_parse_memory(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "lots", "12X", "1M", "-5G"])
def test_parse_memory_rejects(text: str) -> None:
    with pytest.raises(InitkitError):
        parse_memory(text)


def test_qemu_accepts_the_argv(qemu_binary: str) -> None:
    """QEMU itself parses the machine, memory backend and device options."""
    argv = Qemu(binary=qemu_binary).argv(config(accel="tcg", fs_socket=Path("/nonexistent")))
    # Without a daemon the vhost-user chardev fails to connect: proof that every
    # option before it parsed, and that QEMU reached device creation.
    proc = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert b"/nonexistent" in proc.stderr, proc.stderr


def test_qemu_channel_is_a_named_virtio_serial_port_on_a_listening_socket() -> None:
    from guest import contract

    argv = Qemu(binary="qemu").argv(config(accel="tcg", channel_socket=Path("/run/x/ctl.sock")))
    devices = option_values(argv, "-device")
    assert "virtio-serial-device" in devices
    assert f"virtserialport,chardev=ctl,name={contract.CHANNEL_PORT}" in devices
    assert "socket,id=ctl,path=/run/x/ctl.sock,server=on,wait=off" in option_values(
        argv, "-chardev")
    # The bus comes before the port that sits on it.
    assert devices.index("virtio-serial-device") < devices.index(
        f"virtserialport,chardev=ctl,name={contract.CHANNEL_PORT}")


def test_qemu_without_a_channel_has_no_serial_port() -> None:
    argv = Qemu(binary="qemu").argv(config(accel="tcg"))
    assert not any("virtserial" in word or "virtio-serial" in word for word in argv)


def test_cloud_hypervisor_channel_rides_its_console_socket() -> None:
    argv = CloudHypervisor(binary="ch").argv(config(channel_socket=Path("/run/x/ctl.sock")))
    assert option_values(argv, "--console") == ["socket=/run/x/ctl.sock"]
    assert option_values(CloudHypervisor(binary="ch").argv(config()), "--console") == ["off"]
    from guest import contract

    # Its console has one port and no names: the guest serves its tty, /dev/hvc0.
    assert CloudHypervisor.channel_device == contract.CHANNEL_CONSOLE == "/dev/hvc0"
    assert contract.is_console_channel(CloudHypervisor.channel_device)
    assert Qemu.channel_device == contract.CHANNEL_PORT
    assert not contract.is_console_channel(Qemu.channel_device)

