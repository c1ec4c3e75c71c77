"""Builders for synthetic kernel parts: modules with hand-made .modinfo sections,
compressed variants, module trees, and bzImages around a tiny ELF "vmlinux"."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from realparts import need

VERSION = "6.1.0-synthetic"

# Compression -> (module suffix, argv that compresses stdin to stdout), as the kernel's
# Makefiles run them.
MODULE_COMPRESSORS = {
    "xz": (".ko.xz", ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-c"]),
    "zstd": (".ko.zst", ["zstd", "-q", "-c"]),
    "gzip": (".ko.gz", ["gzip", "-n", "-c"]),
}
# bzImage payload compression -> argv, and whether the kernel appends the size (le32).
PAYLOAD_COMPRESSORS = {
    "gzip": (["gzip", "-n", "-9", "-c"], False),
    "xz": (["xz", "--check=crc32", "-c"], True),
    "zstd": (["zstd", "-q", "--ultra", "-22", "-c"], True),
    "lz4": (["lz4", "-q", "-l", "-9", "-c"], True),
    "lzma": (["xz", "--format=lzma", "-9", "-c"], True),
    "bzip2": (["bzip2", "-9", "-c"], True),
}

VMLINUX_C = r"""
struct pvh_note { unsigned namesz, descsz, type; char name[4]; unsigned desc; };
__attribute__((section(".note.Xen"), used, aligned(4)))
static const struct pvh_note pvh = { 4, 4, 18, "Xen", 0x1000850 };
__attribute__((used))
const char linux_banner[] = "Linux version VERSION (test@initkit) (gcc) #1 SMP\n";
void _start(void) { for (;;) {} }
"""


def pipe(argv: Sequence[str], data: bytes) -> bytes:
    need(argv[0])
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


class ModuleTreeBuilder:
    """Writes synthetic modules into <tmp>/lib/modules/VERSION."""

    def __init__(self, tmp: Path, base: Path, version: str = VERSION) -> None:
        self.base = base
        self.version = version
        self.root = tmp / "lib" / "modules" / version
        self.root.mkdir(parents=True)
        self.plain: dict[str, bytes] = {}  # relpath of the .ko -> its plain bytes

    def add(
        self,
        name: str,
        *,
        depends: Iterable[str] = (),
        softdep: str | None = None,
        aliases: Iterable[str] = (),
        vermagic: str | None = None,
        compression: str | None = None,
        directory: str = "kernel/drivers/test",
        extra: Iterable[tuple[str, str]] = (),
    ) -> Path:
        """Write module ``name`` (the file name; "my-mod" stays "my-mod.ko")."""
        fields = [("alias", a) for a in aliases]
        fields.append(("depends", ",".join(depends)))
        if softdep is not None:
            fields.append(("softdep", softdep))
        fields.append(("name", name.replace("-", "_")))
        fields.append(("vermagic", vermagic or f"{self.version} SMP preempt mod_unload"))
        fields += list(extra)
        modinfo = b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields)
        directory_path = self.root / directory
        directory_path.mkdir(parents=True, exist_ok=True)
        info_file = directory_path / f".{name}.modinfo"
        info_file.write_bytes(modinfo)
        ko = directory_path / f"{name}.ko"
        subprocess.run(["objcopy", "--add-section", f".modinfo={info_file}",
                        "--set-section-flags", ".modinfo=alloc,readonly",
                        self.base, ko], check=True)
        info_file.unlink()
        self.plain[f"{directory}/{name}.ko"] = ko.read_bytes()
        if compression is None:
            return ko
        suffix, argv = MODULE_COMPRESSORS[compression]
        packed = directory_path / f"{name}{suffix}"
        packed.write_bytes(pipe(argv, ko.read_bytes()))
        ko.unlink()
        return packed

    def builtin(self, names: Iterable[str], modinfo: Iterable[tuple[str, str, str]] = ()) -> None:
        """Write modules.builtin (paths) and modules.builtin.modinfo (module, key, value)."""
        (self.root / "modules.builtin").write_text(
            "".join(f"kernel/builtin/{n}.ko\n" for n in names))
        (self.root / "modules.builtin.modinfo").write_bytes(
            b"".join(f"{m}.{k}={v}".encode() + b"\0" for m, k, v in modinfo))


def make_bzimage(elf: bytes, compression: str, version_string: str) -> bytes:
    """A bzImage as the x86 boot protocol 2.15 lays it out: setup, header, payload."""
    argv, size_appended = PAYLOAD_COMPRESSORS[compression]
    payload = pipe(argv, elf)
    if size_appended:
        payload += struct.pack("<I", len(elf))
    setup_sects = 3
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    banner = version_string.encode() + b"\0"
    struct.pack_into("<H", setup, 0x20E, 0x400 - 0x200)  # string at 0x400 of the file
    setup[0x400:0x400 + len(banner)] = banner
    head = b"\x90" * 0x200  # the decompressor's code would be here
    struct.pack_into("<II", setup, 0x248, len(head), len(payload))
    return bytes(setup) + head + payload + b"\0" * 64
