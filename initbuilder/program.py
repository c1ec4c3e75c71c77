"""The ``initbuilder`` console script: initbuilder.cli loaded under initkit.program's
guard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from initkit.program import launch

if TYPE_CHECKING:
    from collections.abc import Callable


def _load() -> Callable[[], object]:
    from initbuilder.cli import main

    return main


def main() -> None:
    launch("initbuilder", _load)
