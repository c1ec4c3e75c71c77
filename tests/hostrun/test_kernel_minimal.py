"""`--kernel minimal` and HOSTRUN_KERNEL=minimal name initkit's own kernel (the cached
`initbuilder kernel build`); other values stay paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from realparts import missing_part

from hostrun.plan import KERNEL_ENV, find_kernel
from initbuilder.kernels.build import lookup
from initkit.errors import InitkitError


@pytest.fixture(scope="module")
def real_cache_kernel() -> tuple[Path, Path]:
    """(cache root, bzImage) of the built kernel, looked up before this directory's
    private_cache fixture points INITKIT_CACHE at an empty one."""
    if os.environ.get("INITKIT_TEST_MINIMAL_KERNEL"):
        pytest.skip("$INITKIT_TEST_MINIMAL_KERNEL: the minimal kernel is built on another "
                    "machine; the word `minimal` finds this machine's own")
    built = lookup()
    if built is None:
        missing_part("the minimal kernel is not built: run `initbuilder kernel build` first")
    assert built is not None
    return built.root.parent.parent, built.bzimage


@pytest.fixture
def built_bzimage(real_cache_kernel: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    # The real cache, or find_kernel would start a build of several minutes.
    monkeypatch.setenv("INITKIT_CACHE", str(real_cache_kernel[0]))
    return real_cache_kernel[1]


def test_the_word_minimal_finds_the_built_kernel(built_bzimage: Path) -> None:
    assert find_kernel(Path("minimal")) == built_bzimage
    assert find_kernel(Path("minimal")) == built_bzimage  # through the note this time


def test_hostrun_kernel_minimal_in_the_environment(built_bzimage: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KERNEL_ENV, "minimal")
    assert find_kernel(None) == built_bzimage


def test_other_names_are_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InitkitError, match="--kernel minimal-ish: no such file"):
        find_kernel(Path("minimal-ish"))
    # A file called "minimal" is named with its directory (Path drops a leading "./").
    (tmp_path / "minimal").write_bytes(b"not a kernel")
    assert find_kernel(tmp_path / "minimal") == tmp_path / "minimal"
