"""guest.plan: which steps and which action each command line gives."""

from __future__ import annotations

from unittest.mock import ANY

import pytest

from guest import contract
from guest import plan as p
from guest.cmdline import parse
from guest.contract import NO_NONCE, NOT_FOUND, USAGE

ENV = {"HOME": "/", "TERM": "vt220", "LANG": "C"}
CLEAN_ENV = {"PATH": contract.DEFAULT_PATH, "HOME": "/", "TERM": "vt220"}
HELLO = "/nix/store/mdi7lvrn2mx7rfzv3fdq3v5yw8swiks6-hello-2.12.1/bin/hello"


def make(line: str, *, shell: tuple[str, ...] | None = ("/bin/sh",),
         modules: str | None = None) -> p.Plan:
    return p.make_plan(parse(line.encode()), modules=modules, shell=shell, environ=ENV)


def test_early_steps_start_with_devtmpfs_then_the_console() -> None:
    early = p.early_steps()
    assert early[0] == p.Mount("devtmpfs", "/dev", "devtmpfs", p.MS_NOSUID, "mode=0755")
    assert early[1] == p.Console("/dev/console")
    mounts = [s.target for s in early if isinstance(s, p.Mount)]
    assert mounts == ["/dev", "/proc", "/sys", "/tmp", "/run", "/dev/pts"]
    assert not any(s.fatal for s in early if isinstance(s, p.Mount))
    tmp = next(s for s in early if isinstance(s, p.Mount) and s.target == "/tmp")
    assert tmp.data == "mode=1777"


def test_modules_load_in_listed_order_then_the_store() -> None:
    listing = "# deps first\n/lib/modules/6.1/virtio.ko\n\n  /lib/modules/6.1/virtiofs.ko  \n"
    plan = make("tvix.find", modules=listing)
    assert plan.steps == (
        p.LoadModule("/lib/modules/6.1/virtio.ko"),
        p.LoadModule("/lib/modules/6.1/virtiofs.ko"),
        p.MakeDir("/nix/store"),
        p.Mount("tvix", "/nix/store", "virtiofs", p.MS_RDONLY, fatal=True, hint=ANY),
    )


def test_no_module_list_means_no_module_steps() -> None:
    assert not any(isinstance(s, p.LoadModule) for s in make("tvix.find").steps)
    assert contract.listed_paths("") == ()
    assert contract.listed_paths(None) == ()


def test_applet_list_is_linked_first_in_one_step() -> None:
    plan = p.make_plan(parse(b"tvix.find"), modules="/lib/modules/v/a.ko\n",
                       applets="/bin/ls\n\n# from busybox --list-full\n/usr/bin/env\n")
    assert plan.steps[:2] == (p.LinkAll(("/bin/ls", "/usr/bin/env"), "/bin/busybox"),
                              p.LoadModule("/lib/modules/v/a.ko"))
    assert not any(isinstance(s, p.LinkAll) for s in make("tvix.find").steps)


def test_tag_override() -> None:
    store = make("tvix.find tvix.tag=store2").steps[-1]
    assert isinstance(store, p.Mount)
    assert (store.source, store.fstype, store.flags) == ("store2", "virtiofs", p.MS_RDONLY)
    assert "store2" in store.hint


def test_empty_tag_falls_back_to_tvix() -> None:
    store = make("tvix.find tvix.tag=").steps[-1]
    assert isinstance(store, p.Mount) and store.source == "tvix"


def test_test_store_hook_binds_read_only() -> None:
    steps = make("tvix.find initkit.test.store=/teststore").steps
    assert steps[-2:] == (
        p.Mount("/teststore", "/nix/store", None, p.MS_BIND, fatal=True, hint=ANY),
        p.Mount("none", "/nix/store", None, p.MS_REMOUNT | p.MS_BIND | p.MS_RDONLY,
                fatal=True, hint=ANY),
    )


def test_find() -> None:
    assert make("tvix.find").action == p.ListTree("/nix/store")


def test_shell_default_is_the_initrds_shell() -> None:
    plan = make("tvix.shell")
    assert plan.action == p.Spawn(("/bin/sh",), CLEAN_ENV, "shell")
    busybox = make("tvix.shell", shell=("/bin/busybox", "sh"))
    assert busybox.action == p.Spawn(("/bin/busybox", "sh"), CLEAN_ENV, "shell")


def test_shell_program_given() -> None:
    plan = make("tvix.shell=/nix/store/x-bash/bin/bash", shell=None)
    assert plan.action == p.Spawn(("/nix/store/x-bash/bin/bash",), CLEAN_ENV, "shell")


def test_shell_without_a_shell_fails_127_and_says_how_to_fix() -> None:
    action = make("tvix.shell", shell=None).action
    assert isinstance(action, p.Fail) and action.status == NOT_FOUND
    assert "--busybox" in action.message


def test_shell_does_not_need_the_store() -> None:
    store = make("tvix.shell").steps[-1]
    assert isinstance(store, p.Mount) and not store.fatal


def test_exec_one_program_clean_environment() -> None:
    plan = make(f"tvix.exec={HELLO}")
    assert plan.action == p.Spawn((HELLO,), CLEAN_ENV, "program")
    assert isinstance(plan.action, p.Spawn) and "LANG" not in plan.action.env


def test_exec_with_quoted_arguments() -> None:
    plan = make(f'tvix.exec="{HELLO} --greeting  hi"')
    assert plan.action == p.Spawn((HELLO, "--greeting", "hi"), CLEAN_ENV, "program")


@pytest.mark.parametrize("line", ["tvix.exec", "tvix.exec=", 'tvix.exec="  "'])
def test_exec_without_a_program_is_a_usage_error(line: str) -> None:
    action = make(line).action
    assert isinstance(action, p.Fail) and action.status == USAGE


def test_run_goes_through_the_shell() -> None:
    plan = make('tvix.run="ls -la /nix/store"')
    assert plan.action == p.Spawn(("/bin/sh", "-c", "ls -la /nix/store"), CLEAN_ENV, "command")


def test_a_value_arrives_exactly_as_written() -> None:
    """Blanks around it included: the host checks its words by this rule (hostrun/action.py)."""
    plan = make('tvix.run=" cd /tmp; ls\n"')
    assert plan.action == p.Spawn(("/bin/sh", "-c", " cd /tmp; ls\n"), CLEAN_ENV, "command")


def test_run_without_a_shell_says_so_with_127() -> None:
    action = make("tvix.run=ls", shell=None).action
    assert isinstance(action, p.Fail) and action.status == NOT_FOUND
    assert "shell" in action.message and "--busybox" in action.message


@pytest.mark.parametrize("line", ["tvix.run=", 'tvix.run=" \t"', 'init="  "'])
def test_run_or_init_blank_is_a_usage_error(line: str) -> None:
    action = make(line).action
    assert isinstance(action, p.Fail) and action.status == USAGE


def test_init_switches_root_with_the_kernels_environment_and_init_args() -> None:
    plan = make("init=/nix/store/x-nixos-system/init console=ttyS0 -- single")
    assert plan.action == p.SwitchRoot("/sysroot", ("/nix/store/x-nixos-system/init", "single"),
                                       ENV)


def test_init_empty_is_a_usage_error() -> None:
    action = make("init=").action
    assert isinstance(action, p.Fail) and action.status == USAGE


def test_no_action_says_so_with_usage_status() -> None:
    plan = make("console=ttyS0")
    assert isinstance(plan.action, p.Fail) and plan.action.status == USAGE
    assert "no action" in plan.action.message
    store = plan.steps[-1]
    assert isinstance(store, p.Mount) and not store.fatal


@pytest.mark.parametrize(("line", "kind"), [
    (f"init=/x tvix.run=ls tvix.exec={HELLO} tvix.shell tvix.find", p.ListTree),
    (f"init=/x tvix.run=ls tvix.exec={HELLO} tvix.shell", p.Spawn),
    (f"init=/x tvix.run=ls tvix.exec={HELLO}", p.Spawn),
    ("init=/x tvix.run=ls", p.Spawn),
    ("init=/x", p.SwitchRoot),
])
def test_priority_is_find_shell_exec_run_init(line: str, kind: type) -> None:
    action = make(line).action
    assert isinstance(action, kind)
    what = {"tvix.shell": "shell", "tvix.exec": "program", "tvix.run": "command"}
    first = next(k for k in contract.ACTION_KEYS if k in line)
    if isinstance(action, p.Spawn):
        assert action.what == what[first]


@pytest.mark.parametrize("action_line", ["tvix.find", f"tvix.exec={HELLO}", "tvix.run=ls",
                                         "init=/nix/store/x/init"])
def test_store_is_required_for_every_non_interactive_action(action_line: str) -> None:
    store = make(action_line).steps[-1]
    assert isinstance(store, p.Mount) and store.fatal


def test_nonce_valid_absent_and_malformed() -> None:
    assert make("tvix.find initkit.nonce=0123456789abcdef").nonce == "0123456789abcdef"
    assert make("tvix.find").nonce == NO_NONCE
    bad = make("tvix.find initkit.nonce=xyz")
    assert bad.nonce == NO_NONCE
    assert any("initkit.nonce" in w for w in bad.warnings)


def test_debug_flag() -> None:
    assert make("tvix.find initkit.debug").debug
    assert not make("tvix.find").debug


def test_unknown_keys_in_our_namespaces_are_warned_about() -> None:
    plan = make(f"tvix.exce={HELLO} initkit.verbose foo.bar=1")
    assert [w.split("'")[1] for w in plan.warnings] == ["tvix.exce", "initkit.verbose"]
    assert isinstance(plan.action, p.Fail)


def test_term_defaults_to_linux() -> None:
    plan = p.make_plan(parse(b"tvix.exec=/x"), environ={})
    assert isinstance(plan.action, p.Spawn) and plan.action.env["TERM"] == "linux"


def test_steps_compare_by_value() -> None:
    assert p.LoadModule("/a") == p.LoadModule("/a")
    assert p.LoadModule("/a") != p.MakeDir("/a")
    assert hash(p.LoadModule("/a")) == hash(p.LoadModule("/a"))
    assert repr(p.LoadModule("/a")) == "LoadModule(path='/a')"


def test_channel_key_alone_is_the_serve_action() -> None:
    plan = make(f"{contract.CHANNEL_KEY}=port.x")
    assert plan.action == p.Serve("port.x")
    assert not plan.warnings


def test_an_action_key_beats_the_channel() -> None:
    plan = make(f"{contract.CHANNEL_KEY}=port.x tvix.exec={HELLO}")
    assert isinstance(plan.action, p.Spawn)


def test_channel_key_without_a_port_is_usage() -> None:
    plan = make(f"{contract.CHANNEL_KEY}=")
    assert isinstance(plan.action, p.Fail) and plan.action.status == USAGE
