"""initbuilder.loader.elf: what one ELF file says, on compiled fixtures and system files."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
from elf_fixtures import Builder

from initbuilder.loader.elf import (
    ElfError,
    image_notes,
    is_elf_file,
    parse_dlopen_json,
    read_elf,
)


def test_reads_what_the_loader_needs(build: Builder) -> None:
    root = build.root
    lib = build.lib("lib/libthing.so.1.2", soname="libthing.so.1", needed=["libm.so.6"],
                    rpath="/opt/r1:$ORIGIN", flags=["-Wl,-z,nodefaultlib"])
    exe = build.exe("bin/prog", needed=["libthing.so.1", "libz.so.1"], runpath="/opt/u")
    info = read_elf(str(lib))
    assert (info.elfclass, info.little_endian, info.machine) == (64, True, "EM_X86_64")
    assert info.type == "ET_DYN" and info.interpreter is None and info.dynamic
    assert info.soname == "libthing.so.1"
    assert info.needed == ("libm.so.6", "libc.so.6")
    assert (info.rpath, info.runpath) == ("/opt/r1:$ORIGIN", None)
    assert info.nodeflib
    prog = read_elf(str(exe))
    assert prog.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert prog.needed == ("libthing.so.1", "libz.so.1", "libc.so.6")  # in DT_NEEDED order
    assert (prog.rpath, prog.runpath) == (None, "/opt/u")
    assert not prog.nodeflib and prog.soname is None
    assert prog.interp_range is not None
    assert root.joinpath("bin/prog").read_bytes()[prog.interp_range[0]:][:27] == \
        b"/lib64/ld-linux-x86-64.so.2"


def test_32_bit_and_static_files(build: Builder) -> None:
    lib32 = build.lib("lib32/libx.so", flags=["-m32", "-nostdlib"])
    info = read_elf(str(lib32))
    assert (info.elfclass, info.machine) == (32, "EM_386")
    static = build.exe("bin/static", flags=["-static"])
    sinfo = read_elf(str(static))
    assert not sinfo.needed and sinfo.interpreter is None


def test_image_notes_give_the_note_type_as_its_number(build: Builder) -> None:
    # pyelftools names the types it knows: NT_GNU_BUILD_ID (3), NT_GNU_PROPERTY_TYPE_0 (5).
    exe = build.exe("bin/noted", flags=["-Wl,--build-id=sha1"])
    notes = image_notes(exe.read_bytes(), "bin/noted")
    build_ids = [note for note in notes if note.name == "GNU" and note.type == 3]
    assert len(build_ids) == 1 and len(build_ids[0].desc) == 20  # a SHA-1
    assert all(isinstance(note.type, int) for note in notes)


def test_system_files() -> None:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        pytest.skip("busybox is not installed")
    assert not read_elf(str(busybox)).needed
    libc = read_elf(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"))
    assert libc.soname == "libc.so.6" and "ld-linux-x86-64.so.2" in libc.needed


def test_non_elf_and_damaged_files_raise(tmp_path: Path) -> None:
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ElfError, match="not an ELF file"):
        read_elf(str(text))
    damaged = tmp_path / "damaged"
    damaged.write_bytes(Path("/bin/true").read_bytes()[:100])
    with pytest.raises(ElfError, match=r"damaged|truncated"):
        read_elf(str(damaged))
    with pytest.raises(ElfError, match="no such file"):
        read_elf(str(tmp_path / "absent"))
    with pytest.raises(ElfError, match="cannot read"):
        read_elf(str(tmp_path))


def test_a_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[str] = []

    def attempt() -> None:
        try:
            read_elf(str(fifo))
        except ElfError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    assert outcome and "cannot read" in outcome[0]


def test_dlopen_json_keeps_good_entries(caplog: pytest.LogCaptureFixture) -> None:
    good = parse_dlopen_json(b'[{"feature":"a","soname":["liba.so.1","liba.so.0"]}]\0\0', "x")
    assert good[0].priority == "recommended" and good[0].sonames == ("liba.so.1", "liba.so.0")
    mixed = parse_dlopen_json(b'[{"soname":[]},{"priority":"sometimes","soname":["b"]},'
                              b'{"priority":"suggested","soname":["c"]}]', "x")
    assert [f.sonames for f in mixed] == [("c",)]
    assert parse_dlopen_json(b"{not json", "x") == []
    assert "not JSON" in caplog.text


def test_is_elf_file_reads_the_magic_and_never_raises(tmp_path: Path) -> None:
    assert is_elf_file(os.path.realpath(sys.executable))
    (tmp_path / "script").write_text("#!/bin/sh\n")
    (tmp_path / "short").write_bytes(b"\x7fE")
    os.symlink("nowhere", tmp_path / "dangling")
    for name in ("script", "short", "dangling", "missing"):
        assert not is_elf_file(tmp_path / name), name
    assert not is_elf_file(tmp_path)  # a directory
