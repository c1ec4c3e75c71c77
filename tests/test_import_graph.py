"""Imports run one way: no cycle among the modules of initbuilder, guest, hostrun (and
initkit, the neutral core, once it exists).

The graph is read from the source with ``ast``, nothing is imported. Every import
statement counts wherever it stands: at module level, inside functions and methods
(an import hidden in a function to dodge a cycle is still a cycle: it runs as soon as
the function does), under ``if TYPE_CHECKING:`` (the annotation still ties the two
modules' definitions together, and a checker or ``typing.get_type_hints`` imports it),
and in ``try``/``except`` blocks. A ``"package.module:attr"`` string counts too: that is
how ``LazyGroup`` names the commands it imports on first use. Relative imports are
resolved against the importing module's package.

What is not an edge: the implicit import of a package's ``__init__`` when one of its
submodules is imported. An ``__init__`` that re-exports from its own submodules is the
ordinary way to build a façade and Python runs it in a well-defined order; a real cycle
through a package (a submodule importing a name from its ``__init__``) is an explicit
``from package import name`` and is counted.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("initbuilder", "guest", "hostrun", "initkit")
_LAZY = re.compile(r"([A-Za-z_][\w.]*):[A-Za-z_]\w*")


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target``, at ``where`` (file:line, and how)."""

    source: str
    target: str
    where: str


def discover(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every module of ``packages`` under ``root``."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        top = root / package
        if not (top / "__init__.py").exists():
            continue
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            modules[".".join(parts)] = (path, is_package)
    return modules


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """What a relative import (``level`` dots, then ``name``) names, from ``module``."""
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{name}" if name else base


def _known(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The module of ours ``import name`` runs last: itself, else its longest prefix."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


class _Reader(ast.NodeVisitor):
    """Collects one module's imports, noting whether each is in a function or under
    TYPE_CHECKING (for the message only: all of them count)."""

    def __init__(self, module: str, is_package: bool, where: str,
                 modules: dict[str, tuple[Path, bool]]) -> None:
        self.module, self.is_package, self.where, self.modules = module, is_package, where, modules
        self.edges: list[Edge] = []
        self._context: list[str] = []

    def _add(self, target: str | None, node: ast.AST, what: str = "") -> None:
        if target is None or target == self.module:
            return
        how = ", ".join(filter(None, [*self._context[-1:], what]))
        where = f"{self.where}:{getattr(node, 'lineno', '?')}"
        self.edges.append(Edge(self.module, target, f"{where}{f' ({how})' if how else ''}"))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._context.append(f"inside {node.name}()")
        self.generic_visit(node)
        self._context.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = ast.unparse(node.test)
        if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            self._context.append("under TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self._context.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(_known(alias.name, self.modules), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = _absolute(self.module, self.is_package, node.level, node.module)
        else:
            base = node.module or ""
        if base == "__future__":
            return
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.modules else _known(base, self.modules),
                      node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            match = _LAZY.fullmatch(node.value)
            if match and match.group(1) in self.modules:
                self._add(match.group(1), node, "named by a string")


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, list[Edge]]:
    """Every module of ``packages`` -> the imports of our modules it makes."""
    modules = discover(root, packages)
    graph: dict[str, list[Edge]] = {}
    for name, (path, is_package) in modules.items():
        reader = _Reader(name, is_package, str(path.relative_to(root)), modules)
        reader.visit(ast.parse(path.read_text(), str(path)))
        graph[name] = reader.edges
    return graph


def find_cycles(graph: dict[str, list[Edge]]) -> list[tuple[list[Edge], set[str]]]:
    """For each strongly connected group of modules (Tarjan): one cycle through it, as
    its edges, and every module of the group."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, []):
            if edge.target not in index:
                connect(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [(_cycle_in(group, graph), group) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """A shortest way round from the group's first module back to itself."""
    start = min(group)
    paths: dict[str, list[Edge]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for edge in graph.get(node, []):
            if edge.target not in group:
                continue
            if edge.target == start:
                return [*paths[node], edge]
            if edge.target not in paths:
                paths[edge.target] = [*paths[node], edge]
                queue.append(edge.target)
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def describe(cycle: list[Edge], group: set[str]) -> str:
    names = " -> ".join([cycle[0].source, *(edge.target for edge in cycle)])
    steps = "\n".join(f"    {e.source} -> {e.target}: {e.where}" for e in cycle)
    more = sorted(group - {e.source for e in cycle})
    return f"{names}\n{steps}" + (f"\n    also in this tangle: {', '.join(more)}" if more else "")


def test_no_import_cycle() -> None:
    graph = import_graph(REPO)
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(*c) for c in cycles)


def test_the_graph_sees_every_kind_of_import() -> None:
    """Guards the test above against reading too little: it must see this tree's known
    function-local, TYPE_CHECKING and relative imports and the lazy command table."""
    graph = import_graph(REPO)
    edges: dict[tuple[str, str], str] = {}
    for edge in (e for module_edges in graph.values() for e in module_edges):
        edges[edge.source, edge.target] = edges.get((edge.source, edge.target), "") + edge.where
    assert "guest" in graph and "hostrun" in graph and "initbuilder.loader.search" in graph
    assert (("initbuilder.loader.binaries", "initbuilder.loader.closure") in edges)
    assert "inside build_image()" in edges[("initbuilder.spec", "initbuilder.loader.binaries")]
    assert "under TYPE_CHECKING" in edges[("initbuilder.hostfiles", "initbuilder.loader.elf")]
    assert "named by a string" in edges[("initbuilder.cli", "initbuilder.cli.build")]
    assert sum(len(e) for e in graph.values()) > 150


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("hidden", [
    "def f():\n    from pkg.a import x\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n",
    "try:\n    import pkg.a.x\nexcept ImportError:\n    pass\n",
])
def test_a_cycle_is_found_however_the_import_is_hidden(tmp_path: Path, hidden: str) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from ..c import y\n",
        "pkg/c.py": hidden,
    })
    cycles = find_cycles(import_graph(tmp_path, ("pkg",)))
    assert len(cycles) == 1
    text = describe(*cycles[0])
    assert text.splitlines()[0] == "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a", text
    assert "pkg/c.py:" in text


def test_a_package_reexporting_its_submodules_is_no_cycle(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "from pkg.api import Machine\n",
        "pkg/api.py": "from pkg.session import run\nclass Machine: ...\n",
        "pkg/session.py": "def run(): ...\n",
    })
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == []
    _write(tmp_path, {"pkg/session.py": "from pkg import Machine\n"})
    assert len(find_cycles(import_graph(tmp_path, ("pkg",)))) == 1
