"""The build pipeline: phases, the cached build hostrun uses, busybox by default."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from initbuilder.reader import read_initrd
from initbuilder.spec import BuildSpec, PhaseTimer, build, build_cached, build_image
from initkit.errors import InitkitError


def spec_for(tmp_path: Path, *, busybox: str | None = None) -> BuildSpec:
    return BuildSpec(busybox=busybox, init=False, files=[f"{tmp_path / 'f'}:/etc/f"])


def test_build_times_each_phase(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("1")
    result = build(spec_for(tmp_path), tmp_path / "initrd.zst")
    assert set(result.timings) == {"skeleton", "files", "write"}
    assert "etc/f" in {m.path for m in read_initrd(result.report.path)}


def test_cached_build_is_reused_until_an_input_changes(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("1")
    cache = tmp_path / "cache"
    cache.mkdir()
    first = build_cached(spec_for(tmp_path), suffix=".zst", cache=cache)
    stamp = first.stat().st_mtime_ns
    again = build_cached(spec_for(tmp_path), suffix=".zst", cache=cache)
    assert again == first and again.stat().st_mtime_ns == stamp
    (tmp_path / "f").write_text("22")
    os.utime(tmp_path / "f", ns=(1, 1))
    changed = build_cached(spec_for(tmp_path), suffix=".zst", cache=cache)
    assert changed != first and changed.suffix == ".zst"
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, changed.name])


def test_a_caller_times_the_phases_with_its_own_timer(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("1")
    timer = PhaseTimer()
    image, loaded = build_image(spec_for(tmp_path), timer)
    assert set(timer.timings) == {"skeleton", "files"} and loaded == []
    assert image.get("etc/f") is not None


def test_auto_busybox_without_one_on_path_builds_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f").write_text("1")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    image, _ = build_image(spec_for(tmp_path, busybox="auto"))
    assert image.get("bin/busybox") is None
    with pytest.raises(InitkitError, match="no busybox on \\$PATH"):
        build_image(spec_for(tmp_path, busybox=""))
