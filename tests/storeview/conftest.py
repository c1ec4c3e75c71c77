"""Each store-view test gets its own initkit cache, so what it leaves there is its own."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "initkit-cache"
    monkeypatch.setenv("INITKIT_CACHE", str(cache))
    return cache


def cache_leftovers(cache: Path) -> list[str]:
    """What the NAR cache holds (entries and anything half-written)."""
    nar = cache / "store" / "nar"
    return sorted(p.name for p in nar.iterdir()) if nar.exists() else []
