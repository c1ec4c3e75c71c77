"""The guest runtime: a private Python for the guest init, and ``/init`` that starts it.

Under /usr/lib/initkit/python (never under /nix/store, which the virtiofs mount hides):
the interpreter, the standard-library modules the guest package reaches (followed by
initbuilder/pyimports.py under that interpreter, compiled to sourceless .pyc), the
extension modules among them, and the guest package. CPython's getpath finds this
prefix from the os.pyc landmark and lib-dynload. Shared libraries (libc, libffi,
libpython of a shared build) stay at the paths the loader finds them by, as
initbuilder.loader.closure resolves them and initbuilder.hostfiles walks them (so an
interpreter from /nix/store is relocated like a --binary); the interpreter's own files
are stripped of debug information.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest.contract import PYTHON_INIT
from initbuilder.hostfiles import HostFiles
from initbuilder.image import Image, Kind
from initbuilder.loader.closure import Resolver
from initbuilder.loader.elf import is_elf_file, read_elf
from initbuilder.nativeinit import SOURCE, NativeInit, NativeUnavailable, native_init
from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.errors import InitkitError, WriteSite, write_error, writing
from initkit.files import (
    identity,
    private_scratch,
    replacing,
    scratch_beside,
    write_atomically,
)
from initkit.process import run

log = logging.getLogger("initkit.runtime")

PREFIX = "/usr/lib/initkit/python"
# What the interpreter imports before any of our code: the codec registry and UTF-8
# (stdio and file names), and os, which is also getpath's landmark for the prefix.
STARTUP_MODULES = ("encodings", "encodings.utf_8", "os")
# Compression codecs that shutil (which tarfile imports) loads if it finds them. The
# agent's tar streams are never compressed, and the three extension modules with
# their libraries (libz, libbz2, liblzma) would add ~0.7 MB to every initrd.
UNWANTED = ("zlib", "bz2", "_bz2", "lzma", "_lzma")
# -OO bytecode: no docstrings or asserts, smaller and quicker to unmarshal under TCG.
OPTIMIZE = 2
_FORMAT = "initkit-runtime-1"  # bump when the cached layout or its inputs change
_GUEST_PACKAGE = Path(__file__).resolve().parent.parent / "guest"
_FOLLOWER = Path(__file__).resolve().parent / "pyimports.py"
_SOURCE = "guest runtime"
ENTRY = "guest/entry.pyc"  # under the runtime's libdir: what /init runs


@dataclass(frozen=True)
class Module:
    """One module of the runtime, as pyimports.py found it."""

    name: str
    kind: str  # source, bytecode, extension, builtin, namespace
    guest: str | None
    host: Path | None  # the compiled .pyc (source) or the file to copy


@dataclass(frozen=True)
class Runtime:
    """What add_runtime puts in the image, before the ELF closures."""

    version: str
    executable: Path
    platlibdir: str
    modules: tuple[Module, ...]

    @property
    def interpreter(self) -> str:
        return f"{PREFIX}/bin/python{self.version}"

    @property
    def libdir(self) -> str:
        return f"{PREFIX}/{self.platlibdir}/python{self.version}"


def init_script(runtime: Runtime) -> bytes:
    """``/init``. The kernel runs it through its ``#!`` line, which passes one argument:
    the bytecode of guest/entry.py, run as the script, because compiling even a line of
    source costs the boot ~40 ms under TCG (the parser and compiler run cold). The
    ``._pth`` file by the interpreter (pth_file) stands in for ``-IS``, which that one
    argument leaves no room for. A Python before 3.11 reads no ``._pth`` here: it gets
    ``-IS`` and the same lines as source."""
    if _version(runtime.version) >= (3, 11):
        return (f"#!{runtime.interpreter} {runtime.libdir}/{ENTRY}\n"
                "# initkit's guest init (docs/guest.md): the interpreter runs guest/entry.py's\n"
                "# bytecode named above, isolated and without site by its ._pth file.\n").encode()
    return (f"#!{runtime.interpreter} -IS\n"
            "# initkit's guest init (docs/guest.md); the code is the guest package.\n"
            "import time\n"
            "started = time.clock_gettime(time.CLOCK_BOOTTIME)  # before the guest's imports\n"
            "from guest.__main__ import main\n"
            "main(started)\n").encode()


def pth_file(runtime: Runtime) -> bytes:
    """``python3.X._pth`` by the interpreter: sys.path is exactly the runtime's library
    (relative to bin/), and, as getpath reads it since 3.11, the interpreter is isolated
    (no PYTHON* environment, no user site, no script directory on sys.path) and imports
    no site, as ``-IS`` would. Environment variables of the pre-configuration
    (PYTHONMALLOC, PYTHONUTF8...) are read before the file, so a PYTHON... word on the
    kernel command line still reaches the init."""
    lib = f"../{runtime.platlibdir}/python{runtime.version}"
    return (f"# initkit's guest runtime (initbuilder/runtime.py): its sys.path, and -I -S\n"
            f"{lib}\n{lib}/lib-dynload\n").encode()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def add_runtime(image: Image, *, python: Path | None = None,
                native: bool | None = None) -> None:
    """Add the interpreter (``python``, default the one running initbuilder) with its
    ELF closure, the standard-library subset and the guest package as .pyc, and /init:
    the native init in front of the Python one (``native`` None: when it can be
    compiled; True: or an error; False: never)."""
    runtime = collect(python)
    resolver = Resolver()
    files = HostFiles(image)
    # The runtime's ELF files are stripped copies: weak, so that the same file added
    # by the user (--binary python3, whose closure packs the original) wins instead of
    # being a conflict of two versions of one library.
    image.add_file(runtime.interpreter, host=_packed(files, resolver, runtime.executable),
                   mode=0o755, source=f"{_SOURCE}: {runtime.executable}", weak=True)
    # getpath wants lib-dynload to exist (the exec_prefix landmark), used or not.
    image.add_directory(f"{runtime.libdir}/lib-dynload", source=_SOURCE)
    elf_files = [runtime.executable]
    for module in runtime.modules:
        if module.guest is None or module.host is None:
            continue
        src = f"{_SOURCE}: {module.name}"
        if module.kind == "extension":
            image.add_file(module.guest, host=_packed(files, resolver, module.host), mode=0o755,
                           source=src, weak=True)
            elf_files.append(module.host)
        else:
            image.add_file(module.guest, data=module.host.read_bytes(), mode=0o644, source=src)
    for elf in elf_files:
        _add_libraries(files, resolver, elf)
    _add_inits(image, init_script(runtime), native, machine_of=runtime.executable)
    if _version(runtime.version) >= (3, 11):
        image.add_file(f"{runtime.interpreter}._pth", data=pth_file(runtime), mode=0o644,
                       source=_SOURCE)
    # The kernel opens /dev/console for init only if the node is in the initrd; and
    # before devtmpfs is mounted CPython seeds its hash from /dev/urandom when the
    # kernel's RNG is not ready yet (it dies without it). Same weak nodes as the skeleton.
    image.add_device("dev/console", Kind.CHAR, 5, 1, 0o600, source=_SOURCE, weak=True)
    image.add_device("dev/urandom", Kind.CHAR, 1, 9, 0o666, source=_SOURCE, weak=True)
    log.info("guest runtime: Python %s from %s, %d modules", runtime.version,
             runtime.executable, sum(1 for m in runtime.modules if m.guest))


_told: set[str] = set()  # reasons for no native init already logged in this process


def _add_inits(image: Image, python_init: bytes, native: bool | None, *,
               machine_of: Path | None = None) -> None:
    """/init: the native init, with the Python init's script at contract.PYTHON_INIT
    for the command lines it hands over; or the Python init itself. ``machine_of``: the
    guest's interpreter, whose machine the native init must share (the compiler makes
    it for this host's: a --python of another machine, run through binfmt, has none)."""
    built = native_init() if native is not False else NativeInit(None, "--no-native-init")
    if built.path is not None and machine_of is not None:
        # What a loader compares (class, byte order, machine), as initbuilder.loader does.
        ours, theirs = read_elf(str(built.path)).abi, read_elf(str(machine_of)).abi
        if ours != theirs:
            built = NativeInit(None, f"it is compiled for {ours[2]}, the guest's Python "
                                     f"{machine_of} is for {theirs[2]}")
    if built.path is None:
        if native:
            raise NativeUnavailable(f"the native init cannot be built: {built.why_not}")
        if native is None and built.why_not not in _told:
            _told.add(built.why_not)
            log.warning("the Python init is /init (the native one, ~250 ms quicker a boot "
                        "under TCG, cannot be built: %s)", built.why_not)
        image.add_file("init", data=python_init, mode=0o755, source=_SOURCE)
        return
    image.add_file("init", host=built.path, mode=0o755, source=f"native init: {SOURCE}")
    image.add_file(PYTHON_INIT.lstrip("/"), data=python_init, mode=0o755, source=_SOURCE)


def _packed(files: HostFiles, resolver: Resolver, elf: Path) -> Path:
    """The file to pack for one of the interpreter's own ELF files: stripped, with the
    store paths its loader strings name relocated."""
    _, probe = resolver.read_main(str(elf))
    return _stripped(files.loadable(elf, probe.info))


def _add_libraries(files: HostFiles, resolver: Resolver, elf: Path) -> None:
    """Add what the loader maps for ``elf`` at the paths it finds them by."""
    closure = resolver.resolve(str(elf))
    if closure.missing:
        names = ", ".join(f"{m.name} ({m.reason}, {m.chain()})" for m in closure.missing)
        raise InitkitError(f"the guest runtime's {elf} needs libraries that cannot be "
                           f"found: {names}; fix the interpreter's installation or pass "
                           "another one with --python")
    objects = [closure.interpreter] if closure.interpreter is not None else []
    objects += [lib for lib in closure.libraries if lib is not closure.interpreter]
    for obj in objects:
        if obj.path is None:  # the vDSO
            continue
        if _is_libpython(obj.path) and os.path.realpath(obj.path) == os.path.abspath(obj.path):
            # No link on the way: packed stripped, at the path the RUNPATH names.
            files.image.add_file(files.relocation.relocate(os.path.abspath(obj.path)),
                                 host=_stripped(files.loadable(obj.path, obj.info)),
                                 source=f"{_SOURCE}: {obj.path}", weak=True)
        else:
            files.add(obj.path, f"{_SOURCE}: {obj.path}", elf=obj.info)


def _is_libpython(path: str) -> bool:
    return os.path.basename(path).startswith("libpython")


# -- following imports, under the target interpreter -------------------------------
def collect(python: Path | None = None) -> Runtime:
    """Run pyimports.py under ``python``; reuse an earlier answer for the same inputs."""
    interpreter = _interpreter(python)
    key = _cache_key(interpreter)
    if key is None:
        with private_scratch("initkit-runtime-") as tmp:
            return _load(_follow(interpreter, tmp), tmp, keep_bytes=True)
    root = cache_dir("runtime")
    final = root / key
    answer_file = final / "answer.json"
    if not answer_file.exists():
        with scratch_beside(final, what="the runtime's cache entry",
                            instead=CACHE_ELSEWHERE) as scratch:
            answer = _follow(interpreter, scratch)
            with writing(scratch / "answer.json", "write", instead=CACHE_ELSEWHERE):
                (scratch / "answer.json").write_text(json.dumps(answer))
            with contextlib.suppress(OSError):  # another build got there first: the same
                scratch.rename(final)
    return _load(json.loads(answer_file.read_text()), final, keep_bytes=False)


def _interpreter(python: Path | None) -> Path:
    if python is None:
        return Path(sys.executable)
    if not python.exists():
        raise InitkitError(f"--python {python}: no such file")
    if not os.access(python, os.X_OK):
        raise InitkitError(f"--python {python}: not executable")
    return python


def _cache_key(interpreter: Path) -> str | None:
    """A key for everything the follower's answer depends on, or None when the
    interpreter cannot be identified by its file (a wrapper script such as a pyenv shim)."""
    real = Path(os.path.realpath(interpreter))
    if not is_elf_file(real):
        return None
    try:
        interpreter_identity = identity(real)
    except OSError:
        return None
    digest = hashlib.sha256(repr((_FORMAT, interpreter_identity, STARTUP_MODULES, UNWANTED,
                                  OPTIMIZE, PREFIX)).encode())
    digest.update(_FOLLOWER.read_bytes())
    for source in sorted(_GUEST_PACKAGE.rglob("*.py")):
        digest.update(str(source.relative_to(_GUEST_PACKAGE)).encode() + b"\0")
        digest.update(source.read_bytes())
    return digest.hexdigest()[:32]


def _follow(interpreter: Path, out: Path) -> dict[str, Any]:
    request = {"packages": {"guest": str(_GUEST_PACKAGE)}, "roots": list(STARTUP_MODULES),
               "prefix": PREFIX, "out": str(out), "optimize": OPTIMIZE,
               "unwanted": list(UNWANTED)}
    proc = run([interpreter, "-I", "-S", _FOLLOWER], input=json.dumps(request).encode(),
               hint=f"--python {interpreter} must be a CPython 3.10 or newer")
    try:
        answer: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise InitkitError(f"{interpreter} did not answer initbuilder's import follower "
                           "with JSON; is it a CPython 3.10 or newer?") from None
    if "error" in answer:
        raise InitkitError(f"--python {interpreter}: {answer['error']}")
    if "write_error" in answer:  # compiling into the cache failed: a full disk, say
        code, path = answer["write_error"]["errno"], answer["write_error"]["path"]
        raise write_error(OSError(code, os.strerror(code)), path,
                          "write the guest runtime's compiled module", instead=CACHE_ELSEWHERE)
    missing = {name: by for name, by in answer["missing"].items()
               if by.startswith(("guest", "<"))}
    if missing:
        names = ", ".join(f"{name} (imported by {by})" for name, by in sorted(missing.items()))
        raise InitkitError(f"{interpreter} lacks modules the guest init needs: {names}")
    return answer


def _load(answer: dict[str, Any], out: Path, *, keep_bytes: bool) -> Runtime:
    facts = answer["facts"]
    modules = []
    for entry in answer["files"]:
        guest, host = entry["guest"], entry["host"]
        if entry["kind"] == "source" and guest is not None:
            compiled = out / guest.lstrip("/")
            # The temporary directory goes away: keep the bytes, not the path.
            host = _keep(compiled) if keep_bytes else compiled
        modules.append(Module(entry["name"], entry["kind"], guest,
                              None if host is None else Path(host)))
    return Runtime(facts["version"], Path(facts["executable"]), facts["platlibdir"],
                   tuple(modules))


def _keep(path: Path) -> Path:
    """Copy a file out of a temporary directory into the cache, by content."""
    data = path.read_bytes()
    target = cache_dir("runtime", "pyc") / hashlib.sha256(data).hexdigest()[:32]
    if not target.exists():
        write_atomically(target, data, what="the cache entry", instead=CACHE_ELSEWHERE)
    return target


# -- stripping -----------------------------------------------------------------------
def _stripped(path: Path) -> Path:
    """``path`` without debug information or symbol tables (cached by the file's
    identity); the file itself if there is no ``strip``."""
    st = path.stat()
    key = hashlib.sha256(identity(path.resolve()).encode()).hexdigest()[:24]
    target = cache_dir("runtime", "stripped") / f"{key}-{path.name}"
    if target.exists():
        return target
    strip = shutil.which("strip")
    if strip is None:
        log.warning("no strip(1) on $PATH: %s goes into the initrd with its debug "
                    "information (install binutils for a smaller initrd)", path)
        return path
    with replacing(target, mode=st.st_mode & 0o7777, what="the cache entry",
                   instead=CACHE_ELSEWHERE) as tmp:
        run([strip, "--strip-unneeded", "-o", tmp, path],
            hint="install binutils, or remove the broken strip from $PATH",
            writes=WriteSite(target, "write the cache entry", CACHE_ELSEWHERE))
    return target
