"""`initbuilder closure`: what the dynamic loader would load for each FILE, and from where."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from initbuilder.loader.closure import Closure, LoadedObject, Resolver
from initbuilder.loader.search import DLOPEN_LEVELS
from initkit.cli import Command, setup_logging
from initkit.errors import InitkitError

F = TypeVar("F", bound=Callable[..., Any])
_INDENT = "    "


def resolution_options(func: F) -> F:
    """Add --root, --library-path (repeatable), --dlopen and --allow-missing; the function
    receives ``root: Path | None``, ``library_path: tuple[str, ...]``, ``dlopen: str``,
    ``allow_missing: bool``."""
    func = click.option(
        "--allow-missing", is_flag=True,
        help="Warn about libraries that cannot be found instead of failing.")(func)
    func = click.option(
        "--dlopen", type=click.Choice(list(DLOPEN_LEVELS)), default="recommended",
        show_default=True,
        help="Also add the libraries named by .note.dlopen notes at this priority or "
             "higher; the first soname alternative found wins.")(func)
    func = click.option(
        "--library-path", "library_path", multiple=True, metavar="DIR[:DIR...]",
        help="Search these directories as LD_LIBRARY_PATH would (after DT_RPATH, before "
             "DT_RUNPATH). Repeatable.")(func)
    func = click.option(
        "--root", type=click.Path(path_type=Path, file_okay=False, exists=True),
        help="Resolve inside this sysroot (a chroot, another distribution's tree) with its "
             "own ld.so.cache/ld.so.conf; paths are taken inside it.")(func)
    return func


def closure_options(func: F) -> F:
    """The options of ``initbuilder build`` for programs: --binary (repeatable; the
    function receives ``binaries: tuple[str, ...]``) plus resolution_options. Pass them
    on as ``add_binaries(image, binaries, root=, library_path=, dlopen=, allow_missing=)``."""
    func = resolution_options(func)
    func = click.option(
        "--binary", "binaries", multiple=True, metavar="PATH|NAME",
        help="A program (NAME is looked up on PATH) or shared object to pack with its "
             "interpreter and every library it loads; #! scripts bring their interpreter. "
             "Repeatable.")(func)
    return func


@click.command(cls=Command)
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per FILE per line: file, interpreter, libraries "
                   "(name, path, needed_by), missing (name, needed_by).")
@resolution_options
@click.option("-v", "--verbose", count=True, help="-v: what happens; -vv: more detail.")
def closure(files: tuple[str, ...], as_json: bool, root: Path | None,
            library_path: tuple[str, ...], dlopen: str, allow_missing: bool,
            verbose: int) -> None:
    """Show what the dynamic loader would load for each FILE and where it finds it.

    Follows glibc's ld.so rules (DT_RPATH, LD_LIBRARY_PATH, DT_RUNPATH, ld.so.cache,
    default directories, $ORIGIN/$LIB/$PLATFORM, glibc-hwcaps) without running anything.

    \b
    Examples:
      initbuilder closure /usr/bin/python3
      initbuilder closure --json /usr/bin/qemu-system-x86_64 | jq .
      initbuilder closure --root /srv/fedora /usr/bin/bash
    """
    setup_logging(verbose)
    resolver = Resolver(root, library_path, dlopen)
    problems: list[str] = []
    for file in files:
        result = resolver.resolve(file)
        if as_json:
            click.echo(json.dumps(result.to_json()))
        else:
            click.echo("\n".join(render_tree(result)))
        for missing in result.missing:
            problems.append(f"{missing.name}: {missing.reason} (needed by {missing.chain()})")
    if problems and not allow_missing:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise InitkitError(f"{problems[0]}{more}; install what is missing, name its "
                           "directory with --library-path, or pass --allow-missing")
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)


def render_tree(result: Closure) -> list[str]:
    """Who needs what, found where and by which rule, as an indented tree."""
    head = result.file
    if result.interpreter is not None:
        head += f" (interpreter {result.interpreter.path})"
    elif result.main.info is not None and not result.main.info.dynamic:
        head += " (statically linked)"
    lines = [head]
    _render_children(result.main, 1, lines, set())
    for missing in result.missing:
        if missing.needed_by and missing.needed_by[0] is result.main and \
                missing.reason.startswith("interpreter"):
            lines.append(f"{_INDENT}{missing.name} => {missing.reason}")
    for unmet in result.unmet:
        feature = unmet.feature
        lines.append(f"{_INDENT}dlopen feature {feature.feature!r} ({feature.priority}) of "
                     f"{unmet.owner.label}: none of {', '.join(feature.sonames)} found")
    return lines


def _render_children(obj: LoadedObject, depth: int, lines: list[str],
                     shown: set[int]) -> None:
    shown.add(id(obj))
    pad = _INDENT * depth
    for edge in obj.edges:
        target = edge.target
        via = ""
        if edge.feature is not None:
            via = f"; dlopen {edge.feature.feature!r}, {edge.feature.priority}"
        if target is None:
            lines.append(f"{pad}{edge.name} => not found")
            continue
        if target.path is None:
            lines.append(f"{pad}{edge.name} => the vDSO (no file)")
            continue
        if id(target) in shown or target.loader is not obj:
            lines.append(f"{pad}{edge.name} => {target.path} (loaded before)")
            continue
        lines.append(f"{pad}{edge.name} => {target.path} [{target.rule}{via}]")
        if target.baseline:
            lines.append(f"{pad}{_INDENT}(plain copy also packed: {target.baseline})")
        _render_children(target, depth + 1, lines, shown)
