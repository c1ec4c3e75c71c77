"""Where QEMU microvm puts the initrd, and an initrd that stays clear of the ACPI tables.

QEMU loads the initrd at ``(top_of_ram - 1 - size) & ~4095``, so it ends ``4096 - size %
4096`` bytes below the top of RAM. microvm's firmware keeps its ACPI tables in that last
page (the e820 map reserves it): measured with QEMU 10.0 and Debian 13's kernel, the
tables start at offset 0xc80 of the page with 8 vCPUs (0xcc0 with one), and they grow
downwards with CPUs and devices. An initrd whose size is more than ~3,200 bytes past a
4 KiB multiple overwrites them when QEMU copies it in: the guest kernel reads a broken
XSDT (no virtio-mmio devices, so "virtio-fs: tag not found") or a broken MADT (a hang
before the first message). QEMU 7.2's firmware is not affected, but hostrun treats both
alike.

An initrd that ends past the first half of its last page is therefore handed to QEMU as
a copy padded with zeros to a 4 KiB multiple (the kernel skips zeros after an archive,
compressed or not), in hostrun's private dir; hostrun's own default initrd is written
padded and is never copied.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PAGE = 4096
# The most an initrd may reach into its last page unpadded: half of it, well below the
# tables' lowest offset measured (0xc80).
MAX_TAIL = PAGE // 2
PADDED_NAME = "initrd.padded"


def needs_padding(size: int) -> bool:
    """Whether an initrd of ``size`` bytes would end too close to the top of RAM."""
    return size % PAGE > MAX_TAIL


def clear_of_tables(initrd: Path, directory: Path) -> Path:
    """``initrd`` itself, or a copy in ``directory`` padded to a 4 KiB multiple when its
    end would reach the page where microvm keeps the ACPI tables. OSError is the
    caller's to report (a full ``$TMPDIR``, say)."""
    size = initrd.stat().st_size
    if not needs_padding(size):
        return initrd
    padded = directory / PADDED_NAME
    if padded.is_file() and padded.stat().st_size == size + PAGE - size % PAGE:
        return padded  # made for this run's first boot (a boot again after an early death)
    shutil.copyfile(initrd, padded)  # sendfile(2): no bytes through Python
    with open(padded, "ab") as target:
        target.write(bytes(PAGE - size % PAGE))
    os.chmod(padded, 0o600)
    return padded
