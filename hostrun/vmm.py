"""Virtual machine monitors: a ``BootConfig`` becomes the argv of one VMM.

Argv construction, no processes (``session.py`` runs what these return); only
``describe()``, for the message about a failed boot, asks the binary its version. Both
VMMs get the guest's serial console on their stdin/stdout (hostrun hands them pipes)
and the store as a vhost-user-fs device with the tag the guest mounts.
"""

from __future__ import annotations

import re
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from guest import contract
from hostrun.placement import clear_of_tables
from initkit import process
from initkit.errors import InitkitError

ACCELS = ("kvm", "tcg")
# The CPU model under TCG. "max" offers RDRAND, so the guest kernel's random pool is
# ready at once (with qemu64 a Python init blocks a second in getrandom() for its hash
# seed), and AVX2, so x86-64-v3 store programs run. ERMS and FSRM are taken away: with
# them the guest kernel and glibc copy and clear memory with `rep movsb`/`rep stosb`,
# which TCG runs a byte per loop iteration; without them they use 8-byte or vector
# loops. Unpacking the initrd, zeroing pages and Python's start-up all gain
# (docs/benchmarks.md).
TCG_CPU = "max,-erms,-fsrm"
# Queue entries per request queue; the seed's value, which every daemon accepts.
QUEUE_SIZE = 512


@dataclass(frozen=True)
class BootConfig:
    """Everything a VMM needs to boot one guest."""

    kernel: Path  # as the VMM takes it (see Vmm.accepts_bzimage)
    initrd: Path
    cmdline: str  # the whole kernel command line
    fs_socket: Path  # the virtiofs daemon's vhost-user socket
    cpus: int = 1
    memory_mib: int = 512
    fs_tag: str = contract.DEFAULT_TAG
    fs_queues: int = 1  # request queues, already limited (see request_queues)
    accel: str = "tcg"  # QEMU only: "kvm" or "tcg"
    # The control channel (hostrun/channel.py): a unix socket the VMM listens on, wired
    # to a virtio-serial port named contract.CHANNEL_PORT; None: no channel.
    channel_socket: Path | None = None


def request_queues(cpus: int, daemon_max: int) -> int:
    """virtiofs request queues: never more than the vCPUs nor what the daemon supports."""
    return max(1, min(cpus, daemon_max))


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_MIB_PER_UNIT = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_memory(text: str) -> int:
    """"512M", "1G", "1GiB" or a plain number of MiB -> MiB (at least 64)."""
    match = _SIZE.match(text)
    if match is None:
        raise InitkitError(
            f"memory size {text!r} is not understood; give a number with an optional "
            "unit, e.g. 512M or 2G"
        )
    mib = int(int(match.group(1)) * _MIB_PER_UNIT[match.group(2).upper()])
    if mib < 64:
        raise InitkitError(f"memory size {text!r} is below 64 MiB, too small to boot; "
                           "give at least 64M")
    return mib


class Vmm(ABC):
    """One VMM: its binary, what it needs from the host, and its argv."""

    name: ClassVar[str]
    default_binary: ClassVar[str]
    # What the guest serves the control channel on (the initkit.channel value): a
    # virtio-serial port's name, or a console device (contract.is_console_channel).
    channel_device: ClassVar[str] = contract.CHANNEL_PORT

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or self.default_binary

    def find_binary(self) -> str:
        """The VMM's absolute path; InitkitError naming the package if it is missing."""
        found = shutil.which(self.binary)
        if found is None:
            raise InitkitError(f"{self.name}: {self.binary!r} not found on PATH; "
                               f"{self.install_hint()}")
        return found

    @abstractmethod
    def install_hint(self) -> str: ...

    def describe(self) -> str:
        """The VMM and its version, for messages about a failed boot (asks the binary;
        only failures pay for it)."""
        try:
            proc = process.run([self.binary, "--version"], timeout=10, check=False)
        except InitkitError:
            return self.binary
        first = proc.stdout.decode(errors="replace").strip().splitlines()
        return f"{self.binary} ({first[0]})" if first else self.binary

    @abstractmethod
    def accepts_bzimage(self) -> bool:
        """True if --kernel may be a bzImage; else it needs the vmlinux ELF (PVH entry)."""

    @abstractmethod
    def cmdline_defaults(self, accel: str) -> list[str]:
        """Kernel command-line words this VMM's machine needs (console, reboot...)."""

    @abstractmethod
    def argv(self, config: BootConfig) -> list[str]:
        """The complete command line that boots ``config``."""

    def initrd_for(self, initrd: Path, directory: Path) -> Path:
        """The file to give this VMM for ``initrd``: itself, or a copy made in
        ``directory`` (hostrun's private dir) that this VMM's layout needs."""
        return initrd


class CloudHypervisor(Vmm):
    """cloud-hypervisor, run as the seed's runVM runs it (KVM or MSHV only)."""

    name = "cloud-hypervisor"
    default_binary = "cloud-hypervisor"
    # Its virtio-console has one console port, no names: the guest's /dev/hvc0.
    channel_device = contract.CHANNEL_CONSOLE
    # bzImage direct boot came back in v39; older ones take only the PVH vmlinux.
    BZIMAGE_SINCE = (39, 0)

    def __init__(self, binary: str | None = None, version: tuple[int, int] | None = None) -> None:
        super().__init__(binary)
        self.version = version

    def install_hint(self) -> str:
        return "install cloud-hypervisor or use --vmm qemu"

    def accepts_bzimage(self) -> bool:
        return self.version is not None and self.version >= self.BZIMAGE_SINCE

    def cmdline_defaults(self, accel: str) -> list[str]:
        # No panic=-1 here: cloud-hypervisor reboots the guest on a reset, which would
        # run the action again; hostrun stops the VM when it sees the panic instead.
        return ["console=ttyS0"]

    def argv(self, config: BootConfig) -> list[str]:
        return [
            self.binary,
            "--cpus", f"boot={config.cpus}",
            "--memory", f"mergeable=on,shared=on,size={config.memory_mib}M",
            # The control channel rides the virtio-console device when asked for.
            "--console", (f"socket={config.channel_socket}" if config.channel_socket
                          else "off"),
            "--serial", "tty",
            "--kernel", str(config.kernel),
            "--initramfs", str(config.initrd),
            "--cmdline", config.cmdline,
            "--fs", f"tag={config.fs_tag},socket={config.fs_socket},"
                    f"num_queues={config.fs_queues},queue_size={QUEUE_SIZE}",
        ]


def parse_cloud_hypervisor_version(text: str) -> tuple[int, int] | None:
    """"cloud-hypervisor v39.0.0" (the --version output) -> (39, 0)."""
    match = re.search(r"v?(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


class Qemu(Vmm):
    """QEMU's microvm machine: PVH boot of the vmlinux, virtio-mmio, serial console."""

    name = "qemu"
    default_binary = "qemu-system-x86_64"

    def __init__(self, binary: str | None = None, tsc_khz: int | None = None) -> None:
        super().__init__(binary)
        # The host's TSC rate, which a TCG guest's TSC runs at; see cmdline_defaults.
        self.tsc_khz = tsc_khz

    def install_hint(self) -> str:
        return "install QEMU (Debian: apt-get install qemu-system-x86)"

    def accepts_bzimage(self) -> bool:
        # microvm boots a bzImage only through its firmware; PVH is direct and faster.
        return False

    def cmdline_defaults(self, accel: str) -> list[str]:
        words = [
            "console=ttyS0",
            # A panic reboots at once, and -no-reboot turns that into QEMU's exit.
            "panic=-1",
            # microvm has no PCI bus; probing it only prints an error.
            "pci=off",
            # The crypto self-tests take a third of a second under TCG; a test VM
            # gains nothing from them.
            "cryptomgr.notests",
        ]
        if accel == "tcg" and self.tsc_khz:
            # Under TCG the kernel's PIT calibration of the TSC fails now and then and
            # microvm has no HPET or PM timer to fall back on: the boot hangs for ever
            # in delay calibration. Telling it the rate skips the calibration.
            words.append(f"tsc_early_khz={self.tsc_khz}")
        return words

    def initrd_for(self, initrd: Path, directory: Path) -> Path:
        # microvm's ACPI tables share the last page of RAM with the initrd's end.
        return clear_of_tables(initrd, directory)

    def argv(self, config: BootConfig) -> list[str]:
        if config.accel not in ACCELS:
            raise ValueError(f"accel must be one of {ACCELS}, not {config.accel!r}")
        mem = f"{config.memory_mib}M"
        # Under KVM the default model: "host" aborts on some nested hosts.
        cpu = ["-cpu", TCG_CPU] if config.accel == "tcg" else []
        return [
            self.binary,
            # pic=off: QEMU 10's TCG now and then delivers an interrupt through the
            # legacy PIC before the guest kernel has programmed it, as vector 0: a
            # "divide error" in start_kernel, a boot dead in its first half second
            # (half the boots on a loaded machine). Without the PIC, ISA interrupts go
            # through the IOAPIC, masked until the kernel sets it up (docs/hostrun.md).
            "-M", f"microvm,accel={config.accel},memory-backend=mem,pic=off",
            *cpu,
            "-m", mem,
            "-smp", str(config.cpus),
            # vhost-user needs guest memory the daemon can map: a shared memfd.
            "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
            "-global", "virtio-mmio.force-legacy=false",
            "-chardev", f"socket,id=fs0,path={config.fs_socket}",
            "-device", f"vhost-user-fs-device,chardev=fs0,tag={config.fs_tag},"
                       f"num-request-queues={config.fs_queues},queue-size={QUEUE_SIZE}",
            "-kernel", str(config.kernel),
            "-initrd", str(config.initrd),
            "-append", config.cmdline,
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            # The serial console on QEMU's own stdin/stdout; signal=off leaves ^C to hostrun.
            "-chardev", "stdio,id=con,signal=off",
            "-serial", "chardev:con",
            *self._channel(config),
        ]

    @staticmethod
    def _channel(config: BootConfig) -> list[str]:
        """The control channel: a virtio-serial port on virtio-mmio whose other end is a
        socket QEMU listens on (wait=off: the guest boots whether or not hostrun has
        connected yet; what hostrun sends waits in the socket until the port opens)."""
        if config.channel_socket is None:
            return []
        return [
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=ctl,path={config.channel_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=ctl,name={contract.CHANNEL_PORT}",
        ]
