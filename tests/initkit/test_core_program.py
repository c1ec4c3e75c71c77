"""The console scripts' guard (initkit/program.py): a Ctrl-C while the command's modules
are still being imported is one line and exit 130, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Raises KeyboardInterrupt where a Ctrl-C would land: inside the import of the CLI.
INTERRUPT_THE_IMPORT = """
import builtins, sys
real = builtins.__import__
def interrupted(name, *args, **kwargs):
    if name == sys.argv[1]:
        raise KeyboardInterrupt
    return real(name, *args, **kwargs)
builtins.__import__ = interrupted
module = __import__(sys.argv[2], fromlist=["main"])
module.main()
"""


@pytest.mark.parametrize(("command", "cli"), [("hostrun", "hostrun.cli"),
                                              ("initbuilder", "initbuilder.cli")])
def test_an_interrupt_while_loading_is_one_line(command: str, cli: str) -> None:
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_THE_IMPORT, cli,
                           f"{command}.program", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stderr, proc.stdout) == (130, f"{command}: interrupted\n", "")


@pytest.mark.parametrize("command", ["hostrun", "initbuilder"])
def test_the_console_scripts_go_through_the_guard(command: str) -> None:
    script = subprocess.run(["sh", "-c", f'cat "$(command -v {command})"'],
                            capture_output=True, text=True, check=True).stdout
    assert f"from {command}.program import main" in script
    assert subprocess.run([command, "--help"], capture_output=True,
                          check=False).returncode == 0
