"""What a test's private initkit cache holds after an unpack."""

from __future__ import annotations

from pathlib import Path


def cache_leftovers(cache: Path) -> list[str]:
    """What the NAR cache holds (entries and anything half-written)."""
    nar = cache / "store" / "nar"
    return sorted(p.name for p in nar.iterdir()) if nar.exists() else []
