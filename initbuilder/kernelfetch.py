"""A kernel to boot without one on the host: Debian's kernel package, unpacked into the cache.

The package is fetched with ``apt-get download`` and unpacked with ``dpkg -x``: nothing is
installed, no maintainer scripts or hooks run. Each package lands in its own directory under
``cache_dir("kernels")``, built in a temporary directory and renamed into place, so two
processes fetching at once cannot see half a tree. Once a kernel is in the cache, later calls
use it without asking apt (offline, instant) unless ``refresh`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from initbuilder import process
from initbuilder.cache import cache_dir
from initbuilder.errors import InitkitError

log = logging.getLogger("initkit.kernelfetch")

# The generic amd64 flavour; -cloud lacks drivers QEMU offers, -rt is another scheduler,
# -unsigned and -dbg are not bootable images.
DEFAULT_PACKAGE_RE = re.compile(r"^linux-image-6\.1\.0-(\d+)-amd64$")
PACKAGE_ENV = "INITKIT_KERNEL_PACKAGE"
_STAMP = "initkit-fetched.json"
_APT_LISTS = Path("/var/lib/apt/lists")


@dataclass(frozen=True)
class FetchedKernel:
    """An unpacked kernel package: where its image and modules are."""

    package: str
    package_version: str
    version: str  # the kernel release, `uname -r` inside the guest
    root: Path  # the unpacked package
    bzimage: Path
    modules_dir: Path  # <root>/lib/modules/<version>
    config: Path | None


def kernels_dir() -> Path:
    """Where unpacked kernel packages live."""
    return cache_dir("kernels")


def fetch_debian_kernel(
    cache: Path | None = None, package: str | None = None, *, refresh: bool = False
) -> FetchedKernel:
    """Return an unpacked Debian kernel package, downloading it on first use.

    ``package`` defaults to $INITKIT_KERNEL_PACKAGE, else the newest kernel already in the
    cache, else the newest ``linux-image-6.1.0-N-amd64`` apt knows (always apt's newest with
    ``refresh``).
    """
    root = Path(cache) if cache is not None else kernels_dir()
    root.mkdir(parents=True, exist_ok=True)
    package = package or os.environ.get(PACKAGE_ENV) or None
    if package is None and not refresh:
        cached = cached_kernels(root)
        if cached:
            return cached[-1]
    if package is None:
        package = newest_package()
    _check_package_name(package)
    found = _load(root / package)
    if found is not None:
        return found
    return _download_and_unpack(root, package)


def cached_kernels(cache: Path | None = None) -> list[FetchedKernel]:
    """Kernels already unpacked in the cache, oldest ABI first."""
    root = Path(cache) if cache is not None else kernels_dir()
    if not root.is_dir():
        return []
    found = [k for d in sorted(root.iterdir()) if d.is_dir() and (k := _load(d)) is not None]
    return sorted(found, key=lambda k: _abi_key(k.package))


def newest_package() -> str:
    """The newest default-flavour kernel package apt knows (runs apt-get update once if
    apt has no package lists)."""
    names = _apt_kernel_names()
    if not names and not _apt_lists_present():
        _apt_update()
        names = _apt_kernel_names()
    if not names:
        raise InitkitError(
            "apt knows no linux-image-6.1.0-N-amd64 package; add a Debian 12 (bookworm) "
            "source to /etc/apt/sources.list and run apt-get update, or pass --package"
        )
    return max(names, key=_abi_key)


def _apt_kernel_names() -> list[str]:
    proc = process.run(
        ["apt-cache", "pkgnames", "linux-image-6.1.0-"],
        hint="fetching a kernel needs apt (Debian or Ubuntu); pass --kernel to use your own",
    )
    names = proc.stdout.decode().split()
    return [n for n in names if DEFAULT_PACKAGE_RE.match(n)]


def _apt_lists_present() -> bool:
    try:
        return any("_Packages" in p.name for p in _APT_LISTS.iterdir())
    except OSError:
        return False


def _apt_update() -> None:
    log.info("apt has no package lists: running apt-get update")
    process.run(
        ["apt-get", "update"],
        timeout=600,
        hint="apt-get update needs root and network access to a Debian mirror",
    )


def _abi_key(package: str) -> tuple[int, str]:
    match = re.search(r"-(\d+)-", package)
    return (int(match.group(1)) if match else -1, package)


def _check_package_name(package: str) -> None:
    # The name becomes a directory and an apt argument: keep it to what Debian allows.
    if not re.fullmatch(r"linux-image-[a-z0-9][a-z0-9.+-]*", package):
        raise InitkitError(
            f"kernel package {package!r} is not a linux-image-* package name; "
            "pass one such as linux-image-6.1.0-28-amd64"
        )
    if package.endswith(("-dbg", "-unsigned")):
        raise InitkitError(
            f"kernel package {package!r} holds no bootable image; use the package "
            "without the -dbg/-unsigned suffix"
        )


def _load(directory: Path) -> FetchedKernel | None:
    """The FetchedKernel described by a complete cache entry, or None."""
    stamp = directory / _STAMP
    try:
        info = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    version = info["version"]
    config = directory / "boot" / f"config-{version}"
    return FetchedKernel(
        package=info["package"],
        package_version=info["package_version"],
        version=version,
        root=directory,
        bzimage=directory / "boot" / f"vmlinuz-{version}",
        modules_dir=directory / "lib" / "modules" / version,
        config=config if config.exists() else None,
    )


def _download_and_unpack(root: Path, package: str) -> FetchedKernel:
    with tempfile.TemporaryDirectory(prefix=f".{package}.download.", dir=root) as tmp:
        work = Path(tmp)
        download_argv = ["apt-get", "download", "-q"]
        if os.geteuid() == 0:
            # apt's _apt user cannot write into a private temp dir; root downloads itself.
            download_argv += ["-o", "APT::Sandbox::User=root"]
        log.info("downloading %s", package)
        process.run(
            [*download_argv, package],
            cwd=work,
            timeout=900,
            hint=f"check that apt knows {package} (apt-cache policy {package}) "
            "and that the mirror is reachable",
        )
        debs = sorted(work.glob("*.deb"))
        if len(debs) != 1:
            raise InitkitError(f"apt-get download {package} left {len(debs)} .deb files in {work}")
        return unpack_kernel_deb(debs[0], root)


def unpack_kernel_deb(deb: Path, cache: Path | None = None) -> FetchedKernel:
    """Unpack a kernel .deb into the cache (no scripts run) and return it; when the package
    is already there, or another process unpacks it at the same time, the first copy wins."""
    root = Path(cache) if cache is not None else kernels_dir()
    root.mkdir(parents=True, exist_ok=True)
    package = _deb_field(deb, "Package")
    _check_package_name(package)
    final = root / package
    found = _load(final)
    if found is not None:
        return found
    package_version = _deb_field(deb, "Version")
    with tempfile.TemporaryDirectory(prefix=f".{package}.", dir=root) as tmp:
        tree = Path(tmp) / "tree"
        log.info("unpacking %s", deb.name)
        process.run(["dpkg-deb", "-x", deb, tree], timeout=600,
                    hint="dpkg-deb is part of dpkg; install it")
        version = _kernel_release(tree, package)
        (tree / _STAMP).write_text(json.dumps({
            "package": package,
            "package_version": package_version,
            "version": version,
        }, indent=1) + "\n")
        try:
            tree.rename(final)
        except OSError as exc:
            # Another process finished first (rename onto a non-empty dir fails): use theirs.
            if _load(final) is None:
                raise InitkitError(f"{final} exists but holds no complete kernel; remove it "
                                   "and fetch again") from exc
            log.info("%s was unpacked concurrently; using that copy", package)
    loaded = _load(final)
    assert loaded is not None
    return loaded


def _deb_field(deb: Path, field: str) -> str:
    proc = process.run(["dpkg-deb", "--field", deb, field],
                       hint=f"{deb} must be a Debian package (.deb)")
    return proc.stdout.decode().strip()


def _kernel_release(tree: Path, package: str) -> str:
    modules = tree / "lib" / "modules"
    versions = sorted(p.name for p in modules.iterdir()) if modules.is_dir() else []
    boot = tree / "boot"
    images = [v for v in versions if (boot / f"vmlinuz-{v}").is_file()]
    if len(images) != 1:
        raise InitkitError(
            f"package {package} does not hold exactly one kernel image with its modules "
            f"(found modules for {versions or 'none'}); pass a linux-image-*-amd64 package"
        )
    return images[0]


def remove_cached(kernel: FetchedKernel) -> None:
    """Delete one unpacked kernel from the cache."""
    shutil.rmtree(kernel.root)
