"""The initrd handed to QEMU stays clear of microvm's ACPI tables (hostrun/placement.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostrun.placement import MAX_TAIL, PADDED_NAME, PAGE, clear_of_tables, needs_padding
from hostrun.vmm import CloudHypervisor, Qemu
from initbuilder.cpio import write_initrd
from initbuilder.image import Image


@pytest.mark.parametrize(("size", "padded"), [
    (0, False), (PAGE, False), (3 * PAGE + 1, False), (3 * PAGE + MAX_TAIL, False),
    (3 * PAGE + MAX_TAIL + 1, True), (6008779, True), (3 * PAGE + PAGE - 1, True),
])
def test_which_sizes_are_padded(size: int, padded: bool) -> None:
    assert needs_padding(size) is padded


def test_a_file_that_ends_early_in_its_page_is_given_as_it_is(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"x" * (PAGE + 100))
    work = tmp_path / "work"
    work.mkdir()
    assert clear_of_tables(initrd, work) == initrd
    assert list(work.iterdir()) == []


def test_a_file_that_ends_late_is_copied_and_padded_with_zeros(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.zst"
    data = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes: 2,052 into its third page
    initrd.write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    given = clear_of_tables(initrd, work)
    assert given == work / PADDED_NAME
    assert given.read_bytes() == data + bytes(3 * PAGE - len(data))
    assert initrd.read_bytes() == data  # the user's file is untouched
    made = given.stat().st_mtime_ns
    assert clear_of_tables(initrd, work) == given  # a second boot of the run reuses it
    assert given.stat().st_mtime_ns == made


def test_only_qemu_pads(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"x" * (PAGE - 1))
    assert Qemu(binary="qemu-system-x86_64").initrd_for(initrd, tmp_path) != initrd
    assert CloudHypervisor(binary="cloud-hypervisor", version=(40, 0)).initrd_for(
        initrd, tmp_path) == initrd


def test_write_initrd_pads_an_uncompressed_archive_to_whole_pages(tmp_path: Path) -> None:
    image = Image()
    image.add_file("init", data=b"#!/bin/sh\n" * 500, mode=0o755)
    plain = write_initrd(image, tmp_path / "plain.cpio")
    padded = write_initrd(image, tmp_path / "padded.cpio", pad_to=PAGE)
    assert plain.size % PAGE != 0
    assert padded.size % PAGE == 0 and padded.size - plain.size < PAGE
    data = (tmp_path / "padded.cpio").read_bytes()
    assert data[:plain.size] == (tmp_path / "plain.cpio").read_bytes()
    assert data[plain.size:] == bytes(padded.size - plain.size)


def test_write_initrd_refuses_to_pad_a_compressed_one(tmp_path: Path) -> None:
    image = Image()
    image.add_file("init", data=b"x", mode=0o755)
    with pytest.raises(ValueError, match="uncompressed"):
        write_initrd(image, tmp_path / "a.cpio.zst", pad_to=PAGE)
    assert list(tmp_path.iterdir()) == []
