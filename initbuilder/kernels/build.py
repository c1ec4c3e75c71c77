"""`initbuilder kernel build`: a kernel for initkit's VMs, from tinyconfig and fragments.

A build is cached under ``kernel-built/KEY`` where KEY hashes the source's identity, the
options the fragments ask for, the compiler's version and the architecture, so a second
call returns at once. The object tree is kept under ``kernel-objects/SOURCE-ARCH`` (one per
source) so that a changed fragment rebuilds only what it touches; a lock on it makes
concurrent builds of one source take turns. Everything that ends up in the cache is
assembled in a temporary directory and renamed into place: a failed or interrupted build
leaves no half kernel behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from initbuilder.kernels import config as kernelconfig
from initbuilder.kernels.progress import BuildProgress
from initbuilder.kernels.source import (
    KernelSource,
    debian_source,
    given_source,
    installed_debian_source,
    source_ident,
)
from initkit import process
from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.errors import WriteSite, writing
from initkit.files import (
    check_temp_base,
    identity_or_missing,
    remember,
    remove_tree,
    scratch_beside,
    temp_path,
    write_atomically,
)

log = logging.getLogger("initkit.kernelbuild")

ARCH = "x86_64"  # the only guest architecture hostrun boots
# Bumped when the way a kernel is built changes what a cache entry holds.
RECIPE = 1
_STAMP = "initkit-kernel.json"
# What it costs the first time, for notices (measured: docs/benchmarks.md).
BUILD_ESTIMATE = "about 13 minutes on 2 cores, less with more"

Report = Callable[[str], None]


@dataclass(frozen=True)
class BuiltKernel:
    """A cached kernel build: where its files are."""

    root: Path
    release: str  # `uname -r` in the guest
    bzimage: Path  # <root>/boot/vmlinuz-RELEASE, so initbuilder finds <root>/lib/modules
    vmlinux: Path  # the ELF image PVH boots take
    config: Path  # the final .config
    modules_dir: Path  # <root>/lib/modules/RELEASE: modules.builtin, and any =m modules
    info: dict[str, object]

    def fields(self) -> dict[str, str]:
        """What `initbuilder kernel build` prints, by name."""
        return {"version": self.release, "bzimage": str(self.bzimage),
                "vmlinux": str(self.vmlinux), "config": str(self.config),
                "modules-dir": str(self.modules_dir), "root": str(self.root),
                "source": str(self.info.get("source", ""))}


def compiler_version() -> str:
    """The first line of ``gcc --version``: a new compiler means new objects."""
    proc = process.run(["gcc", "--version"], hint="install gcc (apt-get install gcc)")
    return proc.stdout.decode(errors="replace").splitlines()[0].strip()


def fragments_with_default(extra: Sequence[Path]) -> list[Path]:
    """initkit's own fragment, then the user's, in order (a later option wins)."""
    return [kernelconfig.FRAGMENT, *(Path(p) for p in extra)]


def wanted_options(fragments: Sequence[Path]) -> dict[str, kernelconfig.Option]:
    """The options of ``fragments`` merged in order (a later one wins)."""
    wanted: dict[str, kernelconfig.Option] = {}
    for fragment in fragments:
        wanted.update(kernelconfig.read_fragment(fragment))
    return wanted


def cache_key(source_ident: str, wanted: dict[str, kernelconfig.Option], compiler: str) -> str:
    """What decides a build's output, hashed: the source, the options the fragments ask
    for (their values in order; comments and layout do not count), compiler, arch."""
    parts = {"recipe": RECIPE, "source": source_ident, "arch": ARCH, "compiler": compiler,
             "options": [f"{o.name}={o.value}" for o in wanted.values()]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def lookup(source: Path | None = None, fragments: Sequence[Path] = ()) -> BuiltKernel | None:
    """The cached build for these inputs, or None; builds, installs and unpacks nothing.
    Without ``source``: Debian's linux-source-X.Y, which must be installed to be found."""
    if source is None:
        installed = installed_debian_source()
        if installed is None:
            return None
        ident = f"{installed[0]}_{installed[1]}"
    else:
        ident = source_ident(source)
    wanted = wanted_options(fragments_with_default(fragments))
    return _load(cache_dir("kernel-built") / cache_key(ident, wanted, compiler_version()))


def build_kernel(
    source: Path | None = None,
    fragments: Sequence[Path] = (),
    *,
    jobs: int | None = None,
    rebuild: bool = False,
    report: Report = print,
    show_make: bool = False,
) -> BuiltKernel:
    """Build (or find in the cache) the kernel for ``source`` (default: Debian's
    linux-source-X.Y, installed if missing) with tinyconfig + initkit's fragment +
    ``fragments``; ``report`` gets progress lines, or make's own with ``show_make``."""
    all_fragments = fragments_with_default(fragments)
    wanted = wanted_options(all_fragments)  # a bad fragment fails before apt or make run
    if not rebuild and (found := lookup(source, fragments)) is not None:
        return found  # no package checks, no unpacking: the second call is instant
    check_temp_base()  # apt's and gcc's temporary files go there
    src = given_source(source) if source is not None else debian_source()
    key = cache_key(src.ident, wanted, compiler_version())
    entry = cache_dir("kernel-built") / key
    found = _load(entry)
    if found is not None and not rebuild:
        return found
    objects = cache_dir("kernel-objects", f"{src.ident}-{ARCH}")
    with _terminate_as_exit(), _locked(objects.with_name(objects.name + ".lock"), report):
        found = _load(entry)
        if found is not None and not rebuild:
            return found  # built by another process while we waited
        started = time.monotonic()
        progress = BuildProgress(report, objects, show_make)
        _configure(src, objects, wanted, progress)
        progress.phase("compile")
        targets = ["bzImage"] + (["modules"] if _modules_enabled(objects) else [])
        _make(src, objects, [f"-j{jobs or os.cpu_count() or 1}", *targets], progress)
        progress.finish()
        built = _install(src, objects, entry, key, all_fragments, time.monotonic() - started)
    report(f"kernel build: {built.release} in {built.info['seconds']:.0f} s: {built.bzimage}")
    return built


def minimal_kernel(report: Report = print) -> BuiltKernel:
    """initkit's minimal kernel from Debian's source: the cached one, else built now
    with a notice of how long that takes (hostrun --kernel minimal).

    hostrun asks on every boot, so a note keyed by what the answer depends on, by file
    identity (dpkg's status file for the source package, the fragment, the compiler),
    skips the dpkg-query and gcc runs of a full lookup (~50 ms)."""
    note = cache_dir("kernel-built") / f".minimal-{_host_state_key()}"
    with contextlib.suppress(OSError):
        found = _load(Path(note.read_text()))
        if found is not None:
            return found
    found = lookup()
    if found is None:
        report(f"building initkit's minimal kernel first (`initbuilder kernel build`; once, "
               f"then cached; {BUILD_ESTIMATE})")
        found = build_kernel(report=report)
    remember(note, str(found.root))
    return found


def _host_state_key() -> str:
    digest = hashlib.sha256(f"{RECIPE}:{ARCH}\0".encode())
    for path in (Path("/var/lib/dpkg/status"), kernelconfig.FRAGMENT,
                 Path(shutil.which("gcc") or "gcc").resolve()):
        digest.update(identity_or_missing(path).encode() + b"\0")
    return digest.hexdigest()[:24]


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) while building, so make is stopped and the
    temporary install directory removed as on ^C (the default action would kill this
    process at once and leave make running); outside the main thread, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _locked(path: Path, report: Report) -> Iterator[None]:
    with writing(path, "make the lock file", instead=CACHE_ELSEWHERE):
        lock = open(path, "w")  # noqa: SIM115 - closed below
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"kernel build: waiting for another build of this source ({path})")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _make_argv(src: KernelSource, objects: Path, *args: str) -> list[str]:
    return ["make", "-C", str(src.tree), f"O={objects}", f"ARCH={ARCH}",
            # The banner names these instead of this machine's user and host name.
            "KBUILD_BUILD_USER=initkit", "KBUILD_BUILD_HOST=initkit", *args]


def _make(src: KernelSource, objects: Path, args: Sequence[str], progress: BuildProgress) -> None:
    process.run_lines(_make_argv(src, objects, *args), progress.line,
                      hint=f"the whole output is in {progress.log_path}; run again "
                           "with -v to see make's lines",
                      writes=WriteSite(objects, "build the kernel in", inside=True))


def _configure(src: KernelSource, objects: Path, wanted: dict[str, kernelconfig.Option],
               progress: BuildProgress) -> None:
    """tinyconfig, the fragments over it, olddefconfig to settle dependencies, and the
    check that every wanted option survived (Kconfig drops what it cannot satisfy)."""
    progress.phase("configure")
    _make(src, objects, ["tinyconfig"], progress)
    config = objects / ".config"
    merged = kernelconfig.merge(config.read_text(), wanted)
    write_atomically(config, merged, what="the kernel configuration",
                     instead=CACHE_ELSEWHERE)
    _make(src, objects, ["olddefconfig"], progress)
    kernelconfig.check(wanted, config)


def configure_only(source: Path | None, fragments: Sequence[Path], objects: Path,
                   report: Report = print) -> Path:
    """Configure ``source`` into the object tree ``objects`` and check the fragments,
    without compiling; returns the .config (tests use it: seconds instead of minutes)."""
    wanted = wanted_options(fragments_with_default(fragments))
    check_temp_base()  # apt's and gcc's temporary files go there
    src = given_source(source) if source is not None else debian_source()
    objects.mkdir(parents=True, exist_ok=True)
    _configure(src, objects, wanted, BuildProgress(report, objects, False))
    return objects / ".config"


def _modules_enabled(objects: Path) -> bool:
    final = kernelconfig.parse_config((objects / ".config").read_text(), ".config")
    option = final.get("CONFIG_MODULES")
    return option is not None and option.value == "y"


def _install(src: KernelSource, objects: Path, entry: Path, key: str,
             fragments: Sequence[Path], seconds: float) -> BuiltKernel:
    """Copy the results into a temporary directory, then rename it to ``entry``."""
    release = (objects / "include" / "config" / "kernel.release").read_text().strip()
    site = WriteSite(entry, "install the built kernel into", CACHE_ELSEWHERE)
    # make has just written the objects: an OSError here is one of writing the entry.
    with scratch_beside(entry, what="the built kernel", instead=CACHE_ELSEWHERE) as tmp, \
            writing(site.path, site.doing, instead=site.instead):
        tree = tmp / "tree"
        boot = tree / "boot"
        boot.mkdir(parents=True)
        shutil.copyfile(objects / "arch" / "x86" / "boot" / "bzImage", boot / f"vmlinuz-{release}")
        shutil.copyfile(objects / "vmlinux", boot / f"vmlinux-{release}")
        shutil.copyfile(objects / ".config", boot / f"config-{release}")
        modules = tree / "lib" / "modules" / release
        if _modules_enabled(objects):
            # DEPMOD=true: modules.dep is optional for initbuilder, and depmod may be absent.
            process.run(_make_argv(src, objects, f"INSTALL_MOD_PATH={tree}", "DEPMOD=true",
                                   "INSTALL_MOD_STRIP=1", "modules_install"), timeout=600,
                        writes=site)
            for link in ("build", "source"):  # they point into the object tree
                (modules / link).unlink(missing_ok=True)
        else:
            modules.mkdir(parents=True)
            for name in ("modules.builtin", "modules.builtin.modinfo"):
                if (objects / name).is_file():
                    shutil.copyfile(objects / name, modules / name)
        info = {"release": release, "source": src.ident, "source_tree": str(src.tree),
                "arch": ARCH, "compiler": compiler_version(), "key": key,
                "fragments": [str(f) for f in fragments], "seconds": round(seconds, 1)}
        (tree / _STAMP).write_text(json.dumps(info, indent=1) + "\n")
        _replace_dir(tree, entry)
    loaded = _load(entry)
    assert loaded is not None
    return loaded


def _replace_dir(new: Path, entry: Path) -> None:
    """Rename ``new`` to ``entry``; an older entry (a --rebuild) is moved aside first."""
    if entry.exists():
        old = temp_path(entry)  # named as entry's: removed by the next build if we die now
        entry.rename(old)
        new.rename(entry)
        remove_tree(old)
    else:
        new.rename(entry)


def _load(entry: Path) -> BuiltKernel | None:
    try:
        info = json.loads((entry / _STAMP).read_text())
    except (OSError, ValueError):
        return None
    release = info["release"]
    return BuiltKernel(root=entry, release=release,
                       bzimage=entry / "boot" / f"vmlinuz-{release}",
                       vmlinux=entry / "boot" / f"vmlinux-{release}",
                       config=entry / "boot" / f"config-{release}",
                       modules_dir=entry / "lib" / "modules" / release, info=info)
