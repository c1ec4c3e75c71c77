"""Each search rule of ld.so on a tiny compiled fixture, checked against the real loader.

The oracle runs the fixture with LD_TRACE_LOADED_OBJECTS=1, so glibc's loader, started
by the kernel as for a real run, reports what it maps. Every test also asserts the
specific file the rule must pick, so a test cannot pass by both sides being wrong.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from elf_fixtures import (
    DT_RUNPATH,
    Builder,
    add_dynamic_tag,
    ours,
    run_ldd,
    run_traced,
    set_machine,
)

from initbuilder.loader.closure import Closure, Resolver, resolve_closure
from initbuilder.loader.elf import read_elf
from initbuilder.loader.ldso import active_hwcaps


def paths(closure: Closure, name: str) -> str:
    """The path the closure found for the library requested as ``name``."""
    for lib in closure.libraries:
        if name in lib.names:
            assert lib.path is not None  # only the vDSO has none
            return lib.path
    raise AssertionError(f"{name} not in the closure: {closure.to_json()}")


def agree(program: Path) -> Closure:
    """Resolve ``program`` and check it against the loader; return the closure."""
    closure = resolve_closure(str(program))
    trace = run_traced(program)
    mine = ours(closure)
    assert mine.found == trace.found, (mine.found ^ trace.found, trace.error)
    assert mine.missing == trace.missing
    return closure


def test_rpath_is_inherited_through_intermediate_libraries(build: Builder) -> None:
    root = build.root
    build.lib("d/libd.so")  # only in the program's RPATH
    build.lib("e/libe.so")  # only in libb's RPATH
    build.lib("c/libc1.so", needed=["libd.so", "libe.so"])  # no paths of its own
    build.lib("b/libb.so", needed=["libc1.so"], rpath=f"{root}/c:{root}/e")
    exe = build.exe("bin/prog", needed=["libb.so"], rpath=f"{root}/b:{root}/d")
    closure = agree(exe)
    assert paths(closure, "libd.so") == f"{root}/d/libd.so"
    assert paths(closure, "libe.so") == f"{root}/e/libe.so"
    lib_d = next(lib for lib in closure.libraries if lib.path == f"{root}/d/libd.so")
    assert lib_d.kind == "rpath" and lib_d.rule == f"RPATH of {exe}"
    assert lib_d.chain() == [str(exe), "libb.so", "libc1.so", "libd.so"]


def test_runpath_is_not_inherited(build: Builder) -> None:
    root = build.root
    build.lib("c/libc2.so")
    build.lib("b/libb.so", needed=["libc2.so"])
    exe = build.exe("bin/prog", needed=["libb.so"], runpath=f"{root}/b:{root}/c")
    closure = agree(exe)
    assert [m.name for m in closure.missing] == ["libc2.so"]
    assert closure.missing[0].chain() == f"{exe} -> libb.so -> libc2.so"


def test_a_loader_with_runpath_skips_the_whole_rpath_chain(build: Builder) -> None:
    root = build.root
    build.lib("c/libc3.so")
    build.lib("b/libb.so", needed=["libc3.so"], runpath=f"{root}/nowhere")
    exe = build.exe("bin/prog", needed=["libb.so"], rpath=f"{root}/b:{root}/c")
    closure = agree(exe)
    assert [m.name for m in closure.missing] == ["libc3.so"]


def test_rpath_is_ignored_when_the_same_object_has_runpath(build: Builder) -> None:
    root = build.root
    build.lib("r/libonlyrpath.so")
    build.lib("u/libonlyrunpath.so")
    exe = build.exe("bin/prog", needed=["libonlyrunpath.so", "libonlyrpath.so"],
                    rpath=f"{root}/r:{root}/u")
    # Old linkers wrote both tags; make RUNPATH name the second element only.
    add_dynamic_tag(exe, DT_RUNPATH, f"{root}/u")
    info = read_elf(str(exe))
    assert info.rpath == f"{root}/r:{root}/u" and info.runpath == f"{root}/u"
    closure = agree(exe)
    assert paths(closure, "libonlyrunpath.so") == f"{root}/u/libonlyrunpath.so"
    assert [m.name for m in closure.missing] == ["libonlyrpath.so"]


def test_origin_of_a_symlinked_program_and_of_a_library_found_through_a_link(
        build: Builder) -> None:
    root = build.root
    # The program's $ORIGIN is its resolved directory, as /proc/self/exe gives it.
    build.lib("real/lib/libx.so")
    build.lib("links/lib/libx.so")
    build.exe("real/bin/prog", needed=["libx.so", "liby.so"],
                    runpath="$ORIGIN/../lib:" + f"{root}/found")
    (root / "links/bin").mkdir(parents=True)
    os.symlink("../../real/bin/prog", root / "links/bin/prog")
    # A library's $ORIGIN is the directory it was found in, the link not resolved.
    build.lib("elsewhere/liby.so", needed=["libz1.so"], runpath="$ORIGIN/sub")
    build.lib("elsewhere/sub/libz1.so")
    build.lib("found/sub/libz1.so")
    (root / "found").mkdir(exist_ok=True)
    os.symlink("../elsewhere/liby.so", root / "found/liby.so")

    linked = root / "links/bin/prog"
    closure = agree(linked)
    assert paths(closure, "libx.so") == f"{root}/real/bin/../lib/libx.so"
    assert paths(closure, "libz1.so") == f"{root}/found/sub/libz1.so"
    # ldd runs "ld.so links/bin/prog", where $ORIGIN is not resolved: its quirk.
    assert os.path.realpath(root / "links/lib/libx.so") in run_ldd(linked).found


def test_lib_platform_and_brace_forms(build: Builder) -> None:
    root = build.root
    lib_values = ["lib", "lib64", "lib/x86_64-linux-gnu", "lib/i386-linux-gnu"]
    for value in lib_values:
        build.lib(f"l/{value}/libl.so")
        build.lib(f"c/{value}/libcurly.so")
    for value in ["x86_64", "haswell", "xeon_phi", "i686"]:
        build.lib(f"p/{value}/libp.so")
    build.lib("u/$FOO/libu.so")  # an unknown $NAME stays literal, as in glibc
    exe = build.exe("bin/prog", needed=["libl.so", "libp.so", "libcurly.so", "libu.so"],
                    runpath=f"{root}/l/$LIB:{root}/p/$PLATFORM:{root}/c/${{LIB}}:"
                            f"{root}/u/$FOO:{root}/nothing/$LIBX")
    closure = agree(exe)
    facts = Resolver().tree.facts(read_elf(str(exe)), "/lib64/ld-linux-x86-64.so.2")
    assert paths(closure, "libl.so") == f"{root}/l/{facts.lib}/libl.so"
    assert paths(closure, "libp.so") == f"{root}/p/{facts.platform}/libp.so"
    assert paths(closure, "libcurly.so") == f"{root}/c/{facts.lib}/libcurly.so"
    assert paths(closure, "libu.so") == f"{root}/u/$FOO/libu.so"


def test_nodefaultlib_skips_default_directories_for_that_objects_needs(
        build: Builder) -> None:
    root = build.root
    build.lib("b/libnodef.so", needed=["libz.so.1"], flags=["-Wl,-z,nodefaultlib"])
    exe = build.exe("bin/prog", needed=["libnodef.so"], runpath=f"{root}/b")
    assert read_elf(str(root / "b/libnodef.so")).nodeflib
    closure = agree(exe)
    assert [m.name for m in closure.missing] == ["libz.so.1"]
    # Without the flag the same library is found in the cache.
    build.lib("b2/libdef.so", needed=["libz.so.1"])
    exe2 = build.exe("bin/prog2", needed=["libdef.so"], runpath=f"{root}/b2")
    assert not agree(exe2).missing


def test_soname_of_a_loaded_object_satisfies_a_later_request(build: Builder) -> None:
    root = build.root
    build.lib("a/libalias.so", soname="libalias.so.7")  # no file named libalias.so.7
    build.lib("b/libuser.so", needed=["libalias.so.7"])
    exe = build.exe("bin/prog", needed=["libalias.so", "libuser.so"],
                    runpath=f"{root}/a:{root}/b")
    closure = agree(exe)
    alias = next(lib for lib in closure.libraries if lib.path == f"{root}/a/libalias.so")
    assert alias.names == ["libalias.so", "libalias.so.7"]
    assert [n.label for n in alias.needed_by] == [str(exe), f"{root}/b/libuser.so"]
    assert not closure.missing


def test_needed_with_origin_and_dotdot_is_opened_as_a_path(build: Builder) -> None:
    root = build.root
    build.lib("lib/libq.so", soname="$ORIGIN/../lib/libq.so")
    exe = build.exe("bin/prog", needed=["$ORIGIN/../lib/libq.so"])
    assert read_elf(str(exe)).needed[0] == "$ORIGIN/../lib/libq.so"
    closure = agree(exe)
    lib = next(lib for lib in closure.libraries if lib.kind == "path")
    assert lib.path == f"{root}/bin/../lib/libq.so"


def test_wrong_class_and_wrong_machine_candidates_are_skipped(build: Builder) -> None:
    root = build.root
    build.lib("w32/libw.so", flags=["-m32", "-nostdlib"])
    arm = build.lib("warm/libw.so")
    set_machine(arm, 183)  # EM_AARCH64
    build.lib("right/libw.so")
    exe = build.exe("bin/prog", needed=["libw.so"],
                    runpath=f"{root}/w32:{root}/warm:{root}/right")
    assert read_elf(str(root / "w32/libw.so")).elfclass == 32
    closure = agree(exe)
    assert paths(closure, "libw.so") == f"{root}/right/libw.so"


def test_a_non_elf_candidate_stops_the_loader(build: Builder) -> None:
    root = build.root
    (root / "bad").mkdir()
    (root / "bad/libbad.so").write_text("not a library at all, just text\n")
    build.lib("good/libbad.so")
    exe = build.exe("bin/prog", needed=["libbad.so"], runpath=f"{root}/bad:{root}/good")
    closure = resolve_closure(str(exe))
    assert [m.name for m in closure.missing] == ["libbad.so"]
    assert "not an ELF file" in closure.missing[0].reason
    assert "error while loading shared libraries" in run_traced(exe).error


def test_glibc_hwcaps_subdirectories_and_the_baseline_copy(build: Builder) -> None:
    root = build.root
    for level in ["x86-64-v2", "x86-64-v3", "x86-64-v4"]:
        build.lib(f"h/glibc-hwcaps/{level}/libh.so")
    build.lib("h/libh.so")
    exe = build.exe("bin/prog", needed=["libh.so"], runpath=f"{root}/h")
    closure = agree(exe)
    lib = next(lib for lib in closure.libraries if "libh.so" in lib.names)
    levels = active_hwcaps(read_elf(str(exe)))
    if levels:
        assert lib.path == f"{root}/h/glibc-hwcaps/{levels[0]}/libh.so"
        assert lib.baseline == f"{root}/h/libh.so"
    else:
        assert lib.path == f"{root}/h/libh.so" and lib.baseline is None


def test_missing_library_names_the_chain(build: Builder) -> None:
    root = build.root
    build.lib("b/libmid.so", needed=["libnothere.so.3"])
    exe = build.exe("bin/prog", needed=["libmid.so"], runpath=f"{root}/b")
    closure = agree(exe)
    assert [m.chain() for m in closure.missing] == [f"{exe} -> libmid.so -> libnothere.so.3"]


def test_library_path_comes_after_rpath_and_before_runpath(build: Builder) -> None:
    root = build.root
    for where in ("r", "llp", "u"):
        build.lib(f"{where}/liborder.so")
        build.lib(f"{where}/libsecond.so")
    exe_r = build.exe("bin/prog_r", needed=["liborder.so"], rpath=f"{root}/r")
    exe_u = build.exe("bin/prog_u", needed=["liborder.so"], runpath=f"{root}/u")
    for exe, expected in ((exe_r, "r"), (exe_u, "llp")):
        closure = resolve_closure(str(exe), library_path=[f"{root}/llp"])
        trace = run_traced(exe, {"LD_LIBRARY_PATH": f"{root}/llp"})
        assert ours(closure).found == trace.found
        assert paths(closure, "liborder.so") == f"{root}/{expected}/liborder.so"


def test_dst_in_library_path_uses_the_programs_origin(build: Builder) -> None:
    build.lib("bin/sub/liborig.so")
    exe = build.exe("bin/prog", needed=["liborig.so"])
    closure = resolve_closure(str(exe), library_path=["$ORIGIN/sub"])
    trace = run_traced(exe, {"LD_LIBRARY_PATH": "$ORIGIN/sub"})
    assert ours(closure).found == trace.found
    assert paths(closure, "liborig.so") == f"{build.root}/bin/sub/liborig.so"


def test_same_file_under_two_names_is_loaded_once(build: Builder) -> None:
    root = build.root
    build.lib("one/libsame.so", soname="libsame.so")
    (root / "two").mkdir()
    os.symlink(f"{root}/one/libsame.so", root / "two/libsame-link.so")
    build.lib("two/libother.so", needed=["libsame-link.so"], runpath="$ORIGIN")
    exe = build.exe("bin/prog", needed=["libsame.so", "libother.so"],
                    runpath=f"{root}/one:{root}/two")
    closure = agree(exe)
    same = [lib for lib in closure.libraries if "libsame.so" in lib.names]
    assert len(same) == 1 and same[0].names == ["libsame.so", "libsame-link.so"]


@pytest.mark.parametrize("level,expected", [
    ("none", set()),
    ("required", {"libreq.so"}),
    ("recommended", {"libreq.so", "librec2.so", "libdep.so"}),
    ("suggested", {"libreq.so", "librec2.so", "libdep.so", "libsug.so"}),
])
def test_dlopen_notes(build: Builder, level: str, expected: set[str]) -> None:
    root = build.root
    for name in ("libreq.so", "librec2.so", "libsug.so", "libdep.so"):
        deps = ["libdep.so"] if name == "librec2.so" else []
        build.lib(f"plugins/{name}", needed=deps, runpath="$ORIGIN" if deps else None)
    notes = ('[{"feature":"core","description":"needed","priority":"required",'
             '"soname":["libreq.so"]},'
             '{"feature":"fast","priority":"recommended",'
             '"soname":["librec1.so","librec2.so"]},'
             '{"feature":"extra","priority":"suggested","soname":["libsug.so"]},'
             '{"feature":"absent","priority":"suggested","soname":["libnever.so"]}]')
    exe = build.exe("bin/prog", runpath=f"{root}/plugins", source=_note_program(notes))
    info = read_elf(str(exe))
    assert [f.feature for f in info.dlopen] == ["core", "fast", "extra", "absent"]
    assert info.dlopen[1].sonames == ("librec1.so", "librec2.so")
    closure = resolve_closure(str(exe), dlopen=level)
    found = {os.path.basename(lib.path) for lib in closure.libraries
             if lib.path is not None and lib.path.startswith(str(root))}
    assert found == expected
    assert not closure.missing
    if level == "suggested":
        assert [u.feature.feature for u in closure.unmet] == ["absent"]


def test_a_required_dlopen_library_that_is_absent_is_missing(build: Builder) -> None:
    notes = '[{"feature":"core","priority":"required","soname":["libgone.so.1"]}]'
    exe = build.exe("bin/prog", source=_note_program(notes))
    closure = resolve_closure(str(exe), dlopen="required")
    assert [m.name for m in closure.missing] == ["libgone.so.1"]
    assert "dlopen feature 'core'" in closure.missing[0].reason


def _note_program(json_text: str) -> str:
    desc = json_text.encode() + b"\0"
    desc += b"\0" * (-len(desc) % 4)
    literal = "".join(f"\\x{b:02x}" for b in desc)
    return (
        "#include <stdint.h>\n"
        "struct note { uint32_t namesz, descsz, type; char name[4]; "
        f"char desc[{len(desc)}]; }};\n"
        '__attribute__((used, section(".note.dlopen"), aligned(4)))\n'
        f'static const struct note dlopen_note = {{ 4, {len(desc)}, 0x407c0c0a, "FDO", '
        f'"{literal}" }};\n'
        "int main(void) { return 0; }\n"
    )


def test_a_shared_object_given_directly_like_ldd(build: Builder) -> None:
    build.lib("lib/libinner.so")
    outer = build.lib("lib/libouter.so", needed=["libinner.so", "libc.so.6"],
                      runpath="$ORIGIN")
    closure = resolve_closure(str(outer))
    assert closure.interpreter is None
    assert ours(closure).found == run_ldd(outer).found
    names = {lib.names[0] for lib in closure.libraries}
    assert {"libinner.so", "libc.so.6", "ld-linux-x86-64.so.2"} <= names


def test_static_program_has_no_closure(build: Builder) -> None:
    exe = build.exe("bin/static", flags=["-static"])
    closure = resolve_closure(str(exe))
    assert closure.interpreter is None and not closure.libraries and not closure.missing
    assert "not a dynamic executable" in run_ldd(exe).error


def test_resolving_does_not_run_anything(build: Builder, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    exe = build.exe("bin/prog", source=(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void touch(void) {\n"
        f'  FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n'
        "int main(void) { return 0; }\n"))
    resolve_closure(str(exe))
    assert not marker.exists()
    subprocess.run([str(exe)], check=True)
    assert marker.exists()  # the fixture does write it when it runs
