"""The initrd hostrun boots when none is given: initbuilder's defaults for the kernel.

Building one walks the module tree and the Python runtime, so hostrun first looks up a
cheap key (the kernel file, the extra files, initkit's own sources, the host's Python
and busybox, by file identity) in an index; only a miss runs the build, under a
lock so that two hostruns starting at once build it once. The index entry is written
atomically and points into initbuilder's own content-addressed initrd cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

from hostrun.placement import PAGE
from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.errors import writing
from initkit.files import identity_or_missing, remember

log = logging.getLogger("initkit.hostrun")

SUFFIX = ".cpio"  # uncompressed: the guest kernel unpacks it fastest under TCG


def default_initrd(kernel: Path, *, files: list[str] | None = None,
                   native_only: bool = False) -> Path:
    """A cached initrd with initbuilder's defaults for ``kernel`` (modules, guest init,
    busybox if the host has one) plus ``files`` ("host:guest"); built on first use.
    ``native_only``: with the native init alone, no Python runtime, for a boot whose
    command line it carries out itself (guest/handover.py); where the native init cannot
    be built, the full initrd instead."""
    files = list(files or [])
    index = cache_dir("hostrun", "initrd")
    key = _input_key(kernel, files) + ("-native" if native_only else "")
    pointer = index / f"{key}.path"
    found = _follow(pointer)
    if found is not None:
        return found
    with writing(index / f"{key}.lock", "make the lock file", instead=CACHE_ELSEWHERE):
        lock = open(index / f"{key}.lock", "w")  # noqa: SIM115 - closed below
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent hostrun may be building it now
        found = _follow(pointer)
        if found is not None:
            return found
        # The native-only one takes a moment (no Python runtime to collect): no notice.
        (log.info if native_only else log.warning)(
            "hostrun: building the initrd for %s (once; cached)", kernel)
        from initbuilder.nativeinit import NativeUnavailable
        from initbuilder.spec import BuildSpec, build_cached

        # Padded to whole pages: QEMU then never has to copy it (hostrun/placement.py).
        spec = BuildSpec(kernel=kernel, files=files, busybox="auto", native_only=native_only)
        try:
            built = build_cached(spec, suffix=SUFFIX, pad_to=PAGE)
        except NativeUnavailable:
            built = default_initrd(kernel, files=files)  # remembered below: asked once
        remember(pointer, str(built))
        return built


def _follow(pointer: Path) -> Path | None:
    try:
        target = Path(pointer.read_text().strip())
    except OSError:
        return None
    return target if target.is_file() else None


def _input_key(kernel: Path, files: list[str]) -> str:
    digest = hashlib.sha256(b"hostrun-initrd-v3\0")  # v2: padded to pages; v3: the native init

    def add_stat(path: Path | str | None) -> None:
        if path is None:
            digest.update(b"-\0")
            return
        digest.update(identity_or_missing(path).encode() + b"\0")

    add_stat(kernel.resolve())
    for spec in files:
        digest.update(spec.encode() + b"\0")
        add_stat(spec.rsplit(":", 1)[0] if ":" in spec else spec)
    for package in ("initbuilder", "guest"):
        root = Path(__file__).resolve().parent.parent / package
        for source in sorted(root.rglob("*.py")):
            add_stat(source)
    # The native init: its source and the compiler that makes it.
    add_stat(Path(__file__).resolve().parent.parent / "guest" / "native" / "init.c")
    digest.update(f"CC={os.environ.get('CC', '')}\0".encode())
    add_stat(shutil.which("cc") or shutil.which("gcc"))
    digest.update(sys.version.encode())
    add_stat(sys.executable)
    add_stat(shutil.which("busybox"))
    for name in ("SOURCE_DATE_EPOCH",):
        digest.update(f"{name}={os.environ.get(name, '')}\0".encode())
    return digest.hexdigest()[:32]
