"""A build request (the user's words, parsed) and the pipeline that turns it into an initrd."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from initbuilder import cpio, sources
from initbuilder.image import Image
from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.files import identity

log = logging.getLogger("initkit.build")


@dataclass
class BuildSpec:
    """Everything that decides an initrd's bytes (where they go is build()'s argument)."""

    files: list[str] = field(default_factory=list)
    # None: no busybox; "auto": the one on $PATH if there is one; "": the one on $PATH
    # (an error if none); anything else: that file.
    busybox: str | None = "auto"
    bases: list[Path] = field(default_factory=list)
    binaries: list[str] = field(default_factory=list)
    root: Path | None = None
    library_path: list[str] = field(default_factory=list)
    dlopen: str = "recommended"
    allow_missing: bool = False
    kernel: Path | None = None
    modules_dir: Path | None = None
    modules: list[str] | None = None  # None: the default virtiofs set
    init: bool = True
    # None: /init is the native init when it can be compiled, else the Python init;
    # True: the native one or an error; False: the Python init only.
    native_init: bool | None = None
    # The native init alone as /init, no Python runtime: an initrd only for the command
    # lines it carries out itself (guest/handover.py); InitkitError if it cannot be built.
    native_only: bool = False
    python: Path | None = None
    compression: str | None = None  # None: the one the output's suffix names
    source_date_epoch: int | None = None


@dataclass
class BuildResult:
    report: cpio.WriteReport
    timings: dict[str, float]
    modules: list[str]


class PhaseTimer:
    """Times each phase of a build (``with timer("name"): ...``); -v logs them."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        self.timings[name] = self.timings.get(name, 0.0) + took
        log.info("phase %-9s %7.1f ms", name, took * 1000)


def build_image(spec: BuildSpec,
                timer: PhaseTimer | None = None) -> tuple[Image, list[str]]:
    """Assemble the Image a spec describes; returns it with the module load list.
    ``timer`` gets each phase's time."""
    timed = timer or PhaseTimer()
    image = Image()
    loaded: list[str] = []
    with timed("skeleton"):
        sources.add_skeleton(image)
    if spec.bases:
        with timed("bases"):
            for base in spec.bases:
                count = sources.add_initrd(image, base)
                log.info("merged %d entries from base %s", count, base)
    if spec.files:
        with timed("files"):
            sources.add_files(image, spec.files)
    busybox = _busybox_path(spec.busybox)
    if busybox is not None:
        with timed("busybox"):
            _add_busybox(image, busybox, spec)
    if spec.binaries:
        with timed("binaries"):
            from initbuilder.loader.binaries import add_binaries

            add_binaries(image, spec.binaries, root=spec.root, library_path=spec.library_path,
                         dlopen=spec.dlopen, allow_missing=spec.allow_missing)
    if spec.init and spec.native_only:
        with timed("runtime"):
            from initbuilder.nativeinit import add_native_init

            add_native_init(image)
    elif spec.init:
        with timed("runtime"):
            from initbuilder.runtime import add_runtime

            add_runtime(image, python=spec.python, native=spec.native_init)
    if _wants_modules(spec):
        with timed("modules"):
            from initbuilder.kernels.modules import add_modules

            loaded = add_modules(image, kernel=spec.kernel, modules_dir=spec.modules_dir,
                                 names=spec.modules)
    return image, loaded


def build(spec: BuildSpec, output: Path) -> BuildResult:
    """Build the initrd a spec describes and write it atomically to ``output`` (whose
    suffix names the compression unless the spec does)."""
    timer = PhaseTimer()
    image, loaded = build_image(spec, timer)
    for path, entry in image.items():
        log.debug("  /%s: %s", path, entry.describe())
    with timer("write"):
        report = cpio.write_initrd(image, output, compression=spec.compression,
                                   mtime=spec.source_date_epoch)
    return BuildResult(report, timer.timings, loaded)


def fingerprint(image: Image, compression: str, epoch: int) -> str:
    """A hash of everything that decides the bytes ``image`` is written as. Host files
    count by their identity (path, size, mtime, inode, device: as make does), so hashing
    stays cheap."""
    digest = hashlib.sha256(f"{compression}:{epoch}".encode())
    for path, entry in image.items():
        digest.update(repr((path, entry.kind.value, entry.mode, entry.uid, entry.gid,
                            entry.target, entry.major, entry.minor)).encode())
        if entry.data is not None:
            digest.update(hashlib.sha256(entry.data).digest())
        elif entry.host is not None:
            digest.update(identity(entry.host).encode())
    return digest.hexdigest()


def build_cached(spec: BuildSpec, *, suffix: str = ".cpio", cache: Path | None = None,
                 pad_to: int = 1) -> Path:
    """Build the initrd ``spec`` describes into the cache, as a file ending in ``suffix``
    (which names the compression unless the spec does), and return its path; an identical
    earlier build is reused. Safe when several processes build at once: each writes a
    temp file and renames it into place. ``pad_to``: as ``cpio.write_initrd``'s."""
    image, _ = build_image(spec)
    compression = cpio.compression_for(f"initrd{suffix}", spec.compression)
    epoch = cpio.source_date_epoch(spec.source_date_epoch)
    directory = cache or cache_dir("initrd")
    padding = f"-p{pad_to}" if pad_to > 1 else ""
    target = directory / f"{fingerprint(image, compression, epoch)[:32]}{padding}{suffix}"
    if target.exists():
        log.info("reusing cached initrd %s", target)
        return target
    cpio.write_initrd(image, target, compression=compression, mtime=epoch,
                      instead=CACHE_ELSEWHERE, pad_to=pad_to)
    log.info("built initrd %s", target)
    return target


def _busybox_path(choice: str | None) -> Path | None:
    if choice is None:
        return None
    if choice == "auto":
        found = sources.busybox_on_path()
        if found is None:
            log.info("no busybox on $PATH: the initrd has no shell (pass --busybox PATH)")
        return found
    return sources.find_busybox(choice or None)


def _add_busybox(image: Image, busybox: Path, spec: BuildSpec) -> None:
    """A static busybox goes in as is; a dynamic one brings its libraries."""
    from initbuilder.loader.elf import read_elf

    sources.add_busybox(image, busybox, links_at_boot=spec.init)
    if read_elf(str(busybox)).interpreter:
        from initbuilder.loader.binaries import add_binaries

        add_binaries(image, [str(busybox)], root=spec.root, library_path=spec.library_path,
                     allow_missing=spec.allow_missing)


def _wants_modules(spec: BuildSpec) -> bool:
    if spec.kernel is not None or spec.modules_dir is not None:
        return True
    if spec.modules:  # names without a kernel: the running kernel's tree
        return True
    running = Path("/lib/modules", os.uname().release)
    return spec.init and running.is_dir()
