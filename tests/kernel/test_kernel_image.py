"""Kernel images: bzImage headers, every payload compression, the vmlinux inside, PVH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from synthetic_kernel import PAYLOAD_COMPRESSORS, VERSION, make_bzimage, pipe

from initbuilder.kernels.formats import (
    ARM64_IMAGE,
    BZIMAGE,
    ELF_VMLINUX,
    extract_vmlinux,
    kernel_info,
    kernel_release,
    pvh_entry,
    read_bzimage_header,
)
from initkit.errors import InitkitError

BANNER = f"{VERSION} (test@initkit) #1 SMP"


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("compression", sorted(PAYLOAD_COMPRESSORS))
def test_vmlinux_from_every_payload_compression(
    tmp_path: Path, tiny_vmlinux: bytes, compression: str,
) -> None:
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(make_bzimage(tiny_vmlinux, compression, BANNER))
    info = kernel_info(bzimage)
    assert (info.format, info.version, info.compression) == (BZIMAGE, VERSION, compression)
    assert info.version_string == BANNER
    assert info.boot_protocol == "2.15"
    assert info.pvh is True and info.pvh_entry == 0x1000850
    out = extract_vmlinux(bzimage, tmp_path / "vmlinux")
    assert out.read_bytes() == tiny_vmlinux


def test_extract_is_cached_by_content(tmp_path: Path, tiny_vmlinux: bytes) -> None:
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(make_bzimage(tiny_vmlinux, "xz", BANNER))
    cached = extract_vmlinux(bzimage)
    assert cached.parent == tmp_path / "cache" / "vmlinux"
    os.utime(cached, (1, 1))
    copy = tmp_path / "renamed-bzImage"
    copy.write_bytes(bzimage.read_bytes())
    assert extract_vmlinux(copy) == cached
    assert cached.stat().st_mtime == 1  # reused, not written again
    other = tmp_path / "other"
    other.write_bytes(make_bzimage(tiny_vmlinux, "gzip", BANNER))
    assert extract_vmlinux(other) != cached


def test_elf_vmlinux_is_returned_as_is(tmp_path: Path, tiny_vmlinux: bytes) -> None:
    elf = tmp_path / "vmlinux"
    elf.write_bytes(tiny_vmlinux)
    assert extract_vmlinux(elf) == elf
    info = kernel_info(elf)
    assert (info.format, info.version, info.machine) == (ELF_VMLINUX, VERSION, "EM_X86_64")
    assert info.pvh is True


def test_compressed_elf_vmlinux(tmp_path: Path, tiny_vmlinux: bytes) -> None:
    packed = tmp_path / "vmlinux.zst"
    packed.write_bytes(pipe(["zstd", "-q", "-c"], tiny_vmlinux))
    info = kernel_info(packed)
    assert (info.format, info.compression, info.version) == (ELF_VMLINUX, "zstd", VERSION)


def test_elf_without_pvh_note(tmp_path: Path) -> None:
    elf = Path("/bin/true").read_bytes()
    assert pvh_entry(elf) is None
    path = tmp_path / "true"
    path.write_bytes(elf)
    with pytest.raises(InitkitError, match="no 'Linux version' string"):
        kernel_release(path)


def test_arm64_image(tmp_path: Path) -> None:
    header = bytearray(64)
    header[56:60] = b"ARM\x64"
    image = tmp_path / "Image"
    image.write_bytes(bytes(header) + b"\0" * 100 + b"Linux version 6.12.0-arm64 (x@y) #1\n\0")
    info = kernel_info(image)
    assert (info.format, info.version, info.pvh) == (ARM64_IMAGE, "6.12.0-arm64", None)


def test_header_only_reads_no_payload(tmp_path: Path, tiny_vmlinux: bytes) -> None:
    data = bytearray(make_bzimage(tiny_vmlinux, "gzip", BANNER))
    header = read_bzimage_header(bytes(data))
    assert header is not None
    data[header.payload_offset + 20:header.payload_offset + 40] = b"\xff" * 20  # corrupt
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(bytes(data))
    assert kernel_release(bzimage) == VERSION
    with pytest.raises(InitkitError, match="corrupt gzip data"):
        extract_vmlinux(bzimage)


def test_not_a_kernel(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(InitkitError, match="not a kernel image initkit knows"):
        kernel_info(junk)
    with pytest.raises(InitkitError, match="no such file"):
        kernel_info(tmp_path / "missing")


def test_truncated_bzimage(tmp_path: Path, tiny_vmlinux: bytes) -> None:
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(make_bzimage(tiny_vmlinux, "xz", BANNER)[:3000])
    with pytest.raises(InitkitError, match="truncated"):
        extract_vmlinux(bzimage)
