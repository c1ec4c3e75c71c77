"""The kernel source a build starts from, and the host packages a build needs.

By default Debian's ``linux-source-X.Y`` for the running release (the ``linux-source``
metapackage names it: 6.1 on Debian 12, 6.12 on Debian 13), installed with apt-get when
missing, its tarball unpacked once into the cache. ``--source`` names a tarball (also
unpacked into the cache, keyed by its content) or a tree used in place. Every source has
an ``ident``, the part of the build's cache key that says which source it is.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from initkit import process
from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.errors import InitkitError, WriteSite, write_error, writing
from initkit.files import scratch_beside

log = logging.getLogger("initkit.kernelbuild")

# What a tinyconfig-based x86 build runs besides the compiler: make, bc (timeconst.h),
# bison and flex (Kconfig and dtc parsers), libelf-dev (objtool), xz-utils (the source
# tarball and the XZ-compressed bzImage tinyconfig asks for), libc6-dev (host programs).
BUILD_PACKAGES = ("make", "gcc", "libc6-dev", "bc", "bison", "flex", "libelf-dev",
                  "xz-utils")
_STAMP = ".initkit-unpacked"
# Depends on the release's linux-source-X.Y; installed with it, so dpkg can name X.Y.
METAPACKAGE = "linux-source"


@dataclass(frozen=True)
class KernelSource:
    """A kernel tree ready for ``make O=...``."""

    ident: str  # e.g. "linux-source-6.1_6.1.192-3"; a file and directory name
    tree: Path
    version: str  # the Makefile's VERSION.PATCHLEVEL.SUBLEVEL
    in_place: bool = False  # a tree the user passed: it may change under us


def debian_source_package() -> str:
    """The running release's ``linux-source-X.Y``, as the ``linux-source`` metapackage
    depends on it: from dpkg once the metapackage is installed (~25 ms), else from apt's
    cache (~1 s, no network); the newest installed one if neither can say."""
    proc = process.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\t${Depends}\n",
                        METAPACKAGE], check=False)
    status, _, depends = proc.stdout.decode().partition("\t")
    names: list[str] = (re.findall(r"\b(linux-source-\d+\.\d+)\b", depends)
                        if status.startswith("ii") else [])
    if not names:
        proc = process.run(["apt-cache", "depends", "--important", METAPACKAGE], check=False,
                           hint="building a kernel from Debian's source needs apt; pass "
                                "--source")
        names = re.findall(r"Depends:\s*(linux-source-\d+\.\d+)\b", proc.stdout.decode())
    if names:
        return names[0]
    installed = [name for name, version in _installed("linux-source-*").items() if version]
    if installed:
        return max(installed, key=_version_key)
    raise InitkitError("apt knows no linux-source package for this release; run apt-get "
                       "update, or pass --source DIR|TARBALL")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def _installed(*patterns: str) -> dict[str, str]:
    """Package -> installed version ("" when known but not installed) for dpkg patterns."""
    proc = process.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n",
                        *patterns], check=False)
    found: dict[str, str] = {}
    for line in proc.stdout.decode().splitlines():
        name, version, status = [*line.split("\t"), "", ""][:3]
        found[name] = version if status.startswith("ii") else ""
    return found


def installed_debian_source() -> tuple[str, str] | None:
    """(package, version) of the release's linux-source-X.Y when it is installed; no
    apt-get, no unpacking (the cheap lookup of a cached build uses this)."""
    package = debian_source_package()
    version = _installed(package).get(package, "")
    return (package, version) if version else None


def missing_packages(packages: tuple[str, ...] | list[str]) -> list[str]:
    """Those of ``packages`` that dpkg does not list as installed."""
    have = _installed(*packages)
    return [p for p in packages if not have.get(p)]


def ensure_packages(packages: tuple[str, ...] | list[str]) -> None:
    """apt-get install whichever of ``packages`` dpkg does not list as installed."""
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise InitkitError(f"the kernel build needs {' '.join(missing)}, which are not "
                           f"installed; run: sudo apt-get install {' '.join(missing)}")
    log.warning("installing %s (apt-get)", " ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    first = process.run(argv, check=False, env=env, timeout=1800)
    if first.returncode != 0:
        # Stale or absent package lists are the usual cause: refresh once and retry.
        process.run(["apt-get", "update", "-q"], env=env, timeout=600,
                    hint="apt-get update needs network access to a Debian mirror")
        process.run(argv, env=env, timeout=1800,
                    hint=f"install them yourself: apt-get install {' '.join(missing)}")


def debian_source() -> KernelSource:
    """Debian's linux-source-X.Y for this release, installed if needed and unpacked."""
    package = debian_source_package()
    ensure_packages([METAPACKAGE, package, *BUILD_PACKAGES])
    version = _installed(package)[package]
    tarballs = sorted(Path("/usr/src").glob(f"{package}.tar.*"))
    if not tarballs:
        raise InitkitError(f"{package} is installed but /usr/src/{package}.tar.* is missing; "
                           f"reinstall it: apt-get install --reinstall {package}")
    return _unpacked(tarballs[0], f"{package}_{version}")


def given_source(path: Path) -> KernelSource:
    """``--source``: a kernel tree (used in place) or a tarball (unpacked into the cache)."""
    ensure_packages(list(BUILD_PACKAGES))
    ident = source_ident(path)
    if path.is_dir():
        tree = path.resolve()
        return KernelSource(ident, tree, makefile_version(tree), in_place=True)
    return _unpacked(path, ident)


def source_ident(path: Path) -> str:
    """The identity of a ``--source``: a tree by its path and version (its contents may
    change: kbuild notices, the cache does not, hence --rebuild), a tarball by content."""
    if path.is_dir():
        tree = path.resolve()
        digest = hashlib.sha256(str(tree).encode()).hexdigest()[:12]
        return f"tree-{makefile_version(tree)}-{digest}"
    if not path.is_file():
        raise InitkitError(f"--source {path}: no such file or directory; pass a kernel tree "
                           "or a tarball such as /usr/src/linux-source-6.1.tar.xz")
    content = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            content.update(chunk)
    stem = re.sub(r"\.tar(\.\w+)?$|\.tgz$", "", path.name)
    return f"{stem}_{content.hexdigest()[:12]}"


def makefile_version(tree: Path) -> str:
    """VERSION.PATCHLEVEL.SUBLEVEL from a kernel tree's top Makefile."""
    try:
        head = (tree / "Makefile").read_text(errors="replace")[:2000]
    except OSError:
        head = ""
    fields = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL) = (\d+)$", head, re.MULTILINE))
    if len(fields) != 3 or not (tree / "Kconfig").is_file():
        raise InitkitError(f"--source {tree}: not a kernel source tree (no top Makefile with "
                           "VERSION/PATCHLEVEL/SUBLEVEL, or no Kconfig)")
    return f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}"


def _unpacked(tarball: Path, ident: str) -> KernelSource:
    """The tarball unpacked (top directory stripped) under ``kernel-source/IDENT``; the
    first complete unpack wins, and nobody sees half a tree."""
    root = cache_dir("kernel-source")
    final = root / ident
    if not (final / _STAMP).is_file():
        with scratch_beside(final, what="the kernel source",
                            instead=CACHE_ELSEWHERE) as tmp:
            tree = tmp / "tree"
            site = WriteSite(final, "unpack the kernel source into", CACHE_ELSEWHERE)
            _check_room(tarball, tmp, site)
            log.warning("unpacking %s (once)", tarball)
            _extract(tarball, tree, site)
            with writing(site.path, site.doing, instead=site.instead):
                (tree / _STAMP).write_text(json.dumps({"from": str(tarball)}) + "\n")
            try:
                tree.rename(final)
            except OSError:
                if not (final / _STAMP).is_file():
                    raise InitkitError(f"{final} exists but is no complete kernel tree; "
                                       "remove it and build again") from None
    return KernelSource(ident, final, makefile_version(final))


def _extract(tarball: Path, into: Path, site: WriteSite) -> None:
    # GNU tar (essential in Debian) with xz-utils, a build package, as its decompressor:
    # several times faster than tarfile on 1.4 GB of sources.
    with writing(site.path, site.doing, instead=site.instead):
        into.mkdir()
    process.run(["tar", "-xf", tarball, "-C", into, "--strip-components=1",
                 "--no-same-owner"], timeout=1800,
                hint=f"{tarball} must be a kernel source tarball", writes=site)


def _check_room(tarball: Path, directory: Path, site: WriteSite) -> None:
    """Refuse at once when ``directory``'s filesystem has less room than the tarball
    unpacks to: tar would otherwise go on through ~80,000 files after the first full
    write (empty files still fit), for seconds, and leave the failure for the end."""
    need = _unpacked_size(tarball)
    try:
        st = os.statvfs(directory)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if need is not None and free < need:
        raise write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), site.path,
                          f"unpack the kernel source ({need / 1e9:.1f} GB; "
                          f"{free / 1e6:.0f} MB free) into", instead=site.instead)


def _unpacked_size(tarball: Path) -> int | None:
    """What an .xz tarball decompresses to (its index says, at once), else None."""
    if tarball.suffix != ".xz":
        return None
    try:
        proc = process.run(["xz", "--robot", "--list", tarball], timeout=60, check=False)
    except InitkitError:
        return None
    for line in proc.stdout.decode(errors="replace").splitlines():
        fields = line.split("\t")
        if fields[0] == "totals" and len(fields) > 4 and fields[4].isdigit():
            return int(fields[4])
    return None
