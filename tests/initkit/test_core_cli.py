"""initkit.cli and initkit.process: errors as one line with their exit code, and the
one way processes are started (argv logged, "not found" a user error)."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hostrun.exitcodes import ExitCode
from initkit import process
from initkit.cli import Command
from initkit.errors import ENVIRONMENT_EXIT, USER_ERROR_EXIT, EnvironmentFault, InitkitError


def _invoke(raise_: BaseException) -> click.testing.Result:
    @click.command(cls=Command)
    def tool() -> None:
        raise raise_

    return CliRunner().invoke(tool, [], prog_name="tool")


def test_user_errors_exit_2_and_machine_faults_120() -> None:
    result = _invoke(InitkitError("--x: wrong; pass another"))
    assert (result.exit_code, result.output) == (USER_ERROR_EXIT,
                                                 "tool: error: --x: wrong; pass another\n")
    result = _invoke(EnvironmentFault("disk full"))
    assert (result.exit_code, result.output) == (ENVIRONMENT_EXIT, "tool: error: disk full\n")
    assert ExitCode.USER_ERROR == USER_ERROR_EXIT and ExitCode.ENVIRONMENT == ENVIRONMENT_EXIT


def test_ctrl_c_is_one_line_and_a_shell_s_code() -> None:
    """click would say "Aborted!" and exit 1: a ^C that lands before hostrun's own
    handler is up (while it plans the run) gave the soak a code no table documents."""
    result = _invoke(KeyboardInterrupt())
    assert (result.exit_code, result.output) == (130, "tool: interrupted\n")


def test_an_unexplained_full_disk_is_still_one_line() -> None:
    copy = OSError(errno.ENOSPC, "No space left on device", "/src/file", None, "/dst/file")
    result = _invoke(copy)
    assert result.exit_code == ENVIRONMENT_EXIT
    assert result.output.startswith("tool: error: cannot write /dst/file: no space left on ")
    assert result.output.count("\n") == 1


def test_usage_errors_are_one_line_naming_where_help_is(tmp_path: Path) -> None:
    from initkit.cli import Group

    @click.group(cls=Group)
    def tool() -> None:
        pass

    @tool.command(cls=Command)
    @click.option("--cache", type=click.Path(file_okay=False))
    @click.argument("image", type=click.Path(exists=True))
    def look(cache: str | None, image: str) -> None:
        pass

    (tmp_path / "file").write_text("x")
    for args, message in (
        (["look", str(tmp_path / "missing")],
         f"Invalid value for 'IMAGE': Path '{tmp_path / 'missing'}' does not exist."),
        (["look", "--cache", str(tmp_path / "file"), str(tmp_path)],
         f"Invalid value for '--cache': Directory '{tmp_path / 'file'}' is a file."),
        (["look"], "Missing argument 'IMAGE'."),
        (["nope"], "No such command 'nope'."),
    ):
        result = CliRunner().invoke(tool, args, prog_name="tool")
        where = "tool look" if args[0] == "look" else "tool"
        assert (result.exit_code, result.output) == (
            USER_ERROR_EXIT, f"tool: error: {message} (see {where} --help)\n"), args


def test_any_other_os_error_is_a_bug_and_keeps_its_traceback() -> None:
    result = _invoke(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"))
    assert isinstance(result.exception, FileNotFoundError)


def test_start_logs_the_argv_and_returns_the_running_child(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    with caplog.at_level(logging.DEBUG, logger="initkit.process"):
        proc = process.start([sys.executable, "-c", "print('hi there')"],
                             stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert out == b"hi there\n" and proc.returncode == 0
    assert f"start: {sys.executable} -c 'print('\"'\"'hi there'\"'\"')'" in caplog.text


def test_start_of_a_missing_program_is_one_line_with_the_hint(tmp_path: Path) -> None:
    with pytest.raises(InitkitError) as caught:
        process.start(["/nonexistent/daemon"], what="virtiofs daemon",
                      hint="install it or choose another with --daemon")
    assert str(caught.value) == ("cannot run virtiofs daemon '/nonexistent/daemon': not "
                                 "found; install it or choose another with --daemon")
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)  # no execute bit: refused even to root
    with pytest.raises(InitkitError, match=r"cannot run '.*plain': permission denied"):
        process.start([plain])


def test_a_failing_preexec_is_the_callers_to_report() -> None:
    def fail() -> None:
        raise RuntimeError("cannot set up the child")

    with pytest.raises(subprocess.SubprocessError):
        process.start([sys.executable, "-c", "pass"], preexec_fn=fail)
