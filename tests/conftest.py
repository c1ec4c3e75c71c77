"""Fixtures shared by the whole suite: a real Debian kernel to read and boot, real Nix
outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from nixbuild import NixOutputs, nix_build
from realparts import missing_part

from initbuilder.kernels.fetch import FetchedKernel, fetch_debian_kernel
from initkit.errors import InitkitError


@pytest.fixture(scope="session")
def debian_kernel() -> FetchedKernel:
    """Debian 12's kernel package, fetched once into the initkit cache and unpacked."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        missing_part("apt-get and dpkg-deb are needed to fetch the Debian kernel package")
    try:
        return fetch_debian_kernel()
    except InitkitError as exc:
        missing_part(f"cannot fetch the Debian kernel package: {exc}")
        raise  # unreachable: missing_part skips or fails


@pytest.fixture(scope="session")
def debian_vmlinux(debian_kernel: FetchedKernel) -> Path:
    """The ELF vmlinux inside the Debian bzImage (for PVH boots), cached by content hash."""
    from initbuilder.kernels.formats import extract_vmlinux

    return extract_vmlinux(debian_kernel.bzimage)


@pytest.fixture(scope="session")
def nix_outputs(tmp_path_factory: pytest.TempPathFactory) -> NixOutputs:
    """Store paths built by real Nix (tests/nixbuild.py): hello and catfile linked against
    a glibc that is its own store path, and a secret file nothing refers to."""
    return nix_build(tmp_path_factory.mktemp("nix"))
