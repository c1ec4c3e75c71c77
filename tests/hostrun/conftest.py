"""Real parts for hostrun's unit tests: QEMU's binary and a virtiofsd."""

from __future__ import annotations

import os
import shutil

import pytest
from realparts import missing_part


@pytest.fixture(scope="session")
def qemu_binary() -> str:
    found = shutil.which("qemu-system-x86_64")
    if found is None:
        missing_part("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    assert found is not None
    return found


@pytest.fixture(scope="session")
def real_virtiofsd() -> str:
    """A virtiofsd binary (Rust on PATH or QEMU's C one)."""
    for candidate in (shutil.which("virtiofsd"), "/usr/libexec/virtiofsd",
                      "/usr/lib/qemu/virtiofsd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    missing_part("no virtiofsd (apt-get install qemu-system-x86 or virtiofsd)")
    raise AssertionError("unreachable")


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        missing_part("virtiofsd's namespace sandbox needs root")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    """hostrun's notes (daemon --help, TSC rate, vmlinux) go to a cache of the tests'."""
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def rust_virtiofsd() -> str:
    """The Rust virtiofsd (Debian 13's package, or one on PATH)."""
    for candidate in (shutil.which("virtiofsd"), "/usr/libexec/virtiofsd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if _debian_major() == "12":
        # Not a missing install: Debian 12 has no Rust virtiofsd. The CI matrix runs
        # these tests again on Debian 13, where it is installed.
        pytest.skip("Debian 12 has no Rust virtiofsd package (the Debian 13 leg runs this)")
    missing_part("no Rust virtiofsd (Debian 13: apt-get install virtiofsd)")
    raise AssertionError("unreachable")


def _debian_major() -> str:
    try:
        with open("/etc/debian_version") as f:
            return f.read().split(".")[0].strip()
    except OSError:
        return ""
