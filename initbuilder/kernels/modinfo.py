"""What one kernel module says about itself: its ``.modinfo`` section.

A module's ``.modinfo`` is a list of NUL-terminated ``key=value`` strings (``name=``,
``depends=``, ``softdep=``, ``alias=``, ``vermagic=``...). Reading it from the ``.ko`` itself
means no modules.dep is needed. Compressed modules (``.ko.xz``, ``.ko.zst``, ``.ko.gz``)
are decompressed in memory first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from initbuilder.kernels import decompress
from initbuilder.loader import elf
from initkit.errors import InitkitError, reading

# Module file suffix -> compression, longest first so ".ko.zst" is not taken for ".ko".
MODULE_SUFFIXES: tuple[tuple[str, str | None], ...] = (
    (".ko.zst", "zstd"),
    (".ko.xz", "xz"),
    (".ko.gz", "gzip"),
    (".ko", None),
)


def split_module_filename(filename: str) -> tuple[str, str | None] | None:
    """("virtio_ring", "zstd") for "virtio_ring.ko.zst"; None when not a module file."""
    for suffix, kind in MODULE_SUFFIXES:
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)], kind
    return None


def module_name(stem: str) -> str:
    """The kernel's name for a module: dashes and underscores are the same, stored as "_"."""
    return stem.replace("-", "_")


@dataclass(frozen=True)
class ModInfo:
    """The key=value pairs of one module's .modinfo, in section order."""

    fields: tuple[tuple[str, str], ...]

    def get(self, key: str) -> list[str]:
        return [value for k, value in self.fields if k == key]

    def first(self, key: str) -> str | None:
        values = self.get(key)
        return values[0] if values else None

    @property
    def depends(self) -> list[str]:
        """Hard dependencies (module names), in the order modpost wrote them."""
        return [module_name(n) for v in self.get("depends") for n in v.split(",") if n]

    @property
    def aliases(self) -> list[str]:
        return self.get("alias")

    @property
    def softdeps(self) -> tuple[list[str], list[str]]:
        """(pre, post) soft dependencies, as names or aliases."""
        pre: list[str] = []
        post: list[str] = []
        for value in self.get("softdep"):
            pre_part, post_part = parse_softdep(value)
            pre += pre_part
            post += post_part
        return pre, post

    @property
    def vermagic(self) -> str | None:
        return self.first("vermagic")


def parse_softdep(value: str) -> tuple[list[str], list[str]]:
    """Split "pre: a b post: c" into (["a", "b"], ["c"]); words before any "pre:"/"post:"
    are ignored, as modprobe does."""
    pre: list[str] = []
    post: list[str] = []
    target: list[str] | None = None
    for word in value.split():
        if word == "pre:":
            target = pre
        elif word == "post:":
            target = post
        elif target is not None:
            target.append(word)
    return pre, post


def parse_fields(section: bytes) -> tuple[tuple[str, str], ...]:
    """NUL-separated key=value strings -> pairs; padding and malformed strings skipped."""
    fields = []
    for raw in section.split(b"\0"):
        key, sep, value = raw.decode(errors="replace").partition("=")
        if sep and key:
            fields.append((key, value))
    return tuple(fields)


def read_module_bytes(path: Path, compression: str | None = None) -> bytes:
    """The plain ELF bytes of a module file, decompressing .ko.xz/.ko.zst/.ko.gz."""
    if compression is None:
        split = split_module_filename(path.name)
        compression = split[1] if split else None
    with reading(path, "kernel module"):
        data = path.read_bytes()
    if compression is None:
        return data
    found = decompress.detect(data)
    if found != compression:
        raise InitkitError(f"kernel module {path}: name says {compression} but the file "
                           f"{'is ' + found if found else 'is not compressed that way'}")
    return decompress.decompress(data, compression, what=f"kernel module {path}")


def modinfo_from_elf(data: bytes, what: str) -> ModInfo:
    """Parse .modinfo out of a module's ELF bytes; ``what`` names it in errors."""
    try:
        section = elf.image_section(data, ".modinfo", what)
    except elf.ElfError:
        raise InitkitError(f"{what} is not a valid ELF kernel module") from None
    if section is None:
        raise InitkitError(f"{what} has no .modinfo section; is it a kernel module?")
    return ModInfo(parse_fields(section))


def read_modinfo(path: Path) -> ModInfo:
    """The .modinfo of a (possibly compressed) module file."""
    return modinfo_from_elf(read_module_bytes(path), f"kernel module {path}")


def read_builtin_modinfo(data: bytes) -> dict[str, ModInfo]:
    """modules.builtin.modinfo ("module.key=value" strings) -> ModInfo per module name."""
    per_module: dict[str, list[tuple[str, str]]] = {}
    for key, value in parse_fields(data):
        module, dot, field = key.partition(".")
        if dot and module and field:
            per_module.setdefault(module_name(module), []).append((field, value))
    return {name: ModInfo(tuple(fields)) for name, fields in per_module.items()}
