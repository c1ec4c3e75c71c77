"""Each store-view test gets its own initkit cache, so what it leaves there is its own."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "initkit-cache"
    monkeypatch.setenv("INITKIT_CACHE", str(cache))
    return cache
