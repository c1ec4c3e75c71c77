"""From the user's words to a RunSpec: which VMM and accelerator, which daemon, which
kernel file the VMM gets, and which initrd (built and cached when none is given)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from guest import contract
from hostrun import hostcpu
from hostrun.action import Action, kernel_cmdline
from hostrun.session import RunSpec
from hostrun.virtiofs import choose_daemon
from hostrun.vmm import CloudHypervisor, Qemu, Vmm, parse_cloud_hypervisor_version
from initkit.cache import cache_dir
from initkit.errors import InitkitError
from initkit.files import identity, remember

if TYPE_CHECKING:
    from hostrun.storeview.view import StoreView

log = logging.getLogger("initkit.hostrun")

VMMS = ("auto", "qemu", "cloud-hypervisor")
ACCEL_CHOICES = ("auto", "kvm", "tcg")
ACCEL_ENV = "HOSTRUN_ACCEL"
KERNEL_ENV = "HOSTRUN_KERNEL"
SILENCE_ENV = "HOSTRUN_SILENCE_NOTICE"
# --kernel's word for initkit's own kernel; a file of that name needs its directory
# ($PWD/minimal: Path turns ./minimal into minimal).
MINIMAL_KERNEL = "minimal"


@dataclass
class Request:
    """A run as the user asked for it (CLI flags or the pytest fixture)."""

    kernel: Path | None = None  # None: $HOSTRUN_KERNEL, else the cached Debian kernel;
    # Path("minimal"): initkit's own kernel
    initrd: Path | None = None  # None: build initbuilder's default for the kernel
    store: Path = Path("/nix/store")
    action: Action | None = None
    cpus: int = 1
    memory_mib: int = 512
    extra_cmdline: str = ""
    timeout: float | None = None
    vmm: str = "auto"
    accel: str | None = None  # None: $HOSTRUN_ACCEL, else auto
    daemon: str = "auto"
    verbose: bool = False
    fs_tag: str = contract.DEFAULT_TAG
    initrd_files: list[str] = field(default_factory=list)  # extra host:guest files
    silence_notice: float | None = None  # None: $HOSTRUN_SILENCE_NOTICE, else per accel
    # Exactly the closure of these store paths as /nix/store (store: where they are taken
    # from), paths missing there from these file:// binary caches, in order.
    closure: list[str] = field(default_factory=list)
    substituters: list[str] = field(default_factory=list)
    # The action goes over the control channel (hostrun/oneshot.py), not on the kernel
    # command line: the RunSpec has none, and its words need not fit the command line.
    over_channel: bool = False


def plan(request: Request) -> RunSpec:
    """Check the request and resolve every choice; InitkitError for what the user can fix."""
    if request.cpus < 1:
        raise InitkitError(f"--cpus {request.cpus}: give at least 1")
    if request.timeout is not None and request.timeout <= 0:
        raise InitkitError(f"--timeout {request.timeout:g}: give a positive number of seconds")
    silence = _silence_notice(request.silence_notice)  # a bad value fails before any work
    # The action and --cmdline as the guest will read them, before any work (the whole
    # line, with the VMM's own words, is checked again at boot).
    action = None if request.over_channel else request.action
    kernel_cmdline(defaults=[], nonce="0" * contract.NONCE_LENGTH, verbose=request.verbose,
                   action=action, extra=request.extra_cmdline, echo=False,
                   tag=request.fs_tag)
    kernel = find_kernel(request.kernel)
    store = request.store.resolve()
    daemon = choose_daemon(request.daemon, store)
    store_view = _store_view(request, daemon.uses_store, daemon.name)
    if daemon.uses_store and store_view is None:
        _check_store(request.store)
    vmm, accel = choose_vmm(request.vmm, request.accel or os.environ.get(ACCEL_ENV) or "auto",
                            kernel)
    if request.initrd is not None:
        initrd = _existing_file(request.initrd, "--initrd", "an initrd (cpio archive)")
    else:
        from hostrun.initrd import default_initrd

        initrd = default_initrd(kernel, files=request.initrd_files,
                                native_only=_native_takes(request, action, vmm, accel))
    return RunSpec(
        kernel=kernel_for(vmm, kernel), initrd=initrd, vmm=vmm, daemon=daemon, accel=accel,
        action=action, cpus=request.cpus, memory_mib=request.memory_mib,
        extra_cmdline=request.extra_cmdline, timeout=request.timeout,
        verbose=request.verbose, fs_tag=request.fs_tag,
        silence_notice=silence, store_view=store_view,
    )


def _native_takes(request: Request, action: Action | None, vmm: Vmm, accel: str) -> bool:
    """Whether the native init carries out this boot's command line itself, so that its
    initrd needs no Python runtime (guest/handover.py). The line as the boot will write
    it, but for the nonce and the echo word, which that answer does not depend on; the
    shell is busybox's, which the default initrd has when the host has one. The action
    may be in the extra words (CH_CMDLINE=tvix.exec=...) rather than ``action``."""
    if request.over_channel:  # the agent is the Python init's
        return False
    from guest.handover import native_takes

    line = kernel_cmdline(defaults=vmm.cmdline_defaults(accel),
                          nonce="0" * contract.NONCE_LENGTH, verbose=request.verbose,
                          action=action, extra=request.extra_cmdline, tag=request.fs_tag)
    return native_takes(line.encode("utf-8", "surrogateescape"),
                        shell=shutil.which("busybox") is not None)


def _silence_notice(given: float | None) -> float | None:
    if given is not None:
        return given
    text = os.environ.get(SILENCE_ENV)
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise InitkitError(f"${SILENCE_ENV}={text!r}: give a positive number of seconds")
    return seconds


def _store_view(request: Request, uses_store: bool, daemon: str) -> StoreView | None:
    """``--closure``: the store paths the daemon is to serve (None: the whole --store)."""
    if not request.closure:
        if request.substituters:
            raise InitkitError("--substituter is where --closure paths come from; pass "
                               "--closure PATH as well")
        return None
    if not uses_store:
        raise InitkitError(f"--closure: the daemon {daemon} serves its own store, not a "
                           "directory hostrun makes; use --daemon virtiofsd")
    from hostrun.storeview.closure import resolve_closure  # NAR readers: only when used

    return resolve_closure(request.closure, request.store.absolute(), request.substituters)


def find_kernel(kernel: Path | None) -> Path:
    """The kernel image to boot: the one named, $HOSTRUN_KERNEL, or Debian's, fetched
    into the cache on first use. "minimal" names initkit's own kernel (`initbuilder
    kernel build`), built on first use."""
    if kernel is None and os.environ.get(KERNEL_ENV):
        kernel = Path(os.environ[KERNEL_ENV])
    if kernel is not None and str(kernel) == MINIMAL_KERNEL:
        from initbuilder.kernels.build import minimal_kernel

        return minimal_kernel(report=lambda text: log.warning("hostrun: %s", text)).bzimage
    if kernel is not None:
        return _existing_file(kernel, "--kernel", "a kernel image (bzImage or vmlinux)")
    from initbuilder.kernels.fetch import fetch_debian_kernel

    fetched = fetch_debian_kernel()
    log.info("no --kernel: using Debian's %s", fetched.package)
    return fetched.bzimage


def kernel_for(vmm: Vmm, kernel: Path) -> Path:
    """The kernel file ``vmm`` can boot: a bzImage as is where it takes one, else the
    vmlinux inside it (extracted once, cached)."""
    with open(kernel, "rb") as f:
        head = f.read(0x210)
    if head.startswith(b"\x7fELF"):
        return kernel
    is_bzimage = head[0x202:0x206] == b"HdrS"
    if is_bzimage and vmm.accepts_bzimage():
        return kernel
    # extract_vmlinux hashes the whole image to find its cache entry; a note keyed by the
    # file's identity (path, size, mtime, inode, device) skips that and the ELF imports.
    key = hashlib.sha256(identity(kernel).encode())
    note = cache_dir("hostrun", "vmlinux") / key.hexdigest()[:32]
    with contextlib.suppress(OSError):
        known = Path(note.read_text())
        if known.is_file():
            return known
    from initbuilder.kernels.formats import extract_vmlinux

    vmlinux = extract_vmlinux(kernel)
    remember(note, str(vmlinux))
    return vmlinux


def choose_vmm(choice: str, accel: str, kernel: Path | None = None) -> tuple[Vmm, str]:
    """``--vmm`` and ``--accel`` resolved: the VMM and "kvm" or "tcg".

    KVM counts as available when /dev/kvm opens and, where QEMU and ``kernel`` are at
    hand, a probe boot under KVM prints its first line (hostcpu.kvm_boots; remembered
    per host boot). auto prefers cloud-hypervisor when it is installed and KVM (or
    /dev/mshv) is available, else QEMU; QEMU's auto accelerator is KVM when available,
    else TCG. An explicit --accel kvm is taken at its word (no probe).
    """
    if choice not in VMMS:
        raise InitkitError(f"--vmm {choice!r}: choose one of {', '.join(VMMS)}")
    if accel not in ACCEL_CHOICES:
        raise InitkitError(f"--accel {accel!r} (or ${ACCEL_ENV}): choose one of "
                           f"{', '.join(ACCEL_CHOICES)}")
    kvm_checked: list[bool] = []

    def kvm_available() -> bool:
        if not kvm_checked:
            kvm_checked.append(_kvm_available(kernel))
        return kvm_checked[0]

    if choice == "auto":
        ch_ok = False
        if accel != "tcg" and shutil.which(CloudHypervisor.default_binary):
            device = hostcpu.hypervisor_device()
            ch_ok = device == "/dev/mshv" or (device is not None and kvm_available())
        choice = "cloud-hypervisor" if ch_ok else "qemu"
        log.info("--vmm auto: %s", choice)
    if choice == "cloud-hypervisor":
        return _cloud_hypervisor(accel), "kvm"
    if accel == "auto":
        accel = "kvm" if kvm_available() else "tcg"
        log.info("--accel auto: %s", accel)
    elif accel == "kvm" and not hostcpu.kvm_opens():
        raise InitkitError("--accel kvm: /dev/kvm is missing or cannot be opened read-write "
                           "(are you in the kvm group?); use --accel tcg")
    qemu = Qemu(tsc_khz=hostcpu.host_tsc_khz() if accel == "tcg" else None)
    qemu.binary = qemu.find_binary()
    return qemu, accel


def _kvm_available(kernel: Path | None) -> bool:
    if not hostcpu.kvm_opens():
        log.info("KVM: /dev/kvm is missing or does not open")
        return False
    qemu = shutil.which(Qemu.default_binary)
    if qemu is None or kernel is None:
        return True  # nothing to probe with: trust the device
    return hostcpu.kvm_boots(qemu, str(kernel_for(Qemu(), kernel)))


def _cloud_hypervisor(accel: str) -> CloudHypervisor:
    if accel == "tcg":
        raise InitkitError("cloud-hypervisor has no emulation (TCG); use --vmm qemu "
                           "--accel tcg")
    ch = CloudHypervisor()
    binary = ch.find_binary()
    if hostcpu.hypervisor_device() is None:
        raise InitkitError("cloud-hypervisor needs /dev/kvm (or /dev/mshv) and neither "
                           "opens on this machine; use --vmm qemu, which can emulate (TCG)")
    from initkit import process

    out = process.run([binary, "--version"], check=False, timeout=10).stdout
    return CloudHypervisor(binary, parse_cloud_hypervisor_version(out.decode(errors="replace")))


def _existing_file(path: Path, flag: str, what: str) -> Path:
    if not path.exists():
        raise InitkitError(f"{flag} {path}: no such file; pass {what}")
    if not path.is_file():
        raise InitkitError(f"{flag} {path}: not a regular file; pass {what}")
    if not os.access(path, os.R_OK):
        raise InitkitError(f"{flag} {path}: not readable")
    return path.resolve()


def _check_store(store: Path) -> None:
    if not store.exists():
        raise InitkitError(f"--store {store}: no such directory; pass the directory to "
                           "share as /nix/store")
    if not store.is_dir():
        raise InitkitError(f"--store {store}: not a directory")
    if not os.access(store, os.R_OK | os.X_OK):
        raise InitkitError(f"--store {store}: not readable")
