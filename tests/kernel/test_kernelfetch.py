"""Fetching and unpacking kernel packages: cache reuse, offline second call, atomic unpack."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from realparts import missing_part, need

from initbuilder.kernels.fetch import (
    DEFAULT_PACKAGE_RE,
    RELEASES,
    AptSource,
    FetchedKernel,
    _numbers,
    cached_kernels,
    fetch_debian_kernel,
    newest_package,
    running_release,
    unpack_kernel_deb,
)
from initkit.errors import InitkitError


def make_kernel_deb(tmp: Path, package: str, version: str, modules_base: str = "lib") -> Path:
    """A tiny package laid out as Debian's kernel packages are, built with dpkg-deb
    (Debian 13's keep modules under usr/lib: ``modules_base="usr/lib"``)."""
    need("dpkg-deb")
    tree = tmp / f"{package}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: amd64\n"
        "Maintainer: initkit <test@initkit>\nDescription: synthetic kernel\n")
    (tree / "boot").mkdir()
    (tree / "boot" / f"vmlinuz-{version}").write_bytes(b"not really a kernel")
    (tree / "boot" / f"config-{version}").write_text("CONFIG_VIRTIO_FS=m\n")
    modules = tree / modules_base / "modules" / version / "kernel"
    modules.mkdir(parents=True)
    (modules / "m.ko").write_bytes(b"\x7fELF")
    deb = tmp / f"{package}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, deb],
                   check=True, capture_output=True)
    return deb


def test_unpack_deb_into_cache(tmp_path: Path) -> None:
    deb = make_kernel_deb(tmp_path, "linux-image-6.1.0-7-amd64", "6.1.0-7-amd64")
    cache = tmp_path / "cache"
    fetched = unpack_kernel_deb(deb, cache)
    assert fetched.package == "linux-image-6.1.0-7-amd64"
    assert fetched.package_version == "1.0-1"
    assert fetched.version == "6.1.0-7-amd64"
    assert fetched.bzimage.read_bytes() == b"not really a kernel"
    assert (fetched.modules_dir / "kernel" / "m.ko").exists()
    assert fetched.config is not None
    assert sorted(p.name for p in cache.iterdir()) == ["linux-image-6.1.0-7-amd64"]
    # Cached now: an explicit package or none at all needs no apt.
    assert fetch_debian_kernel(cache, "linux-image-6.1.0-7-amd64") == fetched
    assert fetch_debian_kernel(cache, release="bookworm") == fetched


def test_concurrent_unpacks_leave_one_complete_tree(tmp_path: Path) -> None:
    deb = make_kernel_deb(tmp_path, "linux-image-6.1.0-8-amd64", "6.1.0-8-amd64")
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: unpack_kernel_deb(deb, cache), range(4)))
    assert all(r == results[0] for r in results)
    assert [p.name for p in cache.iterdir()] == ["linux-image-6.1.0-8-amd64"]  # no temp dirs


def test_newest_cached_kernel_is_the_default(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for abi in (9, 10):  # numerically, not as text
        unpack_kernel_deb(make_kernel_deb(tmp_path, f"linux-image-6.1.0-{abi}-amd64",
                                          f"6.1.0-{abi}-amd64"), cache)
    assert [k.version for k in cached_kernels(cache)] == ["6.1.0-9-amd64", "6.1.0-10-amd64"]
    assert fetch_debian_kernel(cache, release="bookworm").version == "6.1.0-10-amd64"


def test_each_release_defaults_to_its_own_cached_kernel(tmp_path: Path) -> None:
    """With Debian 12's and 13's kernels in one cache, each release gets its own; 13's
    names and usr/lib/modules layout are read."""
    cache = tmp_path / "cache"
    old = unpack_kernel_deb(make_kernel_deb(tmp_path, "linux-image-6.1.0-40-amd64",
                                            "6.1.0-40-amd64"), cache)
    new = unpack_kernel_deb(make_kernel_deb(tmp_path, "linux-image-6.12.57+deb13-amd64",
                                            "6.12.57+deb13-amd64", modules_base="usr/lib"),
                            cache)
    assert new.modules_dir == new.root / "usr/lib/modules/6.12.57+deb13-amd64"
    assert (new.modules_dir / "kernel" / "m.ko").exists()
    assert DEFAULT_PACKAGE_RE.match(new.package) and DEFAULT_PACKAGE_RE.match(old.package)
    assert fetch_debian_kernel(cache, release="trixie") == new
    assert fetch_debian_kernel(cache, release="bookworm") == old
    with pytest.raises(InitkitError, match="release 'sid' is not known"):
        fetch_debian_kernel(cache, release="sid")


@pytest.mark.parametrize("name,ok", [
    ("linux-image-6.1.0-28-amd64", True), ("linux-image-6.12.57+deb13-amd64", True),
    ("linux-image-6.1.0-28-cloud-amd64", False), ("linux-image-6.12.57+deb13-rt-amd64", False),
    ("linux-image-6.1.0-28-amd64-dbg", False), ("linux-image-amd64", False),
])
def test_default_flavour_names_of_both_releases(name: str, ok: bool) -> None:
    assert bool(DEFAULT_PACKAGE_RE.match(name)) is ok


def test_the_other_release_is_asked_through_a_private_apt_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Debian 12 machine finds Debian 13's kernel (and the reverse) without touching the
    system's apt: lists and state live in the cache."""
    need("apt-get", "apt-cache")
    this = running_release()
    if this is None:
        pytest.skip("not a Debian 12 or 13 machine")
    other = "trixie" if this == "bookworm" else "bookworm"
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path / "cache"))
    system_lists = sorted(p.name for p in Path("/var/lib/apt/lists").iterdir())
    apt = AptSource.for_release(other)
    try:
        package = apt.current_kernel()
    except InitkitError as exc:
        missing_part(f"the Debian mirror cannot be reached for {other}: {exc}")
        raise
    series = RELEASES[other][1]
    assert package.startswith(f"linux-image-{series}."), package
    assert apt.private is not None and apt.private.is_relative_to(tmp_path / "cache")
    assert any("_Packages" in p.name for p in (apt.private / "lists").iterdir())
    assert sorted(p.name for p in Path("/var/lib/apt/lists").iterdir()) == system_lists


def test_package_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InitkitError, match="not a linux-image"):
        fetch_debian_kernel(tmp_path, "bash")
    with pytest.raises(InitkitError, match="no bootable image"):
        fetch_debian_kernel(tmp_path, "linux-image-6.1.0-9-amd64-dbg")


def test_deb_without_a_kernel_is_an_error(tmp_path: Path) -> None:
    deb = make_kernel_deb(tmp_path, "linux-image-6.1.0-11-amd64", "6.1.0-11-amd64")
    subprocess.run(["dpkg-deb", "-R", deb, tmp_path / "re"], check=True)
    (tmp_path / "re" / "boot" / "vmlinuz-6.1.0-11-amd64").unlink()
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", tmp_path / "re", deb],
                   check=True, capture_output=True)
    with pytest.raises(InitkitError, match="exactly one kernel image"):
        unpack_kernel_deb(deb, tmp_path / "cache")


def test_second_fetch_is_instant_and_offline(
    debian_kernel: FetchedKernel, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no apt, no dpkg: must come from the cache
    start = time.monotonic()
    again = fetch_debian_kernel(package=debian_kernel.package)
    assert time.monotonic() - start < 1
    assert again == debian_kernel


def test_apt_knows_a_default_kernel(debian_kernel: FetchedKernel) -> None:
    if os.environ.get("INITKIT_KERNEL_PACKAGE"):
        pytest.skip("a pinned package is in use")
    newest = newest_package()
    assert DEFAULT_PACKAGE_RE.match(newest)
    assert _numbers(newest) >= _numbers(debian_kernel.package)
