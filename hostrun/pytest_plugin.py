"""pytest plugin ``initkit``: the ``initkit_vm`` fixture, a hostrun.api.VmRunner.

    def test_hello(initkit_vm, tmp_path):
        store = make_store(tmp_path)                     # your /nix/store tree
        result = initkit_vm.exec("/nix/store/abc-hello/bin/hello", store=store)
        assert result.exit_code == 0
        assert result.output == "Hello, world!\\n"

Options: --initkit-kernel, --initkit-accel, --initkit-vmm, --initkit-timeout (or
$HOSTRUN_KERNEL / $HOSTRUN_ACCEL). Runs may go in parallel (pytest-xdist, or threads).
This module imports nothing of hostrun at load time: pytest loads it in every session of
every project that has initkit installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hostrun.api import VmRunner


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("initkit", "initkit VM runs (initkit_vm fixture)")
    group.addoption("--initkit-kernel", default=None, metavar="PATH",
                    help="Kernel for initkit_vm: a path, or 'minimal' for initkit's own "
                         "kernel (default: $HOSTRUN_KERNEL, else Debian's).")
    group.addoption("--initkit-accel", default=None, choices=("auto", "kvm", "tcg"),
                    help="Accelerator for initkit_vm (default: $HOSTRUN_ACCEL, else auto).")
    group.addoption("--initkit-vmm", default="auto",
                    choices=("auto", "qemu", "cloud-hypervisor"), help="VMM for initkit_vm.")
    group.addoption("--initkit-timeout", default=None, type=float, metavar="S",
                    help="Default timeout of one VM run, in seconds (default: "
                         "hostrun.api.DEFAULT_TIMEOUT).")


@pytest.fixture
def initkit_vm(request: pytest.FixtureRequest) -> VmRunner:
    """A hostrun.api.VmRunner configured from the --initkit-* options."""
    from hostrun.api import VmRunner

    config = request.config
    kernel = config.getoption("--initkit-kernel")
    runner = VmRunner(kernel=Path(kernel) if kernel else None,
                      accel=config.getoption("--initkit-accel"),
                      vmm=config.getoption("--initkit-vmm"))
    timeout = config.getoption("--initkit-timeout")
    if timeout is not None:
        runner.timeout = timeout
    return runner
