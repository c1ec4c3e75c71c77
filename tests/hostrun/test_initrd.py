"""The default initrd's cache: built once even when hostruns start together, rebuilt
when an input changes. The build itself is initbuilder's (tested there): a stand-in
records the calls here."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from hostrun import initrd
from initbuilder.spec import BuildSpec


@pytest.fixture
def builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[BuildSpec]:
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path / "cache"))
    calls: list[BuildSpec] = []

    def fake_build_cached(spec: BuildSpec, *, suffix: str, pad_to: int) -> Path:
        assert pad_to == 4096  # whole pages: QEMU need not copy it (hostrun/placement.py)
        calls.append(spec)
        time.sleep(0.3)  # long enough for a second hostrun to arrive meanwhile
        out = tmp_path / f"built-{len(calls)}{suffix}"
        out.write_bytes(b"070701")
        return out

    monkeypatch.setattr("initbuilder.spec.build_cached", fake_build_cached)
    return calls


def test_two_hostruns_at_once_build_once(tmp_path: Path, builds: list[BuildSpec]) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(initrd.default_initrd(kernel)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert len(set(results)) == 1 and results[0].is_file()


def test_rebuilt_when_the_kernel_changes(tmp_path: Path, builds: list[BuildSpec]) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    first = initrd.default_initrd(kernel)
    assert initrd.default_initrd(kernel) == first
    os.utime(kernel, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = initrd.default_initrd(kernel)
    assert second != first and len(builds) == 2
    assert initrd.default_initrd(kernel, files=[f"{kernel}:/extra"]) not in (first, second)


def test_rebuilt_when_the_built_file_is_gone(tmp_path: Path, builds: list[BuildSpec]) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    initrd.default_initrd(kernel).unlink()
    assert initrd.default_initrd(kernel).is_file()
    assert len(builds) == 2


def test_default_spec(tmp_path: Path, builds: list[BuildSpec]) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    built = initrd.default_initrd(kernel)
    spec = builds[0]
    assert spec.kernel == kernel
    assert spec.busybox == "auto"
    assert built.suffix == ".cpio"  # uncompressed: the guest kernel unpacks it fastest
