"""guest.boot and guest.__main__ against the recording fake: order, failures, statuses."""

from __future__ import annotations

import errno

import pytest
from guestfake import FakeSystem, wait_status_exit, wait_status_signal

from guest import contract
from guest import plan as p
from guest.__main__ import finish, run
from guest.boot import Outcome, boot, run_action
from guest.contract import ExitStatus
from guest.system import ShutdownRequested

HELLO = "/nix/store/mdi7lvrn2mx7rfzv3fdq3v5yw8swiks6-hello-2.12.1/bin/hello"
NONCE = "0123456789abcdef"


def booted(fake: FakeSystem, line: str) -> Outcome:
    fake.cmdline = line.encode()
    outcome = Outcome()
    boot(fake, outcome, 10.0)
    return outcome


def mount_targets(fake: FakeSystem) -> list[str]:
    return [str(args[1]) for name, args in fake.calls if name == "mount"]


def test_sequence_devtmpfs_first_modules_then_store_then_action(fake: FakeSystem) -> None:
    fake.files[contract.MODULE_LIST] = "/lib/modules/v/a.ko\n/lib/modules/v/b.ko\n"
    fake.waits = [(100, wait_status_exit(0))]
    outcome = booted(fake, f"tvix.exec={HELLO} initkit.nonce={NONCE}")
    names = fake.names()
    assert names[:3] == ["make_dir", "mount", "ensure_console"]
    assert mount_targets(fake) == ["/dev", "/proc", "/sys", "/tmp", "/run", "/dev/pts",
                                   "/nix/store"]
    order = [n for n in names if n in ("read_cmdline", "load_module", "spawn")]
    assert order == ["read_cmdline", "load_module", "load_module", "spawn"]
    store = [a for n, a in fake.calls if n == "mount"][-1]
    assert store == ("tvix", "/nix/store", "virtiofs", p.MS_RDONLY, "")
    assert names.index("catch_shutdown_signals") < names.index("spawn")
    assert (outcome.nonce, outcome.status) == (NONCE, ExitStatus.exited(0))


def test_applets_are_linked_before_the_modules(fake: FakeSystem) -> None:
    fake.files[contract.MODULE_LIST] = "/lib/modules/v/a.ko\n"
    fake.files[contract.APPLET_LIST] = "/bin/ls\n/sbin/poweroff\n"
    fake.waits = [(100, wait_status_exit(0))]
    booted(fake, f"tvix.exec={HELLO}")
    order = [(n, a) for n, a in fake.calls if n in ("link_all", "load_module")]
    assert order == [("link_all", (("/bin/ls", "/sbin/poweroff"), "/bin/busybox")),
                     ("load_module", ("/lib/modules/v/a.ko",))]


def test_missing_module_is_reported_with_errno_and_boot_goes_on(fake: FakeSystem) -> None:
    fake.files[contract.MODULE_LIST] = "/lib/modules/v/gone.ko\n/lib/modules/v/b.ko\n"
    fake.module_errors["/lib/modules/v/gone.ko"] = errno.ENOENT
    fake.waits = [(100, wait_status_exit(0))]
    outcome = booted(fake, f"tvix.exec={HELLO}")
    assert outcome.status == ExitStatus.exited(0)
    assert [a[0] for n, a in fake.calls if n == "load_module"] == [
        "/lib/modules/v/gone.ko", "/lib/modules/v/b.ko"]
    assert any("gone.ko" in s and "errno 2 ENOENT" in s for s in fake.said)


def test_module_failing_with_a_kernel_errno_is_reported(fake: FakeSystem) -> None:
    fake.files[contract.MODULE_LIST] = "/lib/modules/v/bad.ko\n"
    fake.module_errors["/lib/modules/v/bad.ko"] = errno.ENOEXEC
    fake.waits = [(100, wait_status_exit(0))]
    booted(fake, f"tvix.exec={HELLO}")
    assert any("bad.ko" in s and "errno 8 ENOEXEC" in s for s in fake.said)


def test_early_mount_failure_is_reported_and_boot_goes_on(fake: FakeSystem) -> None:
    fake.mount_errors["/sys"] = errno.EPERM
    fake.waits = [(100, wait_status_exit(3))]
    outcome = booted(fake, f"tvix.exec={HELLO}")
    assert outcome.status == ExitStatus.exited(3)
    assert any("/sys" in s and "EPERM" in s for s in fake.said)


@pytest.mark.parametrize("line", ["tvix.find", f"tvix.exec={HELLO}", "tvix.run=true",
                                  "init=/nix/store/x/init"])
def test_store_mount_failure_stops_with_125_before_the_action(fake: FakeSystem,
                                                              line: str) -> None:
    fake.mount_errors["/nix/store"] = errno.ENODEV
    outcome = booted(fake, line)
    assert outcome.status == ExitStatus.exited(contract.INIT_FAILED)
    assert not {"spawn", "walk", "execve"} & set(fake.names())
    message = next(s for s in fake.said if "/nix/store" in s)
    assert "ENODEV" in message and "virtiofs" in message


def test_store_mount_failure_still_gives_the_shell(fake: FakeSystem) -> None:
    fake.mount_errors["/nix/store"] = errno.ENODEV
    fake.waits = [(100, wait_status_exit(0))]
    outcome = booted(fake, "tvix.shell")
    assert outcome.status == ExitStatus.exited(0)
    assert ("spawn", (("/bin/sh",), p.child_env(fake.env))) in fake.calls


@pytest.mark.parametrize(("err", "status"), [
    (errno.ENOENT, contract.NOT_FOUND), (errno.ENOTDIR, contract.NOT_FOUND),
    (errno.EACCES, contract.NOT_EXECUTABLE), (errno.ENOEXEC, contract.NOT_EXECUTABLE),
    (errno.EISDIR, contract.NOT_EXECUTABLE),
])
def test_exec_failures_map_like_a_shell(fake: FakeSystem, err: int, status: int) -> None:
    fake.spawn_errno = err
    outcome = booted(fake, f"tvix.exec={HELLO}")
    assert outcome.status == ExitStatus.exited(status)
    assert any(HELLO in s and errno.errorcode[err] in s for s in fake.said)


def test_existing_file_with_missing_interpreter_is_explained(fake: FakeSystem) -> None:
    fake.spawn_errno = errno.ENOENT
    fake.existing.add(HELLO)
    outcome = booted(fake, f"tvix.exec={HELLO}")
    assert outcome.status == ExitStatus.exited(contract.NOT_FOUND)
    assert any("interpreter is missing" in s for s in fake.said)


@pytest.mark.parametrize("code", range(256))
def test_every_exit_code_is_reported(fake: FakeSystem, code: int) -> None:
    fake.waits = [(100, wait_status_exit(code))]
    assert booted(fake, "tvix.run=exit").status == ExitStatus.exited(code)


@pytest.mark.parametrize("signum", [1, 2, 6, 9, 11, 15, 31, 34, 64])
def test_death_by_signal_is_reported(fake: FakeSystem, signum: int) -> None:
    fake.waits = [(100, wait_status_signal(signum))]
    assert booted(fake, f"tvix.exec={HELLO}").status == ExitStatus.killed(signum)


def test_orphans_are_reaped_while_waiting(fake: FakeSystem) -> None:
    fake.waits = [(205, wait_status_exit(0)), (206, wait_status_signal(9)),
                  (100, wait_status_exit(4))]
    outcome = booted(fake, "tvix.run=x initkit.debug")
    assert outcome.status == ExitStatus.exited(4)
    assert fake.names().count("wait_any") == 3
    assert any("reaped orphan 205" in s for s in fake.said)


def test_poweroff_request_during_the_action_is_a_clean_end(fake: FakeSystem) -> None:
    fake.waits = [ShutdownRequested(12)]
    assert booted(fake, "tvix.shell").status == ExitStatus.exited(0)


def test_find_lists_the_tree_and_reports_unreadable_parts(fake: FakeSystem) -> None:
    fake.tree = [(b"/nix/store", None), (b"/nix/store/a-x", None),
                 (b"/nix/store/b-y", PermissionError(errno.EACCES, "Permission denied")),
                 (b"/nix/store/\xff-z", None)]
    outcome = booted(fake, "tvix.find")
    listing = b"/nix/store\n/nix/store/a-x\n/nix/store/\xff-z\n"
    assert bytes(fake.out) == contract.ready_record("none") + listing
    assert outcome.status == ExitStatus.exited(1)
    assert any("b-y" in s and "EACCES" in s for s in fake.said)


def test_find_of_a_readable_tree_is_status_0(fake: FakeSystem) -> None:
    fake.tree = [(b"/nix/store", None)]
    assert booted(fake, "tvix.find").status == ExitStatus.exited(0)


def test_no_action_reports_usage_status(fake: FakeSystem) -> None:
    outcome = booted(fake, "quiet")
    assert outcome.status == ExitStatus.exited(contract.USAGE)
    assert any("no action" in s for s in fake.said)


def test_debug_prints_phase_timings(fake: FakeSystem) -> None:
    fake.tree = [(b"/nix/store", None)]
    booted(fake, "tvix.find initkit.debug")
    timings = [s for s in fake.said if s.startswith("timing:")]
    assert any("mount devtmpfs" in s for s in timings)
    assert "action starts" in timings[-2]
    assert "action ended at" in timings[-1]
    # The fake's exec at 9.5 s and a kernel log clock 13 ms ahead of the init's.
    assert "kernel ran /init at 9.500 s" in timings[0]
    assert "the kernel log's clock is 13.0 ms ahead" in timings[1]
    quiet = FakeSystem()
    booted(quiet, "tvix.find")
    assert not [s for s in quiet.said if s.startswith("timing:")]


def test_switch_root_moves_the_store_and_mounts_then_execs(fake: FakeSystem) -> None:
    init = "/nix/store/x-nixos-system/init"
    fake.existing.add(init)
    fake.execve_errno = None  # a real execve never returns; the fake does
    booted(fake, f"init={init} -- single")
    calls = fake.calls[fake.names().index("catch_shutdown_signals"):]
    mounts = [a for n, a in calls if n == "mount"]
    assert mounts[0] == ("tmpfs", "/sysroot", "tmpfs", 0, "mode=0755")
    assert mounts[1] == ("/nix/store", "/sysroot/nix/store", None, p.MS_MOVE, "")
    moved = [a[0] for a in mounts[2:-1]]
    assert moved == list(p.CARRIED_MOUNTS)
    assert mounts[-1] == ("/sysroot", "/", None, p.MS_MOVE, "")
    names = [n for n, _ in calls]
    tail = names[names.index("remove_tree_on_root"):]
    assert tail == ["remove_tree_on_root", "chdir", "mount", "chroot", "chdir", "execve"]
    assert calls[-1] == ("execve", ((init, "single"), fake.env))


def test_switch_root_to_a_missing_init_tears_nothing_down(fake: FakeSystem) -> None:
    outcome = booted(fake, "init=/nix/store/typo/init")
    assert outcome.status == ExitStatus.exited(contract.NOT_FOUND)
    assert "remove_tree_on_root" not in fake.names()
    assert "/sysroot" not in mount_targets(fake)


def test_switch_root_exec_failure_reports_126(fake: FakeSystem) -> None:
    init = "/nix/store/x/init"
    fake.existing.add(init)
    fake.execve_errno = errno.EACCES
    assert booted(fake, f"init={init}").status == ExitStatus.exited(contract.NOT_EXECUTABLE)


def test_switch_root_failing_mount_is_125(fake: FakeSystem) -> None:
    init = "/nix/store/x/init"
    fake.existing.add(init)
    fake.mount_errors["/sysroot"] = errno.ENOMEM
    assert booted(fake, f"init={init}").status == ExitStatus.exited(contract.INIT_FAILED)
    assert "remove_tree_on_root" not in fake.names()


def test_fail_action_prints_and_reports() -> None:
    fake = FakeSystem()
    status = run_action(p.Fail("nothing here", 42), fake)
    assert status == ExitStatus.exited(42)
    assert fake.said == ["nothing here"]


def test_main_run_turns_any_exception_into_125() -> None:
    class Broken(FakeSystem):
        def read_cmdline(self) -> bytes:
            raise RuntimeError("bug")

    system, outcome = run(Broken, 1.0)
    assert system is not None
    assert outcome.status == ExitStatus.exited(contract.INIT_FAILED)


def test_main_run_keeps_the_nonce_learned_before_a_crash() -> None:
    class Broken(FakeSystem):
        def spawn(self, argv: tuple[str, ...], env: dict[str, str]) -> int:
            raise RuntimeError("bug")

    def make() -> Broken:
        fake = Broken()
        fake.cmdline = f"tvix.exec=/x initkit.nonce={NONCE}".encode()
        return fake

    _, outcome = run(make, 1.0)
    assert (outcome.nonce, outcome.status) == (NONCE, ExitStatus.exited(125))


def test_finish_ends_processes_then_reports_then_powers_off(fake: FakeSystem) -> None:
    outcome = Outcome()
    outcome.nonce, outcome.status = NONCE, ExitStatus.killed(9)
    finish(fake, outcome)
    assert bytes(fake.out) == f"\ninitkit-status:{NONCE}:signal=9\n".encode()
    assert [n for n in fake.names() if n in ("end_all", "power_off")] == ["end_all",
                                                                           "power_off"]


def test_finish_still_reports_and_powers_off_when_ending_processes_fails() -> None:
    class Broken(FakeSystem):
        def end_all(self, grace: float) -> list[tuple[int, int]]:
            raise OSError(errno.EPERM, "no")

    fake = Broken()
    finish(fake, Outcome())
    assert bytes(fake.out) == b"\ninitkit-status:none:exit=125\n"
    assert fake.names()[-1] == "power_off"


def test_ready_record_comes_right_before_the_program_starts() -> None:
    seen: list[bytes] = []

    class Watching(FakeSystem):
        def spawn(self, argv: tuple[str, ...], env: dict[str, str]) -> int:
            seen.append(bytes(self.out))
            return super().spawn(argv, env)

    fake = Watching()
    fake.files["/nix/store/h-hello/bin/hello"] = ""
    booted(fake, f"initkit.nonce={NONCE} tvix.exec=/nix/store/h-hello/bin/hello")
    assert seen == [f"\ninitkit-status:{NONCE}:ready\n".encode()]
    assert "set_echo" not in fake.names()


def test_noecho_turns_the_console_echo_off_before_the_action(fake: FakeSystem) -> None:
    booted(fake, "initkit.noecho tvix.run=cat")
    names = fake.names()
    assert ("set_echo", (False,)) in fake.calls
    assert names.index("set_echo") < names.index("spawn")
    assert not any("unknown" in said for said in fake.said)


def test_no_ready_record_when_the_boot_failed_before_the_action(fake: FakeSystem) -> None:
    fake.mount_errors["/nix/store"] = errno.ENODEV
    booted(fake, "tvix.exec=/nix/store/x")
    assert b"ready" not in bytes(fake.out)


def test_channel_serves_the_agent_and_reaps_until_it_ends(fake: FakeSystem) -> None:
    fake.ports = {contract.CHANNEL_PORT: "/dev/vport0p1"}
    fake.waits = [(300, wait_status_exit(0)), (100, wait_status_exit(0))]
    outcome = booted(fake, f"{contract.CHANNEL_KEY}={contract.CHANNEL_PORT}")
    assert outcome.status == ExitStatus.exited(0)
    assert ("start_agent", ("/dev/vport0p1",)) in fake.calls
    assert fake.names().count("wait_any") == 2
    assert fake.names().index("start_agent") > fake.names().index("mount")


def test_channel_without_its_port_is_125_with_the_module_named(fake: FakeSystem) -> None:
    outcome = booted(fake, f"{contract.CHANNEL_KEY}={contract.CHANNEL_PORT}")
    assert outcome.status == ExitStatus.exited(contract.INIT_FAILED)
    assert "start_agent" not in fake.names()
    assert any("virtio_console" in s and contract.CHANNEL_PORT in s for s in fake.said)


def test_channel_device_that_does_not_open_is_125(fake: FakeSystem) -> None:
    fake.ports = {contract.CHANNEL_PORT: "/dev/vport0p1"}
    fake.agent_errno = errno.EBUSY
    outcome = booted(fake, f"{contract.CHANNEL_KEY}={contract.CHANNEL_PORT}")
    assert outcome.status == ExitStatus.exited(contract.INIT_FAILED)
    assert any("/dev/vport0p1" in s and "EBUSY" in s for s in fake.said)
