"""The packed init for real, without a VM: PID 1 of a new PID and mount namespace,
chrooted into the unpacked initrd, with real mount(2), fork/exec, waitpid and reboot(2).

The test-only hook ``initkit.test.store=/teststore`` binds a directory of the initrd on
/nix/store instead of virtiofs, and INITKIT_TEST_CMDLINE stands in for /proc/cmdline
(which is the host's here). reboot(2) in a PID namespace kills the namespace's init with
SIGINT, which ``unshare --fork`` passes on by killing itself with it: what we observe.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from realparts import missing_part, unpack_with_cpio

from guest.contract import ExitStatus, parse_line
from initbuilder.cpio import write_initrd
from initbuilder.image import Image
from initbuilder.nativeinit import HOW_TO_GET, compiler
from initbuilder.runtime import add_runtime

NONCE = "00112233aabbccdd"
HELLO = "/nix/store/aaaa-hello/bin/hello"
HELLO_C = r"""
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    printf("hello from %s", argv[0]);
    for (int i = 1; i < argc; i++) printf(" [%s]", argv[i]);
    printf(" PATH=%s HOME=%s TERM=%s LANG=%s\n", getenv("PATH"), getenv("HOME"),
           getenv("TERM"), getenv("LANG") ? getenv("LANG") : "-");
    return argc > 1 ? atoi(argv[argc - 1]) : 0;
}
"""


def _require_parts() -> None:
    if os.geteuid() != 0:
        missing_part("needs root for unshare --pid --mount and chroot")
    for tool in ("unshare", "chroot", "gcc", "cpio", "busybox"):
        if shutil.which(tool) is None:
            missing_part(f"{tool} is not installed")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount", "sh", "-c", "echo $$"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or probe.stdout.strip() != "1":
        missing_part(f"unshare --pid --fork --mount does not work here: {probe.stderr.strip()}")


@pytest.fixture(scope="module", params=["native", "python"])
def root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The initrd (runtime + busybox + a test store), written and unpacked: once with
    the native init as /init (guest/native/init.c, which hands what it does not do
    itself to the Python init), once with the Python init alone."""
    _require_parts()
    native = request.param == "native"
    if native and compiler() is None:
        missing_part(f"no C compiler for the native init ({HOW_TO_GET})")
    work = tmp_path_factory.mktemp("pid1")
    source = work / "hello.c"
    source.write_text(HELLO_C)
    hello = work / "hello"
    built = subprocess.run(["gcc", "-static", "-O2", "-o", str(hello), str(source)],
                           capture_output=True, text=True, timeout=120)
    if built.returncode != 0:
        missing_part(f"gcc -static cannot link (is libc6-dev installed?): {built.stderr[-300:]}")
    image = Image()
    add_runtime(image, native=native)
    busybox = shutil.which("busybox")
    assert busybox is not None
    image.add_file("bin/busybox", host=busybox, mode=0o755)
    image.add_symlink("bin/sh", "busybox")
    image.add_file("teststore/aaaa-hello/bin/hello", host=hello, mode=0o755)
    image.add_file("teststore/bbbb-data/share/readme", data=b"not a program\n", mode=0o644)
    image.add_file("etc/initkit/modules", data=b"/lib/modules/0.0/kernel/missing.ko\n")
    initrd = work / "initrd.cpio"
    write_initrd(image, initrd)
    return unpack_with_cpio(initrd, work / "root")


def boot(root: Path, cmdline: str, *, store: str = "/teststore"
         ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run /init as PID 1 of new namespaces; returns the process and its output lines.
    The environment stands in for the one the kernel gives init (TERM, LANG...)."""
    env = {"TERM": "dumb", "LANG": "C.UTF-8",
           "INITKIT_TEST_CMDLINE": f"{cmdline} initkit.test.store={store} "
                                   f"initkit.nonce={NONCE}"}
    argv = [shutil.which("unshare") or "unshare", "--pid", "--fork", "--mount",
            shutil.which("chroot") or "chroot", str(root), "/init"]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, timeout=60)
    return proc, proc.stdout.splitlines()


def status_of(lines: list[str]) -> ExitStatus:
    found = [s for s in (parse_line(line, NONCE) for line in lines) if s is not None]
    assert len(found) == 1, lines
    return found[0]


def powered_off(proc: subprocess.CompletedProcess[str]) -> bool:
    """reboot(POWER_OFF) in a PID namespace: its init dies of SIGINT, unshare with it."""
    return proc.returncode == -signal.SIGINT


def test_exec_runs_a_store_program_with_a_clean_environment(root: Path) -> None:
    proc, lines = boot(root, f'tvix.exec="{HELLO} one 7"')
    assert powered_off(proc), proc.stdout
    out = next(line for line in lines if line.startswith("hello from"))
    assert out == (f"hello from {HELLO} [one] [7] PATH=/usr/local/sbin:/usr/local/bin:"
                   "/usr/sbin:/usr/bin:/sbin:/bin HOME=/ TERM=dumb LANG=-")
    assert status_of(lines) == ExitStatus.exited(7)
    # The record is the last line and follows the program's output.
    assert lines[-1] == f"initkit-status:{NONCE}:exit=7"
    assert lines.index(out) < len(lines) - 1


def test_module_failure_is_reported_with_errno_and_boot_goes_on(root: Path) -> None:
    proc, lines = boot(root, f"tvix.exec={HELLO}")
    assert any("missing.ko" in line and "errno 2 ENOENT" in line for line in lines)
    assert status_of(lines) == ExitStatus.exited(0)
    assert powered_off(proc)


def test_run_reports_death_by_signal_and_the_init_reaps_orphans(root: Path) -> None:
    # The subshell leaves an orphan that exits at once: a zombie of PID 1 until reaped.
    script = ("(sh -c 'exit 5' &); sleep 0.5; "
              "echo zombies=$(cat /proc/[0-9]*/stat | grep -c ') Z '); kill -9 $$")
    proc, lines = boot(root, f'tvix.run="{script}" initkit.debug')
    assert powered_off(proc), proc.stdout
    assert "zombies=0" in lines, lines
    assert any("reaped orphan" in line and "exit=5" in line for line in lines), lines
    assert status_of(lines) == ExitStatus.killed(9)


@pytest.mark.parametrize("code", [0, 1, 126, 255])
def test_run_exit_codes(root: Path, code: int) -> None:
    proc, lines = boot(root, f'tvix.run="echo ran; exit {code}"')
    # Nothing of the init's own between the program's output and the record.
    assert lines[-3:] == ["ran", "", f"initkit-status:{NONCE}:exit={code}"], lines
    assert status_of(lines) == ExitStatus.exited(code)
    assert powered_off(proc)


def test_exec_target_missing_is_127(root: Path) -> None:
    proc, lines = boot(root, "tvix.exec=/nix/store/zzzz-nothing/bin/nothing")
    assert status_of(lines) == ExitStatus.exited(127)
    assert any("cannot run" in line and "ENOENT" in line for line in lines)
    assert powered_off(proc)


def test_exec_target_not_executable_is_126(root: Path) -> None:
    proc, lines = boot(root, "tvix.exec=/nix/store/bbbb-data/share/readme")
    assert status_of(lines) == ExitStatus.exited(126)
    assert any("EACCES" in line for line in lines)
    assert powered_off(proc)


def test_find_lists_the_store(root: Path) -> None:
    proc, lines = boot(root, "tvix.find")
    assert {"/nix/store", "/nix/store/aaaa-hello", HELLO,
            "/nix/store/bbbb-data/share/readme"} <= set(lines)
    assert status_of(lines) == ExitStatus.exited(0)
    assert powered_off(proc)


def test_store_is_read_only(root: Path) -> None:
    proc, lines = boot(root, 'tvix.run="touch /nix/store/x"')
    assert status_of(lines) == ExitStatus.exited(1)
    assert any("Read-only file system" in line for line in lines)
    assert powered_off(proc)


def test_no_action_says_so_and_powers_off(root: Path) -> None:
    proc, lines = boot(root, "quiet")
    assert any("no action" in line for line in lines)
    assert status_of(lines) == ExitStatus.exited(2)
    assert powered_off(proc)


def test_store_mount_failure_is_125_without_running_anything(root: Path) -> None:
    proc, lines = boot(root, f"tvix.exec={HELLO}", store="/does-not-exist")
    assert status_of(lines) == ExitStatus.exited(125)
    assert any("/does-not-exist" in line and "ENOENT" in line for line in lines)
    assert not any(line.startswith("hello from") for line in lines)
    assert powered_off(proc)


def test_init_switches_root_and_hands_pid_1_over(root: Path, tmp_path: Path) -> None:
    """init=: the store and API mounts move into a tmpfs that becomes /, the initrd's
    files are deleted, and the program runs as PID 1 with the words after ``--``."""
    copy = tmp_path / "root"
    # cp -a, not copytree: the tree holds /dev/console, which copytree would read from.
    subprocess.run(["cp", "-a", str(root), str(copy)], check=True, timeout=60)
    # The kernel's rootfs is a mount and virtiofs another file system; a bind of the
    # tree on itself and a tmpfs store stand in for them.
    harness = (
        'set -e; mount --bind "$1" "$1"; mount -t tmpfs store "$1/teststore"; '
        'mkdir -p "$1/teststore/aaaa-hello/bin"; cp "$2" "$1/teststore/aaaa-hello/bin/"; '
        'exec chroot "$1" /init')
    hello = root / "teststore/aaaa-hello/bin/hello"
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "INITKIT_TEST_CMDLINE": f"init={HELLO} initkit.test.store=/teststore "
                                   f"initkit.nonce={NONCE} -- single 9"}
    proc = subprocess.run(["unshare", "--pid", "--fork", "--mount", "sh", "-c", harness, "sh",
                           str(copy), str(hello)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=60)
    lines = proc.stdout.splitlines()
    # The handed-over init is PID 1 now: its exit ends the namespace with its status.
    assert proc.returncode == 9, proc.stdout
    assert any(line.startswith(f"hello from {HELLO} [single] [9]") for line in lines), lines
    assert not any(parse_line(line, NONCE) for line in lines)  # no record: handed over
    assert not any("could not be removed" in line for line in lines), lines
    # The initrd's own files are gone; only mount points (and what was under them) stay.
    left = {p.relative_to(copy).parts[0] for p in copy.rglob("*")}
    assert "usr" not in left and "init" not in left, left
