"""Tiny ELF fixtures compiled with gcc, and the real loader as the oracle.

Programs and libraries link against *stubs*: throwaway libraries that only carry the
SONAME a DT_NEEDED entry should name. What the loader finds at run time is then laid
out freely, which is what the search-rule tests need.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from realparts import missing_part

from initbuilder.loader.closure import Closure

DT_RPATH = 15
DT_RUNPATH = 29


def host_is_x86_64_glibc() -> None:
    if os.uname().machine != "x86_64" or not os.path.exists("/lib64/ld-linux-x86-64.so.2"):
        missing_part("these fixtures need an x86-64 glibc host")


class Builder:
    """Compiles fixtures below ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stubs: dict[str, Path] = {}
        self._count = 0

    def path(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def stub(self, soname: str) -> Path:
        """A library whose only job is to make the linker record DT_NEEDED ``soname``."""
        if soname not in self._stubs:
            out = self.root / ".stubs" / str(len(self._stubs)) / "libstub.so"
            out.parent.mkdir(parents=True)
            self._compile(out, "int initkit_stub;\n", ["-shared", "-fPIC", "-nostdlib",
                                                     f"-Wl,-soname,{soname}"])
            self._stubs[soname] = out
        return self._stubs[soname]

    def lib(self, rel: str, *, soname: str | None = None, needed: Sequence[str] = (),
            rpath: str | None = None, runpath: str | None = None,
            flags: Sequence[str] = (), source: str = "") -> Path:
        """A shared library at ``rel``; SONAME defaults to its file name."""
        out = self.path(rel)
        soname = out.name if soname is None else soname
        args = ["-shared", "-fPIC", *(["-Wl,-soname," + soname] if soname else [])]
        self._count += 1
        code = source or f'const char initkit_fixture_{self._count}[] = "{rel}";\n'
        self._compile(out, code, [*args, *self._links(needed, rpath, runpath), *flags])
        return out

    def exe(self, rel: str, *, needed: Sequence[str] = (), rpath: str | None = None,
            runpath: str | None = None, flags: Sequence[str] = (), source: str = "") -> Path:
        """A PIE program at ``rel`` needing ``needed`` (plus libc)."""
        out = self.path(rel)
        code = source or "int main(void) { return 0; }\n"
        self._compile(out, code, [*self._links(needed, rpath, runpath), *flags])
        return out

    def _links(self, needed: Iterable[str], rpath: str | None,
               runpath: str | None) -> list[str]:
        args = ["-Wl,--no-as-needed", "-Wl,--allow-shlib-undefined"]
        args += [str(self.stub(name)) for name in needed]
        if rpath is not None:
            args += ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}"]
        if runpath is not None:
            args += ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}"]
        return args

    def _compile(self, out: Path, code: str, args: list[str]) -> None:
        src = out.with_name(out.name + ".c")
        src.write_text(code)
        proc = subprocess.run(["gcc", "-o", str(out), str(src), *args],
                              capture_output=True, text=True)
        src.unlink()
        if proc.returncode != 0:
            raise AssertionError(f"gcc failed for {out}:\n{proc.stderr}")


def add_dynamic_tag(path: Path, tag: int, string: str) -> None:
    """Turn the first spare DT_NULL of ``path`` into ``tag`` pointing at ``string``, which
    must already be in .dynstr (a suffix of another string will do)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        dynamic = elf.get_section_by_name(".dynamic")
        dynstr = elf.get_section_by_name(".dynstr")
        assert dynamic is not None and dynstr is not None, f"{path} is not dynamically linked"
        strings = dynstr.data()
        index = strings.index(string.encode() + b"\0")
        offset, size = dynamic["sh_offset"], dynamic["sh_size"]
    data = bytearray(path.read_bytes())
    nulls = [i for i in range(offset, offset + size, 16)
             if struct.unpack_from("<qQ", data, i) == (0, 0)]
    if len(nulls) < 2:
        raise AssertionError(f"{path}: no spare DT_NULL to patch")
    struct.pack_into("<qQ", data, nulls[0], tag, index)
    path.write_bytes(bytes(data))


def set_machine(path: Path, machine: int) -> None:
    """Patch e_machine (e.g. 183, aarch64): a library of another machine, same class."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 18, machine)
    path.write_bytes(bytes(data))


@dataclass
class Trace:
    """What the real loader reported: realpaths found, names not found, a fatal error."""

    found: set[str]
    missing: set[str]
    error: str


def parse_trace(text: str, realpath: Callable[[str], str] = os.path.realpath
                ) -> tuple[set[str], set[str]]:
    """Realpaths of what a trace found and the names it did not find."""
    found: set[str] = set()
    missing: set[str] = set()
    for line in text.splitlines():
        item = line.strip()
        if not line.startswith("\t") or "statically linked" in item:
            continue
        if item.endswith("=> not found"):
            missing.add(item.split()[0])
        elif "=>" in item:
            target = item.split("=>", 1)[1].rsplit(" (", 1)[0].strip()
            if target:
                found.add(realpath(target))
        elif item.startswith("/"):
            found.add(realpath(item.rsplit(" (", 1)[0]))
    return found, missing


def run_traced(program: Path | str, env: dict[str, str] | None = None) -> Trace:
    """Execute ``program`` with LD_TRACE_LOADED_OBJECTS=1: the loader, started by the
    kernel exactly as for a real run, prints what it maps and stops."""
    environ = {"PATH": "/usr/bin:/bin", "LD_TRACE_LOADED_OBJECTS": "1", **(env or {})}
    proc = subprocess.run([str(program)], env=environ, capture_output=True, text=True,
                          timeout=30)
    found, missing = parse_trace(proc.stdout)
    return Trace(found, missing, proc.stderr.strip() if proc.returncode else "")


def run_ldd(file: Path | str) -> Trace:
    """glibc's ldd on one file (it runs ``ld.so FILE`` in trace mode)."""
    proc = subprocess.run(["ldd", str(file)], capture_output=True, text=True, timeout=60)
    found, missing = parse_trace(proc.stdout)
    error = proc.stderr.strip() if proc.returncode else ""
    if "not a dynamic executable" in proc.stdout + proc.stderr:
        error = error or "not a dynamic executable"
    return Trace(found, missing, error)


def ours(closure: Closure) -> Trace:
    """Our closure in the oracle's terms: realpaths of everything but the main file."""
    found = {os.path.realpath(obj.path) for obj in closure.objects()[1:] if obj.path}
    missing = {m.name for m in closure.missing}
    return Trace(found, missing, "")


def host_libc_tree(root: Path) -> Path:
    """A merged-usr tree at ``root`` holding the host's loader and libc, with the
    loader's lib64 link absolute (followed on the host it would leave the tree)."""
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (root / "usr/lib64").mkdir(parents=True)
    for name in ("ld-linux-x86-64.so.2", "libc.so.6"):
        shutil.copy2(os.path.realpath(f"/lib/x86_64-linux-gnu/{name}"), libdir / name)
    os.symlink("usr/lib", root / "lib")
    os.symlink("usr/lib64", root / "lib64")
    os.symlink("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
               root / "usr/lib64/ld-linux-x86-64.so.2")
    return root
