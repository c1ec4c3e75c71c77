"""`initbuilder kernel build` with the real Kconfig of Debian's kernel source: a fragment
option whose dependency is off is reported by name; the cheap lookup and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from realparts import missing_part

from initbuilder.kernels.build import configure_only, lookup
from initbuilder.kernels.config import parse_config
from initbuilder.kernels.source import installed_debian_source
from initkit.cache import cache_dir

# Set on the CI leg that boots a minimal kernel built on another machine (tests/e2e):
# this machine then has no build of its own, only its release's source, configured by
# `initbuilder kernel build --check` (so the Kconfig tests run on that release's too).
BUILT_ELSEWHERE = "INITKIT_TEST_MINIMAL_KERNEL"


def skip_if_built_elsewhere() -> None:
    if os.environ.get(BUILT_ELSEWHERE):
        pytest.skip(f"${BUILT_ELSEWHERE}: the minimal kernel is built on another machine")


@pytest.fixture(scope="session")
def kernel_tree() -> Path:
    """The unpacked linux-source-X.Y that `initbuilder kernel build` (or `--check`)
    leaves in the cache."""
    installed = installed_debian_source()
    tree = cache_dir("kernel-source") / f"{installed[0]}_{installed[1]}" if installed else None
    if tree is None or not (tree / ".initkit-unpacked").is_file():
        missing_part("no unpacked kernel source: run `initbuilder kernel build` (or "
                     "`initbuilder kernel build --check`) first")
    assert tree is not None
    return tree


@pytest.mark.slow
def test_initkits_fragment_survives_kconfig(kernel_tree: Path, tmp_path: Path) -> None:
    # Every wanted option came through (configure_only checks) and nothing is a module.
    config = configure_only(kernel_tree, [], tmp_path / "objects", report=lambda _: None)
    final = parse_config(config.read_text(), str(config))
    assert final["CONFIG_VIRTIO_FS"].value == "y"
    assert not [o.name for o in final.values() if o.value == "m"]


def test_cached_lookup_in_an_empty_cache_says_build_first(tmp_path: Path) -> None:
    env = {**os.environ, "INITKIT_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "initbuilder", "kernel", "build", "--cached"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "run `initbuilder kernel build`" in proc.stderr
    assert list(tmp_path.glob("kernel-objects/*")) == [], "a lookup builds nothing"


def test_bad_fragment_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    fragment = tmp_path / "bad.config"
    fragment.write_text("CONFIG_VIRTIO_FS=y  # with a comment\n")
    env = {**os.environ, "INITKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "initbuilder", "kernel", "build",
                           "--config-fragment", str(fragment)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"{fragment}:1" in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / "kernel-objects").exists()


def test_lookup_finds_the_built_kernel_when_there_is_one() -> None:
    skip_if_built_elsewhere()
    built = lookup()
    if built is None:
        missing_part("the minimal kernel is not built: run `initbuilder kernel build` first")
    assert built is not None
    assert built.bzimage.is_file() and built.vmlinux.is_file()
    assert (built.modules_dir / "modules.builtin").is_file()
    assert f"{built.release}" in built.bzimage.name


@pytest.mark.slow
def test_check_names_the_dropped_option_and_compiles_nothing(kernel_tree: Path,
                                                             tmp_path: Path) -> None:
    """A fragment option whose dependency is off is named, and only it: ext4 needs the
    block layer, which tinyconfig leaves out and nothing here turns on."""
    fragment = tmp_path / "extra.config"
    fragment.write_text("# a file system on a disk\nCONFIG_EXT4_FS=y\n")
    env = {**os.environ, "INITKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "initbuilder", "kernel", "build", "--check",
                           "--source", str(kernel_tree), "--config-fragment", str(fragment)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"CONFIG_EXT4_FS=y (from {fragment}:2) is not set" in proc.stderr
    assert "lost 1 option(s)" in proc.stderr, "only the option that was dropped"
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "cache").glob("kernel-built/*")), "nothing was built"
