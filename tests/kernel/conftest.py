"""Fixtures for the kernel tests: synthetic modules and images built in tmp_path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from realparts import need
from synthetic_kernel import VERSION, VMLINUX_C, ModuleTreeBuilder


@pytest.fixture(scope="session")
def base_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An almost empty relocatable ELF object, the body of every synthetic module."""
    need("gcc", "objcopy")
    work = tmp_path_factory.mktemp("ko-base")
    source = work / "base.c"
    source.write_text("int initkit_synthetic_module;\n")
    subprocess.run(["gcc", "-c", "-o", work / "base.o", source], check=True)
    return work / "base.o"


@pytest.fixture
def module_tree(tmp_path: Path, base_object: Path) -> ModuleTreeBuilder:
    return ModuleTreeBuilder(tmp_path, base_object)


@pytest.fixture(scope="session")
def tiny_vmlinux(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small static x86-64 ELF with a PVH note and a Linux banner: a stand-in vmlinux."""
    need("gcc")
    work = tmp_path_factory.mktemp("vmlinux")
    source = work / "vmlinux.c"
    source.write_text(VMLINUX_C.replace("VERSION", VERSION))
    out = work / "vmlinux"
    subprocess.run(["gcc", "-static", "-nostdlib", "-no-pie", "-O1", "-o", out, source],
                   check=True)
    return out.read_bytes()
