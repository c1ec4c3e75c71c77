"""initkit is the neutral core: it imports none of the packages built on it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "initkit"


def _imports(source: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):  # also in functions
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_core_imports_only_itself_the_standard_library_and_click() -> None:
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 7
    for module in modules:
        outside = _imports(module) - {"initkit", "click", "__future__"}
        assert outside <= sys.stdlib_module_names, (module.name, outside - sys.stdlib_module_names)
        if module.name != "cli.py":
            assert "click" not in _imports(module), f"{module.name}: click is for cli.py only"
