"""Fixtures for the closure tests: a gcc fixture builder in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from elf_fixtures import Builder, host_is_x86_64_glibc
from realparts import need


@pytest.fixture
def build(tmp_path: Path) -> Builder:
    """Compiles ELF fixtures into tmp_path (skips without gcc or off x86-64 glibc)."""
    need("gcc")
    host_is_x86_64_glibc()
    return Builder(tmp_path)
