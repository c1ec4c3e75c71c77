"""`initbuilder closure`: the readable tree, --json, errors as one line, the shared options."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from click.testing import CliRunner, Result
from elf_fixtures import Builder

from initbuilder.cli.closure import closure, closure_options


def _invoke(*args: str) -> Result:
    """``initbuilder closure ARGS`` once the group registers it, else the command itself."""
    from initbuilder.cli import main

    if "closure" in main.commands:
        return CliRunner().invoke(main, ["closure", *args])
    return CliRunner().invoke(closure, list(args))


def test_json_lines_per_file(build: Builder) -> None:
    root = build.root
    build.lib("lib/libone.so")
    exe = build.exe("bin/prog", needed=["libone.so"], runpath="$ORIGIN/../lib")
    result = _invoke("--json", str(exe), "/usr/bin/true")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert set(first) == {"file", "interpreter", "libraries", "missing"}
    assert first["file"] == str(exe)
    assert first["interpreter"] == "/lib64/ld-linux-x86-64.so.2"
    one = first["libraries"][0]
    assert one == {"name": "libone.so", "path": f"{root}/bin/../lib/libone.so",
                   "needed_by": [str(exe)]}
    libc = next(lib for lib in first["libraries"] if lib["name"] == "libc.so.6")
    assert os.path.realpath(libc["path"]) == os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")
    assert first["missing"] == []
    assert json.loads(lines[1])["file"] == "/usr/bin/true"


def test_tree_names_the_rule(build: Builder) -> None:
    build.lib("lib/libone.so")
    exe = build.exe("bin/prog", needed=["libone.so"], runpath="$ORIGIN/../lib")
    result = _invoke(str(exe))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{exe} (interpreter /lib64/ld-linux-x86-64.so.2)"
    assert f"    libone.so => {build.root}/bin/../lib/libone.so [RUNPATH of {exe}]" in lines
    assert any(line.startswith("    libc.so.6 => ") and "[ld.so.cache]" in line
               for line in lines)


def test_missing_library_fails_with_one_line_unless_allowed(build: Builder) -> None:
    build.lib("lib/libmid.so", needed=["libgone.so.1"])
    exe = build.exe("bin/prog", needed=["libmid.so"], runpath="$ORIGIN/../lib")
    failed = _invoke("--json", str(exe))
    assert failed.exit_code == 2
    error = [line for line in failed.output.splitlines() if "error:" in line]
    assert len(error) == 1
    assert f"libgone.so.1: not found (needed by {exe} -> libmid.so -> libgone.so.1)" \
        in error[0]
    allowed = _invoke("--allow-missing", str(exe))
    assert allowed.exit_code == 0
    assert "libgone.so.1 => not found" in allowed.output


def test_not_an_elf_file_is_a_user_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    result = _invoke(str(text))
    assert result.exit_code == 2
    assert "not an ELF file" in result.output and "Traceback" not in result.output


def test_closure_options_for_the_build_command(build: Builder) -> None:
    build.lib("extra/libx.so")
    seen: dict[str, object] = {}

    @click.command()
    @closure_options
    def fake_build(**kwargs: object) -> None:
        seen.update(kwargs)

    result = CliRunner().invoke(fake_build, [
        "--binary", "python3", "--binary", "/bin/sh", "--root", str(build.root),
        "--library-path", "/a:/b", "--library-path", "/c", "--dlopen", "suggested",
        "--allow-missing"])
    assert result.exit_code == 0, result.output
    assert seen == {"binaries": ("python3", "/bin/sh"), "root": build.root,
                    "library_path": ("/a:/b", "/c"), "dlopen": "suggested",
                    "allow_missing": True}
    bad = CliRunner().invoke(fake_build, ["--dlopen", "sometimes"])
    assert bad.exit_code == 2
