"""hostrun's Python API (hostrun.api, re-exported by hostrun): cheap to import, and the
same requests as the CLI for the same words."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any  # the keyword arguments of each case differ

import pytest
from click.testing import CliRunner

import hostrun
from guest.contract import ExitStatus
from hostrun import api, cli, plan
from hostrun.action import Action
from initkit.errors import InitkitError


def test_the_package_gives_the_api_without_click_or_pytest() -> None:
    code = ("import sys, hostrun; hostrun.VmRunner, hostrun.VmResult, hostrun.ExitStatus; "
            "print(sorted(m for m in ('click', 'pytest', '_pytest') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_package_names_are_the_api_s() -> None:
    assert hostrun.VmRunner is api.VmRunner and hostrun.VmResult is api.VmResult
    assert hostrun.ExitStatus is ExitStatus
    with pytest.raises(AttributeError):
        hostrun.Nothing  # noqa: B018


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[plan.Request]:
    """The Requests that reach hostrun.plan.plan, which stops there."""
    seen: list[plan.Request] = []

    def fake_plan(request: plan.Request) -> None:
        seen.append(request)
        raise InitkitError("stop here")

    monkeypatch.setattr(plan, "plan", fake_plan)
    return seen


@pytest.mark.parametrize(("flags", "kwargs", "action"), [
    (["--find"], {"find": True}, Action("find")),
    (["--shell"], {"shell": True}, Action("shell")),
    (["--exec", "/bin/prog", "a", "b"], {"exec": ["/bin/prog", "a", "b"]},
     Action("exec", argv=("/bin/prog", "a", "b"))),
    (["--exec", "/bin/prog"], {"exec": "/bin/prog"}, Action("exec", argv=("/bin/prog",))),
    (["--run", "echo hi"], {"run": "echo hi"}, Action("run", command="echo hi")),
    (["--init", "/x/init"], {"init": "/x/init"}, Action("init", command="/x/init")),
])
def test_api_and_cli_ask_for_the_same_action(requests: list[plan.Request], flags: list[str],
                                             kwargs: dict[str, Any],
                                             action: Action) -> None:
    cmdline = "tvix.shell loglevel=3"  # the given action wins over the one in it
    CliRunner().invoke(cli.main, ["--cmdline", cmdline, *flags])
    with pytest.raises(InitkitError, match="stop here"):
        api.VmRunner().run(store=Path("/nix/store"), cmdline=cmdline, **kwargs)
    assert [(r.action, r.extra_cmdline) for r in requests] == [(action, "loglevel=3")] * 2


def test_run_wants_exactly_one_action(tmp_path: Path) -> None:
    runner = api.VmRunner()
    with pytest.raises(ValueError, match="exactly one"):
        runner.run(store=tmp_path)
    with pytest.raises(ValueError, match=r"\['find', 'run'\]"):
        runner.run(store=tmp_path, find=True, run="true")


def test_result_describes_itself() -> None:
    result = api.VmResult(137, b"partial\n", ExitStatus.killed(9), None, ("qemu",))
    assert result.status is not None and result.status.signal == 9
    assert result.describe() == "exit code 137\n--- console ---\npartial\n"
