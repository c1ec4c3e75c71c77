"""Real system files against glibc's ldd: named programs, then every ELF of the system."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from elf_fixtures import Trace, host_is_x86_64_glibc, ours, parse_trace, run_ldd
from realparts import missing_part

from initbuilder.loader.closure import Resolver
from initbuilder.loader.elf import ElfError, is_elf_file, read_elf

SYSTEM_SETS = (("/usr/bin", None), ("/usr/sbin", None),
               ("/usr/lib/x86_64-linux-gnu", ".so"), ("/usr/lib/qemu", None))


LLVM_LIBRARY = ("/usr/lib/llvm-*/lib/libLLVM-*.so.1",
                "/usr/lib/x86_64-linux-gnu/libLLVM.so.*[0-9]")


def _first(*patterns: str) -> str:
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[-1]
    if any("/.pyenv/" in p for p in patterns):
        pytest.skip("no pyenv Python on this machine (only some machines have one)")
    missing_part(f"none of {patterns} is installed")


def _named_files() -> list[tuple[str, tuple[str, ...]]]:
    return [
        ("python3", ("/usr/bin/python3",)),
        ("pyenv python", ("/root/.pyenv/versions/3.11.7/bin/python3.11",
                          "/root/.pyenv/versions/*/bin/python3.*[0-9]")),
        ("busybox", ("/usr/bin/busybox", "/bin/busybox")),
        ("coreutils ls", ("/usr/bin/ls",)),
        ("coreutils sort", ("/usr/bin/sort",)),
        ("qemu", ("/usr/bin/qemu-system-x86_64",)),
        ("gconv module with RUNPATH $ORIGIN", ("/usr/lib/x86_64-linux-gnu/gconv/EUC-KR.so",)),
        ("LLVM tool", ("/usr/lib/llvm-*/bin/llvm-objdump",)),
        # LLVM 14 (Debian 12) names it libLLVM-14.so.1, LLVM 19 (Debian 13) libLLVM.so.19.1.
        ("LLVM library", LLVM_LIBRARY),
    ]


@pytest.mark.parametrize("what,patterns", _named_files(), ids=[n for n, _ in _named_files()])
def test_named_system_files_agree_with_ldd(what: str, patterns: tuple[str, ...]) -> None:
    host_is_x86_64_glibc()
    if not shutil.which("ldd"):
        missing_part("glibc's ldd is not installed")
    path = _first(*patterns)
    # ldd maps DT_NEEDED only; dlopen notes (Debian 13's systemd libraries carry them)
    # are a closure's extra, tested on their own below.
    closure = Resolver(dlopen="none").resolve(path)
    reference = run_ldd(path)
    mine = ours(closure)
    if reference.error:
        assert reference.error == "not a dynamic executable"
        assert not closure.libraries and not closure.missing
    assert mine.found == reference.found, mine.found ^ reference.found
    assert mine.missing == reference.missing
    if closure.interpreter is not None:
        assert closure.interpreter.path is not None
        assert os.path.realpath(closure.interpreter.path) in reference.found


def _system_elves() -> list[str]:
    files: list[str] = []
    for top, suffix in SYSTEM_SETS:
        for directory, _, names in os.walk(top):
            for name in sorted(names):
                if suffix and suffix not in name:
                    continue
                path = os.path.join(directory, name)
                if not os.path.islink(path) and os.path.isfile(path) and is_elf_file(path):
                    files.append(path)
            if not suffix:
                break  # the program directories are flat
    return files


def _ldd_batch(files: list[str]) -> dict[str, Trace]:
    proc = subprocess.run(["ldd", *files], capture_output=True, text=True, timeout=600)
    blocks: dict[str, list[str]] = {}
    current = files[0] if len(files) == 1 else ""
    for line in proc.stdout.splitlines():
        if not line.startswith("\t") and line.endswith(":") and len(files) > 1:
            current = line[:-1]
            blocks[current] = []
        else:
            blocks.setdefault(current, []).append(line)
    traces: dict[str, Trace] = {}
    for file, lines in blocks.items():
        found, missing = parse_trace("\n".join(lines))
        static = any("not a dynamic executable" in x or "statically linked" in x
                     for x in lines)
        traces[file] = Trace(found, missing, "not a dynamic executable" if static else "")
    return traces


@pytest.mark.slow
def test_every_system_elf_agrees_with_ldd() -> None:
    """100% agreement, or the difference is one docs/closure.md explains as ldd's."""
    host_is_x86_64_glibc()
    if not shutil.which("ldd"):
        missing_part("glibc's ldd is not installed")
    files = _system_elves()
    assert len(files) > 100
    batches = [files[i:i + 48] for i in range(0, len(files), 48)]
    references: dict[str, Trace] = {}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for result in pool.map(_ldd_batch, batches):
            references.update(result)
    resolver = Resolver(dlopen="none")  # as ldd: DT_NEEDED only
    unexplained: list[str] = []
    explained = 0
    for file in files:
        reference = references.get(file)
        assert reference is not None, f"ldd printed nothing for {file}"
        try:
            closure = resolver.resolve(file)
        except ElfError as exc:
            unexplained.append(f"{file}: {exc}")
            continue
        mine = ours(closure)
        if reference.error:
            if not closure.libraries and not closure.missing:
                continue  # static on both sides
            if closure.main.info and closure.main.info.interpreter and any(
                    m.reason.startswith("interpreter") for m in closure.missing):
                explained += 1  # ldd cannot trace without the program's loader
                continue
        if (mine.found, mine.missing) != (reference.found, reference.missing):
            unexplained.append(f"{file}: ours-only {mine.found - reference.found}, "
                               f"ldd-only {reference.found - mine.found}, missing ours "
                               f"{mine.missing} ldd {reference.missing}")
    assert not unexplained, "\n".join(unexplained[:20])
    print(f"{len(files)} ELF files agree with ldd ({explained} explained differences)")


def test_packaging_a_relocatable_llvm_tree_keeps_runpath_origin(tmp_path: Path) -> None:
    """An LLVM tool copied with its library next to it, RUNPATH $ORIGIN/../lib."""
    library = _first(*LLVM_LIBRARY)
    gcc = shutil.which("gcc")
    if gcc is None:
        missing_part("gcc is not installed")
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib").mkdir()
    shutil.copy2(os.path.realpath(library), tmp_path / "lib" / os.path.basename(library))
    source = tmp_path / "main.c"
    source.write_text("int main(void) { return 0; }\n")
    exe = tmp_path / "bin/tool"
    subprocess.run([gcc, "-o", exe, source, "-Wl,--no-as-needed", "-Wl,--enable-new-dtags",
                    "-Wl,-rpath,$ORIGIN/../lib", str(tmp_path / "lib" / os.path.basename(library))],
                   check=True, capture_output=True)
    closure = Resolver().resolve(str(exe))
    llvm = next(lib for lib in closure.libraries if lib.names[0].startswith("libLLVM"))
    assert llvm.path == f"{tmp_path}/bin/../lib/{os.path.basename(library)}"
    assert ours(closure).found == run_ldd(exe).found


def test_systemd_dlopen_notes_are_followed_beyond_ldd() -> None:
    """libsystemd (Debian 13's, systemd >= 256) names the libraries it dlopen()s in
    .note.dlopen; the closure brings the recommended ones, ldd does not."""
    host_is_x86_64_glibc()
    library = _first("/usr/lib/x86_64-linux-gnu/libsystemd.so.0")
    notes = read_elf(library).dlopen
    if not notes:
        pytest.skip(f"{library} carries no .note.dlopen (systemd before 256, Debian 12)")
    plain = ours(Resolver(dlopen="none").resolve(library)).found
    with_notes = ours(Resolver().resolve(library)).found
    assert plain == run_ldd(library).found
    extra = {os.path.basename(p).split(".so")[0] for p in with_notes - plain}
    recommended = {n.split(".so")[0] for note in notes if note.priority in
                   ("required", "recommended") for n in note.sonames}
    assert extra and extra <= recommended, (extra, recommended)
