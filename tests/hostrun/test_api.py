"""hostrun's Python API (hostrun.api, re-exported by hostrun): cheap to import, and the
same requests as the CLI for the same words."""

from __future__ import annotations

import subprocess
import sys
import time
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
            "hostrun.Machine, hostrun.CommandFailed, hostrun.ChannelError; "
            "print(sorted(m for m in ('click', 'pytest', '_pytest') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_package_names_are_the_api_s() -> None:
    assert hostrun.VmRunner is api.VmRunner and hostrun.VmResult is api.VmResult
    assert hostrun.ExitStatus is ExitStatus
    assert hostrun.Machine is api.Machine and hostrun.CommandFailed is api.CommandFailed
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


def test_machine_takes_hostrun_s_choices_with_the_same_errors(
        requests: list[plan.Request]) -> None:
    with pytest.raises(InitkitError, match="stop here"):
        api.Machine(store="/some/store", kernel="minimal", cpus=2, memory="1G",
                    cmdline="loglevel=3 tvix.find", vmm="qemu", accel="tcg")
    (request,) = requests
    assert request.action is None and request.extra_cmdline == "loglevel=3"
    assert (request.kernel, request.store, request.cpus, request.memory_mib) == (
        Path("minimal"), Path("/some/store"), 2, 1024)
    with pytest.raises(InitkitError, match="memory size"):
        api.Machine(memory="lots")


def test_a_failed_expectation_shows_the_command_status_and_both_streams() -> None:
    from hostrun.channel import ExecResult

    result = ExecResult(argv=(b"/bin/sh", b"-c", b"exit 3"), returncode=3, stdout=b"out",
                        stderr=b"err\n", duration=0.1)
    text = api.describe_result("expected success", result)
    assert text == ("expected success: ['/bin/sh' '-c' 'exit 3'] ended with exit status 3\n"
                    "--- stdout ---\nout\n--- stderr ---\nerr\n")


def test_a_session_that_ends_before_booting_fails_at_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A boot that ends before the VMM started (a daemon dead at start) is BootFailed with
    its reason, at once, every time: the waiter must not miss the session thread's end
    (it once looked at Thread.is_alive(), True for a moment after the last notify, and
    slept its whole timeout)."""
    from hostrun.api import BootFailed, Machine
    from hostrun.exitcodes import ExitCode
    from hostrun.session import Outcome, RunSpec
    from hostrun.vmm import Qemu

    monkeypatch.setattr("hostrun.session.run", lambda spec, **options: Outcome(
        ExitCode.DAEMON_FAILED, error="virtiofs daemon exited with status 1 before serving"))
    # The thread outlives its last notify by a while, as a preempted one may.
    session = Machine._session

    def lingering(self: Machine) -> None:
        session(self)
        time.sleep(0.3)

    monkeypatch.setattr(Machine, "_session", lingering)
    spec = RunSpec(kernel=tmp_path / "k", initrd=tmp_path / "i", vmm=Qemu(binary="qemu"),
                   daemon=None)  # type: ignore[arg-type]  # never started by the fake
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(BootFailed, match="before serving") as failed:
            Machine.from_spec(spec, timeout=60)
        assert failed.value.outcome is not None
        assert failed.value.outcome.code == ExitCode.DAEMON_FAILED
        assert time.monotonic() - started < 10
