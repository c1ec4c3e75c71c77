"""End to end: boots of Debian's kernel and of initkit's minimal kernel (the ``vm``
fixture runs each test on both) under QEMU TCG with a real virtiofsd."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from hostrun.api import VmResult, VmRunner

if TYPE_CHECKING:
    from conftest import Store  # tests/e2e/conftest.py

pytestmark = pytest.mark.e2e


def test_docs_path_is_found(vm: VmRunner, store: Store) -> None:
    """The seed's test-docs: tvix.find lists the docs store path."""
    result = vm.run(store=store.root, find=True)
    assert result.exit_code == 0, result.describe()
    assert store.docs in result.output.splitlines()
    assert f"{store.docs}/README.md" in result.output.splitlines()


def test_exec_exit_codes_come_back_exactly(vm: VmRunner, store: Store) -> None:
    """tvix.exec of a static program: 0, 3, 255 and a signal as 128+N; two boots at
    once, which is also how the plugin is used from parallel tests."""
    cases = {
        (): 0,
        ("exit", "3"): 3,
        ("exit", "255"): 255,
        ("signal", "15"): 128 + 15,
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(cases, pool.map(lambda a: vm.exec(store.hello, *a,
                                                              store=store.root), cases),
                           strict=True))
    for args, expected in cases.items():
        result: VmResult = results[args]
        assert result.exit_code == expected, result.describe()
        assert result.output.startswith("Hello, world!\n"), result.describe()
    assert results[()].output == "Hello, world!\n"
    assert results[("signal", "15")].status is not None
    assert results[("signal", "15")].status.signal == 15


def test_run_pipeline(vm: VmRunner, store: Store) -> None:
    result = vm.sh("ls /nix/store | grep -c . ; echo done", store=store.root)
    assert result.exit_code == 0, result.describe()
    assert result.output.split() == ["4", "done"]


def test_awkward_commands_reach_the_guest_exactly(vm: VmRunner, store: Store) -> None:
    """Through QEMU, the kernel and /proc/cmdline: a newline, runs of blanks, an em
    space, U+00A0 and U+2020 (each with a byte the kernel counts as a space) and paired
    double quotes come back byte for byte (the guest's parser decides: hostrun's tests)."""
    text = "a  b\tc \u2003 \u00a0 \u2020 \u00fc"
    command = f"printf '%s\\n' '{text}'\nprintf '%s\\n' \"quoted\" | od -An -c"
    result = vm.sh(command, store=store.root)
    assert result.exit_code == 0, result.describe()
    lines = result.output.split("\n")
    assert lines[0] == text and lines[1].split() == ["q", "u", "o", "t", "e", "d", "\\n"]


def test_shell_through_stdin(vm: VmRunner, store: Store) -> None:
    result = vm.run(store=store.root, shell=True, input=b"ls /nix/store\nexit 7\n")
    assert result.exit_code == 7, result.describe()
    assert store.docs.rsplit("/", 1)[1] in result.output


def test_program_that_reads_before_it_prints_gets_piped_input(vm: VmRunner,
                                                              store: Store) -> None:
    # The input is held until the guest says the action starts, and not echoed back.
    result = vm.sh("read first; read second; echo got $first+$second; cat",
                   store=store.root, input=b"one\ntwo\nthree\n")
    assert result.exit_code == 0, result.describe()
    assert result.output == "got one+two\nthree\n", result.describe()


def test_dynamically_linked_program_from_the_store(vm: VmRunner, store: Store) -> None:
    result = vm.exec(store.dynhello, "exit", "5", store=store.root)
    assert result.exit_code == 5, result.describe()
    assert result.output == "Hello, world!\n"


def test_missing_program_is_127(vm: VmRunner, store: Store) -> None:
    result = vm.exec("/nix/store/no-such-thing/bin/x", store=store.root)
    assert result.exit_code == 127, result.describe()


def test_store_is_read_only_in_the_guest(vm: VmRunner, store: Store) -> None:
    result = vm.sh(f"touch {store.docs}/new", store=store.root)
    assert result.exit_code != 0, result.describe()
    assert "Read-only file system" in result.output
    assert not (store.root / store.docs.rsplit("/", 1)[1] / "new").exists()


def test_guest_cpu_model_and_applets_linked_at_boot(vm: VmRunner, store: Store) -> None:
    """The TCG CPU model keeps AVX2 and RDRAND but not ERMS/FSRM (hostrun/vmm.py); the
    default initrd's applet links are made by the init at boot (initbuilder/sources.py)."""
    result = vm.sh("grep -o -w -E 'erms|fsrm|avx2|rdrand' /proc/cpuinfo | sort -u; "
                   "for f in /bin/cat /usr/sbin/chroot /bin/sh; do readlink $f; done; "
                   "ls /nix/store | cat",
                   store=store.root)
    assert result.exit_code == 0, result.describe()
    lines = result.output.split()
    assert "avx2" in lines and "rdrand" in lines, result.describe()
    assert "erms" not in lines and "fsrm" not in lines, result.describe()
    if os.environ.get("HOSTRUN_E2E_INITRD", "") == "":  # hostrun's default initrd
        assert lines.count("/bin/busybox") == 3, result.describe()
    assert store.docs.rsplit("/", 1)[1] in lines


def test_debug_timing_lines_are_on_one_clock(vm: VmRunner, store: Store) -> None:
    """initkit.debug's phases: /init's exec time is on the init's clock (CLOCK_BOOTTIME),
    which the kernel log's runs ahead of by what the kernel did before timekeeping."""
    if os.environ.get("HOSTRUN_E2E_INITRD", "") != "":
        pytest.skip("the timing lines are the guest init's")
    result = vm.exec(store.hello, store=store.root, cmdline="initkit.debug")
    assert result.exit_code == 0, result.describe()
    found = re.search(r"kernel ran /init at ([\d.]+) s since boot; its code began "
                      r"(-?[\d.]+) ms later", result.output)
    ahead = re.search(r"the kernel log's clock is (-?[\d.]+) ms ahead", result.output)
    assert found is not None and ahead is not None, result.describe()
    assert 0.0 < float(found[1]) < 60.0 and float(found[2]) > 0.0, result.describe()
    assert 0.0 <= float(ahead[1]) < 1000.0, result.describe()
