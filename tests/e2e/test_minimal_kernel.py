"""initkit's minimal kernel end to end: its initrd has no module step, and `hostrun
--kernel minimal` boots it (test_boot.py runs the exec/find/run/shell tests on it too)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from initbuilder.kernels.build import lookup
from initbuilder.reader import read_initrd

if TYPE_CHECKING:
    from conftest import CliRun, StartCli, Store  # tests/e2e/conftest.py

pytestmark = pytest.mark.e2e


def test_initrd_for_the_minimal_kernel_carries_no_modules(minimal_initrd: Path) -> None:
    if os.environ.get("HOSTRUN_E2E_INITRD", "") != "":
        pytest.skip("HOSTRUN_E2E_INITRD chooses another initrd")
    paths = [m.path for m in read_initrd(minimal_initrd)]
    assert "init" in paths, "hostrun's default initrd, with the guest init"
    assert "etc/initkit/modules" not in paths
    assert not [p for p in paths if p.startswith("lib/modules/") and p.endswith(".ko")]


def test_hostrun_kernel_minimal_boots_the_cached_build(hostrun_cli: StartCli, store: Store,
                                                       minimal_kernel: Path) -> None:
    """The word `minimal` finds the built kernel; the guest runs it with no module loaded."""
    if os.environ.get("INITKIT_TEST_MINIMAL_KERNEL"):
        pytest.skip("the minimal kernel comes from another machine's build here; the word "
                    "`minimal` finds this machine's own (tested where it is built)")
    run: CliRun = hostrun_cli("--kernel", "minimal", "--store", str(store.root),
                              "--run", "uname -r; wc -l < /proc/modules; ls /nix/store | wc -l",
                              kernel=False, initrd=False)
    assert run.finish() == 0, run.stderr
    built = lookup()
    assert built is not None
    assert run.stdout.decode().split() == [built.release, "0", "4"], run.stdout
    run.assert_nothing_left()
