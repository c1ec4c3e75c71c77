"""What one ELF file says, as far as the dynamic loader cares.

Read with pyelftools' struct definitions only (no readelf, no hand-made parser), but
without building an ``ELFFile``: that constructs every struct definition anew for each
file (~0.4 ms), while closures read thousands of files. The definitions are built once
per (byte order, class, type, machine, OS ABI) and reused; only the ELF header, the
program headers, the dynamic array, its string table and the PT_NOTE segments are read.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from functools import cache

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_CORE_NOTE_N_TYPE, ENUM_NOTE_N_TYPE
from elftools.elf.segments import NoteSegment
from elftools.elf.structs import ELFStructs

from initkit.errors import InitkitError

log = logging.getLogger("initkit.elf")

DF_1_NODEFLIB = 0x800
# systemd's dlopen metadata: owner "FDO", this note type, a JSON array as descriptor.
DLOPEN_NOTE_OWNER = "FDO"
DLOPEN_NOTE_TYPE = 0x407C0C0A
DLOPEN_PRIORITIES = ("required", "recommended", "suggested")

_HEAD = 4096  # the ELF header and program headers nearly always fit in the first page


class ElfError(InitkitError):
    """A file that is not an ELF object, or a damaged one."""


@dataclass(frozen=True, slots=True)
class DlopenFeature:
    """One entry of a ``.note.dlopen`` note: a feature and the sonames that provide it."""

    feature: str
    description: str
    priority: str
    sonames: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """The loader-relevant facts of one ELF file. Strings are as stored in the file."""

    path: str
    elfclass: int  # 32 or 64
    little_endian: bool
    machine: str | int  # pyelftools' name, e.g. "EM_X86_64"; an int when unknown
    osabi: str | int  # e.g. "ELFOSABI_SYSV", "ELFOSABI_LINUX"
    abiversion: int
    type: str | int  # "ET_EXEC", "ET_DYN", ...
    flags: int  # e_flags (ARM float ABI, ...)
    interpreter: str | None
    dynamic: bool  # has PT_DYNAMIC
    needed: tuple[str, ...]
    soname: str | None
    rpath: str | None
    runpath: str | None
    flags_1: int
    dlopen: tuple[DlopenFeature, ...]
    # File ranges (offset, size) holding PT_INTERP and the dynamic string table, for
    # same-length path rewriting (see initbuilder.loader.nixstore).
    interp_range: tuple[int, int] | None = None
    dynstr_range: tuple[int, int] | None = None

    @property
    def nodeflib(self) -> bool:
        """DF_1_NODEFLIB: the loader skips the default directories for this object's needs."""
        return bool(self.flags_1 & DF_1_NODEFLIB)

    @property
    def abi(self) -> tuple[int, bool, str | int]:
        """What a loader compares before accepting a library: class, byte order, machine."""
        return (self.elfclass, self.little_endian, self.machine)


def is_elf(head: bytes) -> bool:
    """True when ``head`` starts with the ELF magic."""
    return head[:4] == b"\x7fELF"


def is_elf_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` opens (links followed) and starts with the ELF magic."""
    try:
        with open(path, "rb") as f:
            return is_elf(f.read(4))
    except OSError:
        return False


@cache
def _basic(little_endian: bool, elfclass: int) -> ELFStructs:
    structs = ELFStructs(little_endian=little_endian, elfclass=elfclass)
    structs.create_basic_structs()
    return structs


@cache
def _advanced(little_endian: bool, elfclass: int, e_type: str | int, machine: str | int,
              osabi: str | int) -> ELFStructs:
    structs = ELFStructs(little_endian=little_endian, elfclass=elfclass)
    structs.create_basic_structs()
    # Its hints say str, but unknown values stay ints, and ELFFile passes those itself.
    structs.create_advanced_structs(e_type, machine, osabi)  # type: ignore[arg-type]
    return structs


def read_elf(path: str) -> ElfInfo:
    """The loader-relevant facts of the ELF file at ``path``; ElfError when it is not one."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang; reading one then fails below.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ElfError(f"{path}: no such file") from None
    except PermissionError:
        raise ElfError(f"{path}: permission denied") from None
    try:
        return _parse(path, fd)
    except (ConstructError, ELFError, ValueError, IndexError, OverflowError) as exc:
        raise ElfError(f"{path}: damaged ELF file ({exc})") from None
    except OSError as exc:  # a directory, a FIFO, an I/O error
        raise ElfError(f"{path}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)


def _read(fd: int, offset: int, size: int, path: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ElfError(f"{path}: truncated ELF file (wanted {size} bytes at offset {offset})")
    return data


def _parse(path: str, fd: int) -> ElfInfo:
    head = os.pread(fd, _HEAD, 0)
    if not is_elf(head):
        raise ElfError(f"{path}: not an ELF file")
    if len(head) < 52 or head[4] not in (1, 2) or head[5] not in (1, 2):
        raise ElfError(f"{path}: damaged ELF header")
    elfclass = 32 if head[4] == 1 else 64
    little = head[5] == 1
    ehdr = _basic(little, elfclass).Elf_Ehdr.parse(head)
    ident = ehdr["e_ident"]
    st = _advanced(little, elfclass, ehdr["e_type"], ehdr["e_machine"], ident["EI_OSABI"])

    phsize = st.Elf_Phdr.sizeof()
    phoff, phnum = ehdr["e_phoff"], ehdr["e_phnum"]
    end = phoff + phsize * phnum
    table = head[phoff:end] if end <= len(head) else _read(fd, phoff, phsize * phnum, path)
    loads: list[tuple[int, int, int]] = []
    interp: str | None = None
    interp_range: tuple[int, int] | None = None
    dyn_at: tuple[int, int] | None = None
    notes: list[tuple[int, int]] = []
    for i in range(phnum):
        ph = st.Elf_Phdr.parse(table[i * phsize:(i + 1) * phsize])
        kind = ph["p_type"]
        if kind == "PT_LOAD":
            loads.append((ph["p_vaddr"], ph["p_filesz"], ph["p_offset"]))
        elif kind == "PT_INTERP":
            raw = _read(fd, ph["p_offset"], ph["p_filesz"], path)
            # Empty in separate debug files, whose segments keep only their headers.
            interp = os.fsdecode(raw.split(b"\0", 1)[0]) or None
            interp_range = (ph["p_offset"], ph["p_filesz"])
        elif kind == "PT_DYNAMIC":
            dyn_at = (ph["p_offset"], ph["p_filesz"])
        elif kind == "PT_NOTE":
            notes.append((ph["p_offset"], ph["p_filesz"]))

    tags: dict[str, int] = {}
    needed_at: list[int] = []
    if dyn_at is not None:
        dynsize = st.Elf_Dyn.sizeof()
        raw = _read(fd, dyn_at[0], dyn_at[1], path)
        for i in range(0, len(raw) - dynsize + 1, dynsize):
            entry = st.Elf_Dyn.parse(raw[i:i + dynsize])
            tag = entry["d_tag"]
            if tag == "DT_NULL":
                break
            if tag == "DT_NEEDED":
                needed_at.append(entry["d_val"])
            elif isinstance(tag, str) and tag not in tags:
                tags[tag] = entry["d_val"]

    strtab = b""
    dynstr_range: tuple[int, int] | None = None
    if "DT_STRTAB" in tags and "DT_STRSZ" in tags:
        offset = _vaddr_to_offset(loads, tags["DT_STRTAB"])
        if offset is None:
            raise ElfError(f"{path}: DT_STRTAB points outside every PT_LOAD segment")
        strtab = _read(fd, offset, tags["DT_STRSZ"], path)
        dynstr_range = (offset, tags["DT_STRSZ"])

    def string(index: int) -> str:
        if index >= len(strtab):
            raise ElfError(f"{path}: dynamic string index {index} outside DT_STRTAB")
        return os.fsdecode(strtab[index:strtab.index(b"\0", index)])

    def optional(tag: str) -> str | None:
        return string(tags[tag]) if tag in tags else None

    return ElfInfo(
        path=path,
        elfclass=elfclass,
        little_endian=little,
        machine=ehdr["e_machine"],
        osabi=ident["EI_OSABI"],
        abiversion=ident["EI_ABIVERSION"],
        type=ehdr["e_type"],
        flags=ehdr["e_flags"],
        interpreter=interp,
        dynamic=dyn_at is not None,
        needed=tuple(string(i) for i in needed_at),
        soname=optional("DT_SONAME"),
        rpath=optional("DT_RPATH"),
        runpath=optional("DT_RUNPATH"),
        flags_1=tags.get("DT_FLAGS_1", 0),
        dlopen=_dlopen_notes(fd, st, notes, path),
        interp_range=interp_range,
        dynstr_range=dynstr_range,
    )


def _vaddr_to_offset(loads: list[tuple[int, int, int]], addr: int) -> int | None:
    for vaddr, filesz, offset in loads:
        if vaddr <= addr < vaddr + filesz:
            return addr - vaddr + offset
    return None


def _dlopen_notes(fd: int, st: ELFStructs, notes: list[tuple[int, int]],
                  path: str) -> tuple[DlopenFeature, ...]:
    found: list[DlopenFeature] = []
    nhsize = st.Elf_Nhdr.sizeof()
    for offset, size in notes:
        data = os.pread(fd, size, offset)
        pos = 0
        while pos + nhsize <= len(data):
            nh = st.Elf_Nhdr.parse(data[pos:pos + nhsize])
            namesz, descsz = nh["n_namesz"], nh["n_descsz"]
            name_at = pos + nhsize
            desc_at = name_at + _align4(namesz)
            pos = desc_at + _align4(descsz)
            name = data[name_at:name_at + namesz].rstrip(b"\0")
            if name == DLOPEN_NOTE_OWNER.encode() and nh["n_type"] == DLOPEN_NOTE_TYPE:
                found.extend(parse_dlopen_json(data[desc_at:desc_at + descsz], path))
    return tuple(found)


def _align4(n: int) -> int:
    return (n + 3) & ~3


def parse_dlopen_json(desc: bytes, path: str) -> list[DlopenFeature]:
    """Decode one dlopen note descriptor; malformed entries are skipped with a warning."""
    try:
        doc = json.loads(desc.rstrip(b"\0").decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: ignoring a .note.dlopen note that is not JSON (%s)", path, exc)
        return []
    if not isinstance(doc, list):
        log.warning("%s: ignoring a .note.dlopen note that is not a JSON array", path)
        return []
    out: list[DlopenFeature] = []
    for item in doc:
        sonames = item.get("soname") if isinstance(item, dict) else None
        priority = item.get("priority", "recommended") if isinstance(item, dict) else None
        if (not isinstance(sonames, list) or not sonames
                or not all(isinstance(s, str) and s for s in sonames)
                or priority not in DLOPEN_PRIORITIES):
            log.warning("%s: ignoring a malformed .note.dlopen entry %r", path, item)
            continue
        assert isinstance(item, dict)
        out.append(DlopenFeature(
            feature=str(item.get("feature", "")),
            description=str(item.get("description", "")),
            priority=priority,
            sonames=tuple(sonames),
        ))
    return out


# -- whole ELF images in memory (kernel payloads, modules) ------------------------------
# Rarely read, so pyelftools' ELFFile is fine here; it stays in this module all the same.

@dataclass(frozen=True, slots=True)
class ElfNote:
    name: str
    type: int  # n_type, the number (pyelftools names the types it knows)
    desc: bytes


_NOTE_TYPE_NUMBERS = {name: number for name, number in
                      (*ENUM_NOTE_N_TYPE.items(), *ENUM_CORE_NOTE_N_TYPE.items())
                      if name != "_default_"}


def _note_type_number(kind: str | int) -> int:
    """n_type as its number: pyelftools names the types its enums know (NT_GNU_BUILD_ID),
    although its hints say str always."""
    return kind if isinstance(kind, int) else _NOTE_TYPE_NUMBERS[kind]


def _elffile(data: bytes, what: str) -> ELFFile:
    try:
        return ELFFile(io.BytesIO(data))
    except (ELFError, ConstructError) as exc:
        raise ElfError(f"{what} is not a valid ELF file ({exc})") from None


def image_section(data: bytes, name: str, what: str) -> bytes | None:
    """The bytes of section ``name`` of the ELF image ``data``, or None if it has none."""
    try:
        section = _elffile(data, what).get_section_by_name(name)
        return None if section is None else section.data()
    except (ELFError, ConstructError) as exc:
        raise ElfError(f"{what}: damaged section table ({exc})") from None


def image_notes(data: bytes, what: str) -> list[ElfNote]:
    """The notes in the PT_NOTE segments of the ELF image ``data``."""
    notes = []
    try:
        for segment in _elffile(data, what).iter_segments():
            if not isinstance(segment, NoteSegment):  # what pyelftools makes of PT_NOTE
                continue
            for note in segment.iter_notes():
                # n_desc is decoded for notes pyelftools knows; n_descdata is the raw bytes.
                raw = note["n_descdata"]
                if isinstance(raw, str):
                    raw = raw.encode("latin-1")
                notes.append(ElfNote(note["n_name"], _note_type_number(note["n_type"]),
                                     bytes(raw)))
    except (ELFError, ConstructError) as exc:
        raise ElfError(f"{what}: damaged notes ({exc})") from None
    return notes


def image_extent(data: bytes, what: str) -> int:
    """Bytes the ELF file proper occupies at the start of ``data``: headers, segments,
    sections and the section table (anything appended after it is not part of it)."""
    elf = _elffile(data, what)
    end: int = elf["e_shoff"] + elf["e_shnum"] * elf["e_shentsize"]
    end = max(end, elf["e_phoff"] + elf["e_phnum"] * elf["e_phentsize"])
    for segment in elf.iter_segments():
        end = max(end, segment["p_offset"] + segment["p_filesz"])
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOBITS":
            end = max(end, section["sh_offset"] + section["sh_size"])
    return min(end, len(data))


def image_machine(data: bytes) -> str | None:
    """pyelftools' name of the image's machine ("EM_X86_64"), or None if not ELF."""
    try:
        return str(_elffile(data, "image")["e_machine"])
    except ElfError:
        return None


def image_little_endian(data: bytes) -> bool:
    """True for an ELFDATA2LSB image."""
    return data[5:6] == b"\x01"
