"""Kernel image formats: what an image is, which kernel it holds, and the vmlinux inside.

Recognised: x86 bzImage (boot protocol header, compressed payload), ELF vmlinux, arm64 and
RISC-V ``Image``, EFI zboot images, and any of these wrapped in gzip/xz/zstd/... PVH boots
(QEMU microvm, cloud-hypervisor before v39) need the ELF vmlinux, which
:func:`extract_vmlinux` takes out of a bzImage and caches by the bzImage's content hash.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from initbuilder.kernels import decompress
from initbuilder.loader import elf
from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.errors import InitkitError, reading, writing
from initkit.files import replacing, write_atomically

log = logging.getLogger("initkit.kernel")

BZIMAGE = "bzImage"
ELF_VMLINUX = "ELF vmlinux"
ARM64_IMAGE = "arm64 Image"
RISCV_IMAGE = "RISC-V Image"
EFI_ZBOOT = "EFI zboot"

_XEN_ELFNOTE_PHYS32_ENTRY = 18  # the note QEMU and cloud-hypervisor look for to boot PVH
_BANNER = re.compile(rb"Linux version (\d[^\s\x00]*) ([^\x00\n]*)")
# x86 appends the uncompressed size (le32) after every payload but gzip, whose own
# trailer already carries it (arch/x86/boot/compressed/Makefile, *_with_size).
_SIZE_APPENDED = frozenset({"xz", "lzma", "bzip2", "lz4", "zstd", "lzo"})


@dataclass(frozen=True)
class KernelInfo:
    """What a kernel image file is and holds."""

    path: Path
    format: str  # BZIMAGE, ELF_VMLINUX, ARM64_IMAGE, RISCV_IMAGE or EFI_ZBOOT
    version: str | None  # the release, as `uname -r` prints it
    version_string: str | None  # the whole banner after the release (builder, date)
    compression: str | None  # of the bzImage/zboot payload, or of the file itself
    boot_protocol: str | None = None  # bzImage header version, e.g. "2.15"
    machine: str | None = None  # ELF e_machine of the vmlinux, e.g. "EM_X86_64"
    pvh_entry: int | None = None  # physical PVH entry point, when the vmlinux has the note

    @property
    def pvh(self) -> bool | None:
        """Whether the vmlinux has a PVH entry note (None: not an x86 image)."""
        if self.format in (BZIMAGE, ELF_VMLINUX) and self.machine in (None, "EM_X86_64",
                                                                        "EM_386"):
            return self.pvh_entry is not None
        return None


@dataclass(frozen=True)
class BzImageHeader:
    """The parts of the x86 boot protocol header initkit uses."""

    protocol: tuple[int, int]
    version_string: str | None
    payload_offset: int  # in the file
    payload_length: int


def read_bzimage_header(data: bytes) -> BzImageHeader | None:
    """Parse the boot protocol header, or None when ``data`` is not a bzImage."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return None
    protocol = struct.unpack_from("<H", data, 0x206)[0]
    major, minor = protocol >> 8, protocol & 0xFF
    if (major, minor) < (2, 8):
        raise InitkitError(f"bzImage boot protocol {major}.{minor} is older than 2.08 and "
                           "does not describe its payload; use a kernel newer than 2.6.26")
    setup_sects = data[0x1F1] or 4  # 0 means 4, for very old images
    protected_mode_start = (setup_sects + 1) * 512
    version_ptr = struct.unpack_from("<H", data, 0x20E)[0]
    version_string = None
    if version_ptr:
        start = version_ptr + 0x200
        end = data.find(b"\0", start, start + 512)
        if end > start:
            version_string = data[start:end].decode(errors="replace")
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    return BzImageHeader(
        protocol=(major, minor),
        version_string=version_string,
        payload_offset=protected_mode_start + payload_offset,
        payload_length=payload_length,
    )


def bzimage_payload(data: bytes, what: str = "bzImage") -> tuple[str, bytes]:
    """The payload's compression and its compressed stream (without the size trailer)."""
    header = read_bzimage_header(data)
    if header is None:
        raise InitkitError(f"{what} is not a bzImage (no 'HdrS' boot header at 0x202)")
    end = header.payload_offset + header.payload_length
    if end > len(data) or header.payload_length < 8:
        raise InitkitError(f"{what}: payload ({header.payload_length} bytes at "
                           f"{header.payload_offset}) lies outside the file; is it truncated?")
    payload = data[header.payload_offset:end]
    kind = decompress.detect(payload)
    if kind is None:
        raise InitkitError(f"{what}: unknown payload compression (magic {payload[:6].hex()})")
    if kind in _SIZE_APPENDED:
        payload = payload[:-4]
    return kind, payload


def vmlinux_from_bzimage(data: bytes, what: str = "bzImage") -> bytes:
    """Decompress a bzImage payload and return the ELF vmlinux, without the relocation
    table x86 appends after it (PVH loaders read only the ELF)."""
    kind, payload = bzimage_payload(data, what)
    raw = decompress.decompress(payload, kind, what=f"{what} payload")
    if not raw.startswith(b"\x7fELF"):
        raise InitkitError(f"{what}: the {kind} payload is not an ELF file "
                           f"(starts with {raw[:4].hex()})")
    return raw[:elf.image_extent(raw, what)]


def pvh_entry(elf_data: bytes) -> int | None:
    """The XEN_ELFNOTE_PHYS32_ENTRY address of an ELF vmlinux, or None."""
    try:
        notes = elf.image_notes(elf_data, "vmlinux")
    except elf.ElfError:
        return None
    for note in notes:
        if note.name == "Xen" and note.type == _XEN_ELFNOTE_PHYS32_ENTRY:
            size = 8 if len(note.desc) >= 8 else 4
            order = "<" if elf.image_little_endian(elf_data) else ">"
            address: int = struct.unpack_from(order + ("Q" if size == 8 else "I"),
                                              note.desc)[0]
            return address
    return None


def _banner(data: bytes) -> tuple[str | None, str | None]:
    match = _BANNER.search(data)
    if match is None:
        return None, None
    release = match.group(1).decode(errors="replace")
    return release, f"{release} {match.group(2).decode(errors='replace')}"


def kernel_info(path: Path, *, payload: bool = True) -> KernelInfo:
    """Identify a kernel image. With ``payload`` a bzImage's vmlinux is extracted (into the
    vmlinux cache) to report its PVH note; without, only the header is read."""
    path = Path(path)
    data = _read(path)
    return _info(path, data, payload=payload, outer=None)


def _info(path: Path, data: bytes, *, payload: bool, outer: str | None) -> KernelInfo:
    header = read_bzimage_header(data)
    if header is not None:
        kind, _ = bzimage_payload(data, str(path))
        version = header.version_string.split()[0] if header.version_string else None
        entry, machine = None, None
        if payload:
            vmlinux = (_read(extract_vmlinux(path)) if outer is None
                       else vmlinux_from_bzimage(data))
            entry, machine = pvh_entry(vmlinux), elf.image_machine(vmlinux)
        return KernelInfo(path, BZIMAGE, version, header.version_string, kind,
                          boot_protocol="{}.{:02d}".format(*header.protocol), machine=machine,
                          pvh_entry=entry)
    if data.startswith(b"\x7fELF"):
        release, banner = _banner(data)
        return KernelInfo(path, ELF_VMLINUX, release, banner, outer,
                          machine=elf.image_machine(data), pvh_entry=pvh_entry(data))
    if len(data) >= 64 and data[56:60] == b"ARM\x64":
        release, banner = _banner(data)
        return KernelInfo(path, ARM64_IMAGE, release, banner, outer)
    if len(data) >= 64 and data[48:56] == b"RISCV\0\0\0":
        release, banner = _banner(data)
        return KernelInfo(path, RISCV_IMAGE, release, banner, outer)
    if data[:2] == b"MZ" and data[4:8] == b"zimg":
        # EFI zboot (arm64/riscv vmlinuz since 6.1): offset, size, compression name.
        offset, size = struct.unpack_from("<II", data, 8)
        kind = data[24:56].split(b"\0")[0].decode(errors="replace")
        inner = decompress.decompress(data[offset:offset + size], _ZBOOT_KINDS.get(kind, kind),
                                      what=f"{path} zboot payload")
        found = _info(path, inner, payload=payload, outer=kind)
        return KernelInfo(path, EFI_ZBOOT, found.version, found.version_string, kind,
                          machine=found.machine)
    compression = decompress.detect(data)
    if compression is not None and outer is None:
        inner = decompress.decompress(data, compression, what=str(path))
        return _info(path, inner, payload=payload, outer=compression)
    raise InitkitError(
        f"{path} is not a kernel image initkit knows (bzImage, ELF vmlinux, arm64/RISC-V "
        "Image, EFI zboot); pass the vmlinuz/bzImage from the kernel package"
    )


_ZBOOT_KINDS = {"gzip": "gzip", "lzma": "lzma", "xzkern": "xz", "zstd22": "zstd",
                "lz4": "lz4", "lzo": "lzo", "bzip2": "bzip2", "xz": "xz", "zstd": "zstd"}


def kernel_release(path: Path) -> str:
    """The release (`uname -r`) of a kernel image, read without decompressing a bzImage."""
    info = kernel_info(path, payload=False)
    if not info.version:
        raise InitkitError(f"{path}: no 'Linux version' string found; pass --modules-dir "
                           "lib/modules/VERSION instead of --kernel")
    return info.version


def extract_vmlinux(bzimage: Path, out: Path | None = None) -> Path:
    """The ELF vmlinux inside ``bzimage``, cached by content hash under
    cache_dir("vmlinux"); copied to ``out`` when given, else the cached path is returned.
    An ELF vmlinux passed in is returned (or copied) as it is."""
    bzimage = Path(bzimage)
    data = _read(bzimage)
    if data.startswith(b"\x7fELF"):
        source = bzimage
    else:
        digest = hashlib.sha256(data).hexdigest()
        source = cache_dir("vmlinux") / f"{digest}.elf"
        if not source.exists():
            # Another process may extract the same image at once: the same bytes.
            write_atomically(source, vmlinux_from_bzimage(data, str(bzimage)), mode=0o644,
                             what="the cache entry", instead=CACHE_ELSEWHERE)
            log.info("extracted vmlinux from %s into %s", bzimage, source)
    if out is None:
        return source
    out = Path(out)
    if out.exists() and out.samefile(source):
        return out
    with writing(out, "write the vmlinux"):
        if os.path.isdir(out):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(out))
    with replacing(out, what="the vmlinux") as tmp, writing(out, "write the vmlinux"):
        shutil.copyfile(source, tmp)
    return out


def _read(path: Path) -> bytes:
    with reading(path, "kernel image"):
        return Path(path).read_bytes()
