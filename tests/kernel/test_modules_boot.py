"""The load list works in a real guest: Debian's kernel booted through PVH (the extracted
vmlinux) under QEMU microvm/TCG, a busybox init that insmods /etc/initkit/modules in order."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from realparts import need
from synthetic_kernel import MODULE_COMPRESSORS, pipe

from hostrun.placement import clear_of_tables
from initbuilder.cpio import write_initrd
from initbuilder.image import Image, Kind
from initbuilder.kernels.fetch import FetchedKernel
from initbuilder.kernels.modinfo import read_module_bytes
from initbuilder.kernels.modules import DEFAULT_MODULES, ModuleTree, add_modules, resolve

INIT = b"""#!/bin/sh
mount -t proc proc /proc
while read m; do insmod "$m" || echo "initkit-test: FAILED $m"; done < /etc/initkit/modules
echo initkit-test: modules; cut -d' ' -f1 /proc/modules
poweroff -f
"""


def boot(vmlinux: Path, initrd: Path) -> str:
    need("qemu-system-x86_64")
    cmdline = "console=ttyS0 panic=-1 quiet"
    try:
        from hostrun.hostcpu import host_tsc_khz

        khz = host_tsc_khz()
    except ImportError:
        khz = None
    if khz:  # TCG microvm boots can hang in TSC calibration without it
        cmdline += f" tsc_early_khz={khz}"
    # QEMU 10's TCG now and then faults in the guest kernel's first half second, before
    # the init (docs/hostrun.md): pic=off, as hostrun's argv, takes most of that away
    # (without it, 5 of 6 boots of this initrd died so on one machine); hostrun boots
    # again after such a death, and so does this test.
    # Clear of microvm's ACPI tables, as hostrun hands it (hostrun/placement.py).
    initrd = clear_of_tables(initrd, initrd.parent)
    for _ in range(3):
        proc = subprocess.run(
            ["qemu-system-x86_64", "-M", "microvm,accel=tcg,pic=off", "-m", "256", "-nographic",
             "-no-reboot", "-kernel", vmlinux, "-initrd", initrd, "-append", cmdline],
            capture_output=True, timeout=120, check=False,
        )
        console = proc.stdout.decode(errors="replace")
        if "initkit-test:" in console:
            break
    return console


def busybox_image() -> Image:
    busybox = shutil.which("busybox")
    if busybox is None:
        need("busybox")
    assert busybox is not None
    image = Image()
    image.add_file("bin/busybox", host=busybox)
    for applet in ("sh", "insmod", "cut", "poweroff", "mount", "echo"):
        image.add_symlink(f"bin/{applet}", "busybox")
    image.add_device("dev/console", Kind.CHAR, 5, 1)
    image.add_directory("proc")
    image.add_file("init", data=INIT, mode=0o755)
    return image


@pytest.mark.e2e
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_load_list_loads_in_the_guest(
    debian_kernel: FetchedKernel, debian_vmlinux: Path, tmp_path: Path,
    compression: str | None,
) -> None:
    modules_dir = debian_kernel.modules_dir
    if compression is not None:
        # A tree as Debian 13/Fedora/Arch ship it: the same modules, compressed.
        suffix, argv = MODULE_COMPRESSORS[compression]
        modules_dir = tmp_path / "lib" / "modules" / debian_kernel.version
        source = ModuleTree(debian_kernel.modules_dir)
        for module in resolve(source, DEFAULT_MODULES).load_order:
            target = modules_dir / (module.plain_relpath + suffix.removeprefix(".ko"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(pipe(argv, read_module_bytes(module.path, module.compression)))
        for name in ("modules.builtin", "modules.builtin.modinfo"):  # what is built in
            shutil.copy2(debian_kernel.modules_dir / name, modules_dir / name)
    image = busybox_image()
    paths = add_modules(image, kernel=debian_kernel.bzimage, modules_dir=modules_dir)
    initrd = tmp_path / "initrd.gz"
    write_initrd(image, initrd, compression="gzip")
    console = boot(debian_vmlinux, initrd)
    assert "initkit-test: FAILED" not in console, console
    assert "initkit-test: modules" in console, console
    loaded = console.split("initkit-test: modules", 1)[1].split()
    expected = {Path(p).name.removesuffix(".ko").replace("-", "_") for p in paths}
    assert expected <= set(loaded), console
