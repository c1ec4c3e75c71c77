"""hostrun's kernel command line read back by the guest's own code: guest/cmdline.py's
parser and guest/plan.py's planner, exactly what the init runs at boot. Whatever hostrun
writes must come back as exactly what the user asked for; what cannot is refused before
a VM boots, with a message naming the input."""

from __future__ import annotations

from unittest.mock import ANY

import pytest
from click.testing import CliRunner

from guest import contract
from guest import plan as guest_plan
from guest.cmdline import parse
from hostrun import cli
from hostrun.action import Action, action_key, kernel_cmdline, without_actions
from hostrun.exitcodes import ExitCode
from initkit.errors import InitkitError

NONCE = "0123456789abcdef"
SHELL = ("/bin/sh",)
# What the VMMs put first (QEMU under TCG: the longest).
DEFAULTS = ["console=ttyS0", "panic=-1", "pci=off", "cryptomgr.notests",
            "tsc_early_khz=2592822"]


def guest_reads(action: Action | None, extra: str = "", *,
                echo: bool = True) -> guest_plan.Plan:
    """The plan the guest init makes from the line hostrun writes."""
    line = kernel_cmdline(defaults=DEFAULTS, nonce=NONCE, verbose=False, action=action,
                          extra=extra, echo=echo)
    raw = line.encode("utf-8", "surrogateescape") + b"\n"  # as /proc/cmdline has it
    plan = guest_plan.make_plan(parse(raw), shell=SHELL, environ={})
    assert plan.nonce == NONCE and plan.echo is echo and not plan.warnings
    return plan


AWKWARD = [
    "ls /nix/store | wc -l",
    "echo a  b\tc",  # runs of spaces and a tab, kept as they are
    " leading and trailing ",
    "a=b==c",  # '=' in the value: only the first one splits
    "=x",
    "x=",
    "--",  # would end the kernel's part as a word of its own
    "-- tvix.find",
    "tvix.find",  # a key as the value is no word of its own
    "foo\u2003tvix.find",  # an em space: no space to the kernel, one to str.isspace
    "non\u00a0breaking",  # U+00A0 is C2 A0 in UTF-8, and A0 is a space to the kernel
    "dagger \u2020 and \u4e00",  # characters with an 0xA0 byte inside
    "ünïcödé ✓",
    "echo \"quoted\"",  # double quotes that pair up, with no space outside them
    "'single' quotes and $(subshells) `and` \\backslashes",
    "printf 'one\\n'\necho two",  # a newline (it survives QEMU and the kernel: e2e)
    "undecodable \udcff byte",  # a byte that is not UTF-8, as surrogateescape has it
    "x" * 1800,  # long, but within what the kernel takes
]


@pytest.mark.parametrize("command", AWKWARD)
def test_run_commands_arrive_exactly(command: str) -> None:
    action = guest_reads(Action("run", command=command)).action
    assert action == guest_plan.Spawn((*SHELL, "-c", command), guest_plan.child_env({}),
                                      "command")


@pytest.mark.parametrize("command", AWKWARD)
def test_init_paths_arrive_exactly(command: str) -> None:
    action = guest_reads(Action("init", command=command)).action
    assert isinstance(action, guest_plan.SwitchRoot) and action.argv[0] == command


@pytest.mark.parametrize("argv", [
    ("/nix/store/x-hello/bin/hello",),
    ("/bin/prog", "-v", "3", "a=b", "--", "tvix.find"),
    ("/bin/prog", "\u00fcn\u00efc\u00f6d\u00e9", "\u2020", '"q"', "'s'"),
    ("/bin/prog", *["arg"] * 300),
])
def test_exec_argv_arrives_exactly(argv: tuple[str, ...]) -> None:
    action = guest_reads(Action("exec", argv=argv)).action
    assert isinstance(action, guest_plan.Spawn) and action.argv == argv


@pytest.mark.parametrize("argv", [(), ("/bin/sh",), ("/nix/store/x-bash/bin/bash", "-l")])
def test_shell_arrives_exactly(argv: tuple[str, ...]) -> None:
    action = guest_reads(Action("shell", argv=argv)).action
    assert isinstance(action, guest_plan.Spawn) and action.what == "shell"
    assert action.argv == (argv or SHELL)


def test_find_and_the_boot_keys_arrive() -> None:
    plan = guest_reads(Action("find"), echo=False)
    assert plan.action == guest_plan.ListTree(contract.STORE)


@pytest.mark.parametrize("extra", [
    "loglevel=3 foo=\"a b\"",
    "foo\u2003tvix.find",  # one word to the guest, hence no action
    "  \t ",
    "-- single",  # init's arguments: the guest reads its keys there too
])
def test_extra_words_leave_the_action_alone(extra: str) -> None:
    action = guest_reads(Action("exec", argv=("/bin/true",)), extra=without_actions(extra))
    assert isinstance(action.action, guest_plan.Spawn)
    assert action.action.argv == ("/bin/true",)


@pytest.mark.parametrize(("extra", "key"), [
    ("foo\u2003tvix.find", None),  # str.isspace would see tvix.find
    ("foo\u00a0tvix.find", contract.FIND_KEY),  # the kernel sees two words
    ('x="a tvix.find"', None),
    ("tvix.exec=/x tvix.shell", contract.SHELL_KEY),
])
def test_the_host_sees_the_action_the_guest_will_take(extra: str, key: str | None) -> None:
    assert action_key(extra) == key
    assert parse(extra.encode()).first_of(contract.ACTION_KEYS) == key


@pytest.mark.parametrize(("action", "words"), [
    (Action("run", command='echo "a'), "double quotes"),  # an odd one leaves it open
    (Action("run", command='echo "a b" c'), "double quotes"),  # a space outside them
    (Action("run", command='"'), "double quotes"),
    (Action("run", command="a\0b"), "NUL"),
    (Action("run", command=""), "non-empty"),
    (Action("run", command=" \t"), "non-empty"),
    (Action("init", command=""), "non-empty"),
    (Action("run", command="lone \ud800 surrogate"), "cannot be carried"),
    (Action("exec", argv=()), "needs a program"),
    (Action("exec", argv=("/bin/prog", "two words")), "whitespace"),
    (Action("exec", argv=("/bin/prog", "")), "empty"),
    (Action("exec", argv=("/bin/prog", "em\u2003space")), "whitespace"),  # guest splits it
    (Action("shell", argv=("/bin/sh -l",)), "whitespace"),
    (Action("run", command="x" * 2100), "2047"),
])
def test_what_the_guest_could_not_read_back_is_refused(action: Action, words: str) -> None:
    with pytest.raises(InitkitError, match=words):
        kernel_cmdline(defaults=DEFAULTS, nonce=NONCE, verbose=False, action=action)


@pytest.mark.parametrize(("extra", "words"), [
    ('foo="bar', "unclosed double quote"),  # it would swallow the action word
    (f"initkit.nonce={'f' * 16}", "initkit.nonce"),
    ("tvix.tag=other", "tvix.tag"),
    ("tvix.find", "action word"),  # not dropped (without_actions): it would win
    ("a\0b", "NUL"),
    ("x=" + "y" * 2000, "2047"),
])
def test_extra_words_that_would_change_the_run_are_refused(extra: str, words: str) -> None:
    with pytest.raises(InitkitError, match=words):
        kernel_cmdline(defaults=DEFAULTS, nonce=NONCE, verbose=False,
                       action=Action("exec", argv=("/bin/true",)), extra=extra)


def test_a_tag_other_than_the_default_is_passed_on() -> None:
    line = kernel_cmdline(defaults=[], nonce=NONCE, verbose=False, action=Action("find"),
                          tag="store2")
    assert parse(line.encode()).value(contract.TAG_KEY) == "store2"
    plan = guest_plan.make_plan(parse(line.encode()), shell=SHELL, environ={})
    assert plan.steps[-1] == guest_plan.Mount("store2", contract.STORE, "virtiofs",
                                              guest_plan.MS_RDONLY, fatal=True, hint=ANY)


def test_the_cli_refuses_before_any_work() -> None:
    """No kernel, no store: the command line is the first thing checked (a given
    --initrd may serve no control channel, so --run rides the kernel command line)."""
    result = CliRunner().invoke(cli.main, ["--kernel", "/nonexistent", "--store",
                                           "/nonexistent", "--initrd", "/nonexistent",
                                           "--run", 'echo "a'])
    assert result.exit_code == ExitCode.USER_ERROR
    assert "--run value" in result.output and "double quotes" in result.output
    assert "Traceback" not in result.output


def test_over_the_channel_any_command_passes_the_command_line_check() -> None:
    """hostrun's own initrd: --run goes over the channel, so quotes are no longer refused;
    the next check (the kernel) is what stops this one."""
    result = CliRunner().invoke(cli.main, ["--kernel", "/nonexistent", "--store",
                                           "/nonexistent", "--run", 'echo "a'])
    assert result.exit_code == ExitCode.USER_ERROR
    assert "--kernel /nonexistent" in result.output, result.output


def test_an_action_the_guest_would_not_see_is_nothing_to_do() -> None:
    result = CliRunner().invoke(cli.main, [], env={"CH_CMDLINE": "foo\u2003tvix.find"})
    assert result.exit_code == ExitCode.USER_ERROR
    assert "nothing to do" in result.output
