"""From the user's words to a run: actions on the command line, VMM and accelerator
choice, the seed's environment variables, and the messages for what cannot work."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest
from click.testing import CliRunner, Result

from guest.cmdline import words
from hostrun import cli, hostcpu, plan
from hostrun.action import Action, action_key, kernel_cmdline, without_actions
from hostrun.exitcodes import ExitCode, exit_code_for_host_signal
from hostrun.vmm import CloudHypervisor, Qemu
from initkit.errors import InitkitError


@pytest.mark.parametrize(("action", "word"), [
    (Action("find"), "tvix.find"),
    (Action("shell"), "tvix.shell"),
    (Action("exec", argv=("/nix/store/x/bin/hello",)), "tvix.exec=/nix/store/x/bin/hello"),
    (Action("exec", argv=("/bin/prog", "-v", "3")), 'tvix.exec="/bin/prog -v 3"'),
    (Action("run", command="ls /nix/store | wc -l"), 'tvix.run="ls /nix/store | wc -l"'),
    (Action("init", command="/nix/store/x/init"), "init=/nix/store/x/init"),
])
def test_action_words(action: Action, word: str) -> None:
    assert action.cmdline_word() == word
    assert [raw for raw, _ in words(word)] == [word]


def test_cmdline_order_and_quiet() -> None:
    line = kernel_cmdline(defaults=["console=ttyS0"], nonce="ab" * 8, verbose=False,
                          action=Action("find"), extra="foo=1")
    assert line == ("console=ttyS0 quiet printk.time=1 initkit.nonce=abababababababab "
                    "foo=1 tvix.find")
    assert "quiet" not in kernel_cmdline(defaults=[], nonce="0" * 16, verbose=True,
                                         action=None)


def test_flag_action_beats_ch_cmdline_action() -> None:
    extra = 'tvix.shell loglevel=3 tvix.run="echo hi" init=/x  "a=b c"'
    assert without_actions(extra) == 'loglevel=3 "a=b c"'


@pytest.mark.parametrize(("line", "key"), [
    ("tvix.run=ls tvix.shell", "tvix.shell"), ("tvix.shell tvix.find", "tvix.find"),
    ("init=/x tvix.exec=/y", "tvix.exec"), ("quiet", None),
    ('x="tvix.find" tvix.run=ls', "tvix.run"),  # a quoted value is no word of its own
])
def test_guest_action_key_follows_the_guest_order(line: str, key: str | None) -> None:
    assert action_key(line) == key


def test_exit_codes_for_host_signals() -> None:
    assert exit_code_for_host_signal(2) == ExitCode.INTERRUPTED
    assert exit_code_for_host_signal(15) == ExitCode.TERMINATED
    assert (int(ExitCode.INTERRUPTED), int(ExitCode.TERMINATED)) == (130, 143)
    assert exit_code_for_host_signal(1) == 129


class SetHost(Protocol):
    """What the host fixture gives: pretend these VMMs and this /dev/kvm."""

    def __call__(self, *, kvm: bool, ch: bool) -> None: ...


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> SetHost:
    """Pretend a host: which VMMs are installed and whether /dev/kvm opens."""

    def set_host(*, kvm: bool, ch: bool) -> None:
        monkeypatch.setattr(hostcpu, "kvm_opens", lambda device="/dev/kvm": kvm)
        monkeypatch.setattr(hostcpu, "hypervisor_device", lambda: "/dev/kvm" if kvm else None)
        monkeypatch.setattr(hostcpu, "host_tsc_khz", lambda: 2_000_000)
        monkeypatch.setattr(hostcpu, "kvm_boots", lambda qemu, vmlinux: kvm)
        installed = {"qemu-system-x86_64": "/usr/bin/qemu-system-x86_64"}
        if ch:
            installed["cloud-hypervisor"] = "/usr/bin/cloud-hypervisor"
        monkeypatch.setattr("hostrun.plan.shutil.which", installed.get)
        monkeypatch.setattr("hostrun.vmm.shutil.which", installed.get)

    return set_host


def test_auto_prefers_cloud_hypervisor_with_kvm(host: SetHost,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    host(kvm=True, ch=True)
    monkeypatch.setattr(plan, "_cloud_hypervisor", lambda accel: CloudHypervisor())
    vmm, accel = plan.choose_vmm("auto", "auto")
    assert isinstance(vmm, CloudHypervisor) and accel == "kvm"


@pytest.mark.parametrize(("kvm", "ch", "accel", "expected"), [
    (False, True, "auto", "tcg"),  # no KVM: QEMU emulates
    (True, False, "auto", "kvm"),  # no cloud-hypervisor: QEMU with KVM
    (True, True, "tcg", "tcg"),  # TCG asked for: only QEMU can
])
def test_auto_falls_back_to_qemu(host: SetHost, kvm: bool, ch: bool, accel: str,
                                 expected: str) -> None:
    host(kvm=kvm, ch=ch)
    vmm, chosen = plan.choose_vmm("auto", accel)
    assert isinstance(vmm, Qemu) and chosen == expected
    assert vmm.tsc_khz == (2_000_000 if expected == "tcg" else None)


def test_cloud_hypervisor_without_kvm_says_so(host: SetHost) -> None:
    host(kvm=False, ch=True)
    with pytest.raises(InitkitError, match=r"needs /dev/kvm \(or /dev/mshv\)"):
        plan.choose_vmm("cloud-hypervisor", "auto")


def test_cloud_hypervisor_cannot_emulate(host: SetHost) -> None:
    host(kvm=True, ch=True)
    with pytest.raises(InitkitError, match="no emulation"):
        plan.choose_vmm("cloud-hypervisor", "tcg")


def test_kvm_asked_for_but_missing(host: SetHost) -> None:
    host(kvm=False, ch=False)
    with pytest.raises(InitkitError, match="--accel tcg"):
        plan.choose_vmm("qemu", "kvm")


def test_cloud_hypervisor_gets_vmlinux_before_v39(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 64)
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("initbuilder.kernels.formats.extract_vmlinux",
                        lambda k: tmp_path / "vmlinux")
    assert plan.kernel_for(CloudHypervisor(version=(39, 0)), bzimage) == bzimage
    assert plan.kernel_for(CloudHypervisor(version=(38, 0)), bzimage) == tmp_path / "vmlinux"
    elf = tmp_path / "vmlinux.elf"
    elf.write_bytes(b"\x7fELF" + b"\0" * 64)
    assert plan.kernel_for(Qemu(), elf) == elf


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli.main, list(args), env=env)


def test_cli_needs_an_action(tmp_path: Path) -> None:
    result = invoke("--store", str(tmp_path), env={"CH_CMDLINE": ""})
    assert result.exit_code == ExitCode.USER_ERROR
    assert "nothing to do" in result.output


@pytest.mark.parametrize("flags", [("--find", "--run", "true"), ("--find", "--shell")])
def test_cli_one_action_only(flags: tuple[str, ...]) -> None:
    result = invoke(*flags)
    assert result.exit_code == ExitCode.USER_ERROR
    assert "pass one" in result.output


def test_cli_args_only_after_exec() -> None:
    result = invoke("--find", "stray")
    assert result.exit_code == ExitCode.USER_ERROR
    assert "only --exec PATH takes arguments" in result.output


def test_cli_env_numbers_checked(tmp_path: Path) -> None:
    result = invoke("--find", env={"CH_NUM_CPUS": "two"})
    assert result.exit_code == ExitCode.USER_ERROR
    assert "$CH_NUM_CPUS='two'" in result.output


def test_cli_passes_the_seed_env_and_flags_win(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    seen: list[plan.Request] = []

    def fake_plan(request: plan.Request) -> None:
        seen.append(request)
        raise InitkitError("stop here")

    monkeypatch.setattr(plan, "plan", fake_plan)
    env = {"CH_NUM_CPUS": "2", "CH_MEM_SIZE": "1G", "CH_CMDLINE": "tvix.shell loglevel=3"}
    invoke("--find", env=env)
    invoke("--find", "--cpus", "4", "--memory", "256M", "--cmdline", "x=1", env=env)
    invoke(env=env)
    assert [(r.cpus, r.memory_mib, r.extra_cmdline, r.action) for r in seen] == [
        (2, 1024, "loglevel=3", Action("find")),
        (4, 256, "x=1", Action("find")),
        (2, 1024, "tvix.shell loglevel=3", None),
    ]


def test_auto_does_not_trust_a_kvm_that_only_opens(host: SetHost, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """/dev/kvm opens but a probe boot hangs (as on nested hosts): TCG, no cloud-hypervisor."""
    host(kvm=True, ch=True)
    monkeypatch.setattr(hostcpu, "kvm_boots", lambda qemu, vmlinux: False)
    elf = tmp_path / "vmlinux"
    elf.write_bytes(b"\x7fELF" + b"\0" * 64)
    vmm, accel = plan.choose_vmm("auto", "auto", elf)
    assert isinstance(vmm, Qemu) and accel == "tcg"
    # Asked for explicitly, KVM is used without a probe.
    assert plan.choose_vmm("qemu", "kvm", elf)[1] == "kvm"


@pytest.mark.parametrize(("script", "boots"), [
    ("echo '[    0.000000] Linux version 6.1.0'; sleep 60", True),
    ("sleep 60", False),  # a hung guest prints nothing
    ("exit 1", False),  # QEMU refused to start
])
def test_kvm_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str,
                   boots: bool) -> None:
    """The probe's logic with a stand-in QEMU (whether KVM hangs cannot be chosen)."""
    import time

    fake = tmp_path / "qemu"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(hostcpu, "PROBE_SECONDS", 1.0)
    started = time.monotonic()
    assert hostcpu._probe_kvm(str(fake), "/vmlinux") is boots
    assert time.monotonic() - started < 5


def test_piped_input_asks_the_guest_not_to_echo_it() -> None:
    quiet = kernel_cmdline(defaults=[], nonce="0" * 16, verbose=False, action=None, echo=False)
    assert "initkit.noecho" in quiet.split()
    assert "initkit.noecho" not in kernel_cmdline(defaults=[], nonce="0" * 16, verbose=False,
                                                  action=None).split()


@pytest.mark.parametrize("value", ["abc", "0", "-3"])
def test_a_bad_silence_notice_is_refused_before_any_work(
        value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTRUN_SILENCE_NOTICE", value)
    # The kernel does not exist either: the variable is the first thing checked.
    request = plan.Request(kernel=tmp_path / "no-kernel", store=tmp_path)
    with pytest.raises(InitkitError, match=r"\$HOSTRUN_SILENCE_NOTICE=.*positive number"):
        plan.plan(request)
