"""What the host CPU offers a VMM: a usable /dev/kvm, and the TSC rate TCG guests see."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import mmap
import os
import time
from collections.abc import Callable

log = logging.getLogger("initkit.hostrun")

_KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
_KVM_API_VERSION = 12


def kvm_opens(device: str = "/dev/kvm") -> bool:
    """True if ``device`` opens read-write and speaks the stable KVM API.

    That is all "auto" can check cheaply: it is no proof that KVM guests run (on some
    nested hosts they hang), which is why --accel tcg / HOSTRUN_ACCEL=tcg exist.
    """
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _KVM_GET_API_VERSION) == _KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def hypervisor_device() -> str | None:
    """/dev/kvm or /dev/mshv, whichever opens (what cloud-hypervisor needs), else None."""
    if kvm_opens("/dev/kvm"):
        return "/dev/kvm"
    try:
        os.close(os.open("/dev/mshv", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return None
    return "/dev/mshv"


# rdtsc; shl rdx, 32; or rax, rdx; ret
_RDTSC_CODE = bytes.fromhex("0f31" "48c1e220" "4809d0" "c3")


def _rdtsc_function() -> Callable[[], int] | None:
    """A callable that returns the TSC, from four instructions in an executable page."""
    if os.uname().machine != "x86_64":
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None  # W^X policy (SELinux execmem and the like)
    page.write(_RDTSC_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    func = ctypes.CFUNCTYPE(ctypes.c_uint64)(address)
    func._page = page  # type: ignore[attr-defined]  # keep the mapping alive
    return func


def _measure_tsc_khz(interval: float = 0.002) -> int | None:
    rdtsc = _rdtsc_function()
    if rdtsc is None:
        return None
    samples = []
    for _ in range(3):
        t0 = time.perf_counter_ns()
        c0 = rdtsc()
        time.sleep(interval)
        c1 = rdtsc()
        t1 = time.perf_counter_ns()
        if t1 > t0 and c1 > c0:
            samples.append((c1 - c0) * 1_000_000 // (t1 - t0))
    if not samples:
        return None
    return sorted(samples)[len(samples) // 2]


def _cpuinfo_tsc_khz() -> int | None:
    """"cpu MHz" of /proc/cpuinfo, trusted only where the TSC is constant (a VM's
    vCPU usually reports the TSC rate there)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read(65536)
    except OSError:
        return None
    mhz = flags = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "cpu MHz" and mhz is None:
            mhz = value.strip()
        elif key == "flags" and flags is None:
            flags = value.split()
    if mhz is None or flags is None or "constant_tsc" not in flags:
        return None
    try:
        return int(float(mhz) * 1000)
    except ValueError:
        return None


_cached: list[int | None] = []


def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz (measured against the monotonic clock), or None.
    Measured once per host boot: the rate does not change while the host runs."""
    if not _cached:
        _cached.append(_remembered(_boot_id(), lambda: _measure_tsc_khz() or _cpuinfo_tsc_khz()))
        log.debug("host TSC rate: %s kHz", _cached[0])
    return _cached[0]


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _remembered(boot_id: str | None, measure: Callable[[], int | None]) -> int | None:
    if boot_id is None:
        return measure()
    from initkit.cache import cache_dir
    from initkit.files import remember

    note = cache_dir("hostrun") / f"tsc-khz-{boot_id}"
    try:
        return int(note.read_text())
    except (OSError, ValueError):
        pass
    khz = measure()
    if khz:
        remember(note, str(khz))
    return khz


PROBE_SECONDS = 2.0  # a working KVM prints the first line in ~0.05 s, TCG in ~0.15 s


def kvm_boots(qemu: str, vmlinux: str) -> bool:
    """Whether a Linux guest actually runs under KVM here: /dev/kvm opens, and a probe
    boot of ``vmlinux`` (no initrd, early console) prints its first line within
    PROBE_SECONDS. Remembered per host boot, so only the first run pays for it.

    On some nested hosts /dev/kvm opens and even a trivial KVM guest runs, yet Linux
    hangs before its first message; only a boot shows that.
    """
    if not kvm_opens():
        return False
    if not _cached_kvm:
        _cached_kvm.append(_remembered_flag(f"kvm-boots-{_boot_id()}",
                                            lambda: _probe_kvm(qemu, vmlinux)))
        log.info("KVM probe: Linux %s under KVM", "boots" if _cached_kvm[0] else
                 "does not boot (hangs)")
    return _cached_kvm[0]


_cached_kvm: list[bool] = []


def _probe_kvm(qemu: str, vmlinux: str) -> bool:
    import select
    import subprocess

    from hostrun.procs import child_setup, stop_process
    from initkit import process
    from initkit.errors import InitkitError

    argv = [qemu, "-M", "microvm,accel=kvm", "-m", "128M", "-nodefaults",
            "-no-user-config", "-display", "none", "-no-reboot", "-kernel", vmlinux,
            "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1", "-serial", "stdio"]
    try:
        proc = process.start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, new_session=True,
                             preexec_fn=child_setup())
    except InitkitError:
        return False
    stdout = proc.stdout
    assert stdout is not None  # stdout=PIPE
    try:
        ready, _, _ = select.select([stdout], [], [], PROBE_SECONDS)
        return bool(ready) and bool(os.read(stdout.fileno(), 64))
    finally:
        stop_process(proc, grace=0.5, term=9)
        stdout.close()


def _remembered_flag(name: str, probe: Callable[[], bool]) -> bool:
    if "None" in name:
        return probe()
    from initkit.cache import cache_dir
    from initkit.files import remember

    note = cache_dir("hostrun") / name
    with contextlib.suppress(OSError):
        return note.read_text().strip() == "yes"
    result = probe()
    remember(note, "yes" if result else "no")
    return result
