"""The build pipeline: phases, the cached build hostrun uses."""

from __future__ import annotations

import os
from pathlib import Path

from initbuilder.reader import read_initrd
from initbuilder.spec import BuildSpec, build, build_cached


def spec_for(tmp_path: Path, **kw: object) -> BuildSpec:
    return BuildSpec(output=tmp_path / "initrd.zst", busybox=None, init=False,
                     files=[f"{tmp_path / 'f'}:/etc/f"], **kw)  # type: ignore[arg-type]


def test_build_times_each_phase(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("1")
    result = build(spec_for(tmp_path))
    assert set(result.timings) == {"skeleton", "files", "write"}
    assert "etc/f" in {m.path for m in read_initrd(result.report.path)}


def test_cached_build_is_reused_until_an_input_changes(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("1")
    cache = tmp_path / "cache"
    cache.mkdir()
    first = build_cached(spec_for(tmp_path), cache)
    stamp = first.stat().st_mtime_ns
    again = build_cached(spec_for(tmp_path), cache)
    assert again == first and again.stat().st_mtime_ns == stamp
    (tmp_path / "f").write_text("22")
    os.utime(tmp_path / "f", ns=(1, 1))
    changed = build_cached(spec_for(tmp_path), cache)
    assert changed != first and changed.suffix == ".zst"
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, changed.name])
