"""The ``hostrun`` console script: hostrun.cli loaded under initkit.program's guard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from initkit.program import launch

if TYPE_CHECKING:
    from collections.abc import Callable


def _load() -> Callable[[], object]:
    from hostrun.cli import entry

    return entry


def main() -> None:
    launch("hostrun", _load)
