"""What a glibc dynamic loader knows about itself, found without running it.

For each ABI (class, byte order, machine): its usual PT_INTERP, its ld.so.cache flags,
``$PLATFORM`` and the vDSO names. The trusted system directories (and so ``$LIB``) are read
from the loader file itself, where glibc stores them as one string of NUL-separated
directories; a table is the fallback when no loader file is at hand.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass

from initbuilder.loader.elf import ElfInfo

# ld.so.cache entry flags (glibc's ldconfig.h): the library type in the low byte,
# the ABI variant in the high byte.
FLAG_ELF = 0x0001
FLAG_ELF_LIBC6 = 0x0003
FLAG_X8664_LIB64 = 0x0300
FLAG_S390_LIB64 = 0x0400
FLAG_POWERPC_LIB64 = 0x0500
FLAG_X8664_LIBX32 = 0x0800
FLAG_ARM_LIBHF = 0x0900
FLAG_AARCH64_LIB64 = 0x0A00
FLAG_ARM_LIBSF = 0x0B00
FLAG_RISCV_FLOAT_ABI_DOUBLE = 0x1000

EF_ARM_ABI_FLOAT_HARD = 0x400

# glibc's x86-64 ISA levels (sysdeps/x86/get-isa-level.h) as /proc/cpuinfo spells the
# features; "abm" is LZCNT, "pni" is SSE3, "lahf_lm" is LAHF/SAHF in 64-bit mode.
_X86_64_LEVELS = (
    ("x86-64-v2", {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}),
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
)

# The system directory string inside ld.so: two or more "/dir/" entries NUL-separated.
_SYSTEM_DIRS = re.compile(rb"(?:/[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]+)*/\0){2,}")
# The cache it reads: "/etc/ld.so.cache", or under its own prefix (Nix's glibc).
_CACHE_PATH = re.compile(rb"\0(/[A-Za-z0-9_.+/-]*/ld\.so\.cache)\0")
DEFAULT_CACHE = "/etc/ld.so.cache"


@dataclass(frozen=True)
class _Abi:
    interpreter: str
    multiarch: str
    libdir: str
    cache_flag: int
    platform: str | None
    vdso: tuple[str, ...] = ("linux-vdso.so.1",)
    extra_cache_flags: tuple[int, ...] = ()


def _abi_table(info: ElfInfo) -> _Abi | None:
    machine, cls, little = info.machine, info.elfclass, info.little_endian
    if machine == "EM_X86_64" and cls == 64:
        return _Abi("/lib64/ld-linux-x86-64.so.2", "x86_64-linux-gnu", "lib64",
                    FLAG_X8664_LIB64 | FLAG_ELF_LIBC6, "x86_64")
    if machine == "EM_X86_64" and cls == 32:
        return _Abi("/libx32/ld-linux-x32.so.2", "x86_64-linux-gnux32", "libx32",
                    FLAG_X8664_LIBX32 | FLAG_ELF_LIBC6, "x86_64")
    if machine == "EM_386":
        return _Abi("/lib/ld-linux.so.2", "i386-linux-gnu", "lib", FLAG_ELF_LIBC6, "i686",
                    ("linux-gate.so.1",), (FLAG_ELF,))
    if machine == "EM_AARCH64" and cls == 64:
        name = "ld-linux-aarch64.so.1" if little else "ld-linux-aarch64_be.so.1"
        return _Abi(f"/lib/{name}", "aarch64-linux-gnu", "lib64",
                    FLAG_AARCH64_LIB64 | FLAG_ELF_LIBC6, "aarch64")
    if machine == "EM_ARM":
        if info.flags & EF_ARM_ABI_FLOAT_HARD:
            return _Abi("/lib/ld-linux-armhf.so.3", "arm-linux-gnueabihf", "lib",
                        FLAG_ARM_LIBHF | FLAG_ELF_LIBC6, None)
        return _Abi("/lib/ld-linux.so.3", "arm-linux-gnueabi", "lib",
                    FLAG_ARM_LIBSF | FLAG_ELF_LIBC6, None)
    if machine == "EM_RISCV" and cls == 64:
        return _Abi("/lib/ld-linux-riscv64-lp64d.so.1", "riscv64-linux-gnu", "lib64",
                    FLAG_RISCV_FLOAT_ABI_DOUBLE | FLAG_ELF_LIBC6, None)
    if machine == "EM_PPC64" and cls == 64:
        name = "ld64.so.2" if little else "ld64.so.1"
        return _Abi(f"/lib64/{name}", "powerpc64le-linux-gnu" if little else
                    "powerpc64-linux-gnu", "lib64", FLAG_POWERPC_LIB64 | FLAG_ELF_LIBC6, None,
                    ("linux-vdso64.so.1",))
    if machine == "EM_S390" and cls == 64:
        return _Abi("/lib/ld64.so.1", "s390x-linux-gnu", "lib64",
                    FLAG_S390_LIB64 | FLAG_ELF_LIBC6, None, ("linux-vdso64.so.1",))
    return None


@dataclass(frozen=True)
class LoaderFacts:
    """The search-relevant constants of the loader that would load a given object."""

    interpreter: str | None  # the usual PT_INTERP for this ABI
    system_dirs: tuple[str, ...]  # trusted directories, each ending in "/"
    lib: str  # the value of $LIB
    platform: str | None  # the value of $PLATFORM (None: elements using it are dropped)
    hwcaps: tuple[str, ...]  # active glibc-hwcaps subdirectories, best first
    cache_flags: frozenset[int]  # ld.so.cache entry flags this loader accepts
    vdso: tuple[str, ...]  # names the kernel's vDSO is known by
    cache_path: str = DEFAULT_CACHE  # the ld.so.cache this loader reads

    @property
    def conf_path(self) -> str:
        """The ld.so.conf that ldconfig reads to write that cache."""
        return os.path.join(os.path.dirname(self.cache_path), "ld.so.conf")


def loader_facts(info: ElfInfo, interpreter_file: str | None) -> LoaderFacts:
    """Facts of the loader for objects like ``info``; ``interpreter_file`` is the host
    path of that loader (read for its system directories) or None."""
    abi = _abi_table(info)
    dirs = system_dirs_of(interpreter_file) if interpreter_file else None
    if not dirs:
        dirs = _fallback_dirs(abi)
    host_like = _host_runs(info)
    plat = abi.platform if abi else None
    if host_like and info.machine == "EM_X86_64" and info.elfclass == 64:
        plat = _x86_64_platform()
    return LoaderFacts(
        interpreter=abi.interpreter if abi else None,
        system_dirs=dirs,
        lib=dirs[0].strip("/"),
        platform=plat,
        hwcaps=active_hwcaps(info) if host_like else (),
        cache_flags=frozenset((abi.cache_flag, *abi.extra_cache_flags)) if abi else frozenset(),
        vdso=abi.vdso if abi else ("linux-vdso.so.1",),
        cache_path=(cache_path_of(interpreter_file) if interpreter_file else None)
        or DEFAULT_CACHE,
    )


@functools.lru_cache(maxsize=64)
def system_dirs_of(loader_path: str) -> tuple[str, ...] | None:
    """The trusted directories compiled into the glibc loader at ``loader_path``."""
    try:
        with open(loader_path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    for match in _SYSTEM_DIRS.finditer(data):
        dirs = tuple(os.fsdecode(d) + "/" for d in match.group(0).split(b"/\0") if d)
        if all("lib" in d for d in dirs):
            return dirs
    return None


@functools.lru_cache(maxsize=64)
def cache_path_of(loader_path: str) -> str | None:
    """The ld.so.cache path compiled into the glibc loader at ``loader_path``."""
    try:
        with open(loader_path, "rb") as f:
            match = _CACHE_PATH.search(f.read())
    except OSError:
        return None
    return os.fsdecode(match.group(1)) if match else None


def _fallback_dirs(abi: _Abi | None) -> tuple[str, ...]:
    if abi is None:
        return ("/lib/", "/usr/lib/")
    dirs = [f"/lib/{abi.multiarch}/", f"/usr/lib/{abi.multiarch}/"]
    if abi.libdir != "lib":
        dirs += [f"/{abi.libdir}/", f"/usr/{abi.libdir}/"]
    return (*dirs, "/lib/", "/usr/lib/")


def _host_runs(info: ElfInfo) -> bool:
    """True when this machine's CPU is the one the object would run on."""
    host = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64", "ppc64le": "EM_PPC64",
            "s390x": "EM_S390", "riscv64": "EM_RISCV"}.get(platform.machine())
    return host == info.machine


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def active_hwcaps(info: ElfInfo) -> tuple[str, ...]:
    """glibc-hwcaps subdirectories this CPU supports for ``info``'s ABI, best first."""
    if not (info.machine == "EM_X86_64" and info.elfclass == 64):
        return ()
    flags = _cpu_flags()
    supported: list[str] = []
    for name, needs in _X86_64_LEVELS:
        if not needs <= flags:
            break
        supported.append(name)
    return tuple(reversed(supported))


def _x86_64_platform() -> str:
    # glibc (sysdeps/x86/cpu-features.c) replaces AT_PLATFORM on Intel CPUs.
    flags = _cpu_flags()
    if _cpu_vendor() != "GenuineIntel":
        return "x86_64"
    if {"avx512cd", "avx512er", "avx512pf"} <= flags:
        return "xeon_phi"
    if {"avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "popcnt"} <= flags:
        return "haswell"
    return "x86_64"
