"""A kernel to boot without one on the host: Debian's kernel package, unpacked into the cache.

The package is fetched with ``apt-get download`` and unpacked with ``dpkg -x``: nothing is
installed, no maintainer scripts or hooks run. Each package lands in its own directory under
``cache_dir("kernels")``, built in a temporary directory and renamed into place, so two
processes fetching at once cannot see half a tree. Once a kernel is in the cache, later calls
use it without asking apt (offline, instant) unless ``refresh`` is set.

Debian 12 names its kernel linux-image-6.1.0-N-amd64 and keeps modules under lib/modules;
Debian 13 names it linux-image-6.12.N+deb13-amd64 and keeps them under usr/lib/modules.
Both are read. The other release's kernel is fetched through a private apt state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from initkit import process
from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.errors import InitkitError, WriteSite, writing
from initkit.files import check_temp_base, scratch_beside

log = logging.getLogger("initkit.kernelfetch")

# The generic amd64 flavour of either naming: Debian 12's linux-image-6.1.0-28-amd64 (an
# ABI number) and Debian 13's linux-image-6.12.57+deb13-amd64. -cloud lacks drivers QEMU
# offers, -rt is another scheduler, -unsigned and -dbg are not bootable images.
DEFAULT_PACKAGE_RE = re.compile(r"^linux-image-(\d+\.\d+)\.\d+(?:-\d+|\+deb\d+)-amd64$")
META_PACKAGE = "linux-image-amd64"  # depends on the release's current kernel
# Each release's kernel series: a cached kernel of the running release's series is the
# default, so a machine that also fetched the other release's kernel keeps its own.
RELEASES = {"bookworm": ("12", "6.1"), "trixie": ("13", "6.12")}
PACKAGE_ENV = "INITKIT_KERNEL_PACKAGE"
_STAMP = "initkit-fetched.json"
_APT_LISTS = Path("/var/lib/apt/lists")
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class FetchedKernel:
    """An unpacked kernel package: where its image and modules are."""

    package: str
    package_version: str
    version: str  # the kernel release, `uname -r` inside the guest
    root: Path  # the unpacked package
    bzimage: Path
    modules_dir: Path  # <root>/lib/modules/<version> (usr/lib/modules on Debian 13)
    config: Path | None


def kernels_dir() -> Path:
    """Where unpacked kernel packages live."""
    return cache_dir("kernels")


def _kernels_root(cache: Path | None) -> Path:
    """``cache`` (--cache), created if missing, else kernels_dir()."""
    if cache is None:
        return kernels_dir()
    root = Path(cache)
    with writing(root, "create the kernel directory", instead="pass another --cache"):
        root.mkdir(parents=True, exist_ok=True)
    return root


def running_release() -> str | None:
    """The Debian release this machine runs (bookworm, trixie), or None elsewhere."""
    try:
        major = Path("/etc/debian_version").read_text().strip().split(".")[0]
    except OSError:
        return None
    for name, (number, _series) in RELEASES.items():
        if major == number or major.startswith(name):
            return name
    return None


def fetch_debian_kernel(
    cache: Path | None = None, package: str | None = None, *, refresh: bool = False,
    release: str | None = None,
) -> FetchedKernel:
    """Return an unpacked Debian kernel package, downloading it on first use.

    ``release`` (bookworm, trixie) defaults to the running one; another release is asked
    through a private apt state in the cache, never the system's. ``package`` defaults to
    $INITKIT_KERNEL_PACKAGE, else the newest cached kernel of that release, else the one
    ``linux-image-amd64`` depends on (always apt's current one with ``refresh``).
    """
    root = _kernels_root(cache)
    if release is not None and release not in RELEASES:
        raise InitkitError(f"release {release!r} is not known; use one of "
                           f"{', '.join(RELEASES)}")
    package = package or os.environ.get(PACKAGE_ENV) or None
    target = release or running_release()
    if package is None and not refresh:
        cached = [k for k in cached_kernels(root) if _of_release(k, target)]
        if cached:
            return cached[-1]
    if package is not None:  # a cached package needs no apt at all (offline)
        _check_package_name(package)
        found = _load(root / package)
        if found is not None:
            return found
    apt = AptSource.for_release(release)
    if package is None:
        package = apt.current_kernel()
        _check_package_name(package)
        found = _load(root / package)
        if found is not None:
            return found
    return _download_and_unpack(root, package, apt)


def _of_release(kernel: FetchedKernel, release: str | None) -> bool:
    if release is None:
        return True
    return kernel.version.startswith(RELEASES[release][1] + ".")


def cached_kernels(cache: Path | None = None) -> list[FetchedKernel]:
    """Kernels already unpacked in the cache, oldest first."""
    root = Path(cache) if cache is not None else kernels_dir()
    if not root.is_dir():
        return []
    found = [k for d in sorted(root.iterdir()) if d.is_dir() and (k := _load(d)) is not None]
    return sorted(found, key=lambda k: (_numbers(k.package_version), _numbers(k.package)))


def newest_package() -> str:
    """The running release's current default-flavour kernel package."""
    return AptSource.for_release(None).current_kernel()


def _numbers(text: str) -> tuple[int, ...]:
    """Version order that is good enough for kernel package versions and names."""
    return tuple(int(n) for n in re.findall(r"\d+", text))


class AptSource:
    """apt as the system has it, or a private state for another release (its own
    sources.list, lists and empty dpkg status under the cache: the system's apt set-up
    is never touched)."""

    def __init__(self, options: list[str], release: str | None, private: Path | None) -> None:
        self.options = options
        self.release = release
        self.private = private

    @classmethod
    def for_release(cls, release: str | None) -> AptSource:
        if release is None or release == running_release():
            return cls([], release, None)
        state = cache_dir("apt", release)
        sources = state / "sources.list"
        mirror = debian_mirror()
        security = re.sub(r"/debian/?$", "/debian-security", mirror)
        text = (f"deb [signed-by={_KEYRING}] {mirror} {release} main\n"
                f"deb [signed-by={_KEYRING}] {mirror} {release}-updates main\n"
                f"deb [signed-by={_KEYRING}] {security} {release}-security main\n")
        for sub in ("lists/partial", "cache/archives/partial", "parts"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        if not sources.exists() or sources.read_text() != text:
            sources.write_text(text)
        status = state / "status"
        if not status.exists():
            status.write_text("")
        options = [
            "-o", f"Dir::Etc::SourceList={sources}", "-o", f"Dir::Etc::SourceParts={state}/parts",
            "-o", f"Dir::State::Lists={state}/lists", "-o", f"Dir::Cache={state}/cache",
            "-o", f"Dir::State::Status={status}", "-o", "APT::Architecture=amd64",
        ]
        return cls(options, release, state)

    def current_kernel(self) -> str:
        """What linux-image-amd64 depends on, else the newest linux-image-*-amd64 apt
        knows (after one apt-get update if apt has no lists)."""
        names = self._kernel_names()
        if not names and not self._lists_present():
            self.update()
            names = self._kernel_names()
        if not names:
            where = self.release or "this machine's release"
            raise InitkitError(
                f"apt knows no {META_PACKAGE} or linux-image-*-amd64 package for {where}; "
                "add a Debian source to /etc/apt/sources.list and run apt-get update, "
                "or pass --package"
            )
        return names[0]

    def _kernel_names(self) -> list[str]:
        hint = "fetching a kernel needs apt (Debian); pass --kernel to use your own"
        depends = process.run(["apt-cache", *self.options, "depends", META_PACKAGE],
                              check=False, hint=hint).stdout.decode()
        wanted = [m.group(1) for m in re.finditer(r"Depends:\s*(linux-image-\S+)", depends)
                  if DEFAULT_PACKAGE_RE.match(m.group(1))]
        if wanted:
            return wanted[:1]
        proc = process.run(["apt-cache", *self.options, "pkgnames", "linux-image-"], hint=hint)
        names = [n for n in proc.stdout.decode().split() if DEFAULT_PACKAGE_RE.match(n)]
        return sorted(names, key=_numbers, reverse=True)

    def _lists_present(self) -> bool:
        lists = self.private / "lists" if self.private is not None else _APT_LISTS
        try:
            return any("_Packages" in p.name for p in lists.iterdir())
        except OSError:
            return False

    def update(self) -> None:
        log.info("apt has no package lists%s: running apt-get update",
                 f" for {self.release}" if self.private else "")
        extra = ["-o", "APT::Sandbox::User=root"] if self.private and os.geteuid() == 0 else []
        process.run(
            ["apt-get", *self.options, *extra, "update"],
            timeout=600,
            hint="apt-get update needs root and network access to a Debian mirror",
        )

    def download_argv(self) -> list[str]:
        argv = ["apt-get", *self.options, "download", "-q"]
        if os.geteuid() == 0:
            # apt's _apt user cannot write into a private temp dir; root downloads itself.
            argv += ["-o", "APT::Sandbox::User=root"]
        return argv


def debian_mirror() -> str:
    """The Debian mirror the system's apt uses (one-line or deb822 sources), else
    Debian's CDN."""
    pattern = re.compile(r"(?:^\s*URIs:|^\s*deb(?:\s+\[[^\]]*\])?)\s+(https?://\S+/debian)/?\s",
                         re.MULTILINE)
    files = [Path("/etc/apt/sources.list")]
    with contextlib.suppress(OSError):
        files += sorted(Path("/etc/apt/sources.list.d").iterdir())
    for path in files:
        try:
            text = path.read_text(errors="replace") + "\n"
        except OSError:
            continue
        match = pattern.search(text)
        if match:
            return match.group(1)
    return _DEFAULT_MIRROR


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


def _modules_base(tree: Path) -> Path:
    """lib/modules, or usr/lib/modules where the package has moved it (Debian 13)."""
    for base in (tree / "lib" / "modules", tree / "usr" / "lib" / "modules"):
        if base.is_dir() and not base.is_symlink():
            return base
    return tree / "lib" / "modules"


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
        modules_dir=_modules_base(directory) / version,
        config=config if config.exists() else None,
    )


def _download_and_unpack(root: Path, package: str, apt: AptSource) -> FetchedKernel:
    check_temp_base()  # apt's and dpkg-deb's temporary files go there
    with scratch_beside(root / package, what="the download", instead=CACHE_ELSEWHERE) as work:
        log.info("downloading %s", package)
        process.run(
            [*apt.download_argv(), package],
            cwd=work,
            timeout=900,
            hint=f"check that apt knows {package} (apt-cache policy {package}) "
            "and that the mirror is reachable",
            writes=WriteSite(root / package, "download the kernel package into",
                             CACHE_ELSEWHERE),
        )
        debs = sorted(work.glob("*.deb"))
        if len(debs) != 1:
            raise InitkitError(f"apt-get download {package} left {len(debs)} .deb files in {work}")
        return unpack_kernel_deb(debs[0], root)


def unpack_kernel_deb(deb: Path, cache: Path | None = None) -> FetchedKernel:
    """Unpack a kernel .deb into the cache (no scripts run) and return it; when the package
    is already there, or another process unpacks it at the same time, the first copy wins."""
    root = _kernels_root(cache)
    check_temp_base()  # dpkg-deb unpacks even the control fields there
    package = _deb_field(deb, "Package")
    _check_package_name(package)
    final = root / package
    found = _load(final)
    if found is not None:
        return found
    package_version = _deb_field(deb, "Version")
    site = WriteSite(final, "unpack the kernel package into", CACHE_ELSEWHERE)
    with scratch_beside(final, what="the kernel package", instead=CACHE_ELSEWHERE) as tmp:
        tree = tmp / "tree"
        log.info("unpacking %s", deb.name)
        process.run(["dpkg-deb", "-x", deb, tree], timeout=600,
                    hint="dpkg-deb is part of dpkg; install it", writes=site)
        version = _kernel_release(tree, package)
        with writing(site.path, site.doing, instead=site.instead):
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
    modules = _modules_base(tree)
    versions = sorted(p.name for p in modules.iterdir()) if modules.is_dir() else []
    boot = tree / "boot"
    images = [v for v in versions if (boot / f"vmlinuz-{v}").is_file()]
    if len(images) != 1:
        raise InitkitError(
            f"package {package} does not hold exactly one kernel image with its modules "
            f"(found modules for {versions or 'none'}); pass a linux-image-*-amd64 package"
        )
    return images[0]
