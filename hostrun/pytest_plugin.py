"""pytest plugin ``initkit``: the ``initkit_vm`` fixture, a hostrun.api.VmRunner, and
``initkit_machine``, a hostrun.api.Machine booted once per module and shared by its tests.

    def test_hello(initkit_vm, tmp_path):
        store = make_store(tmp_path)                     # your /nix/store tree
        result = initkit_vm.exec("/nix/store/abc-hello/bin/hello", store=store)
        assert result.exit_code == 0
        assert result.output == "Hello, world!\\n"

    pytestmark = pytest.mark.initkit_machine(store="tests/store", memory="1G")

    def test_store(initkit_machine):
        initkit_machine.succeed("test -d /nix/store")   # fails with argv, status, output

Options: --initkit-kernel, --initkit-accel, --initkit-vmm, --initkit-timeout (or
$HOSTRUN_KERNEL / $HOSTRUN_ACCEL), --initkit-store; the marker's keywords go to Machine
and win over them. The ini option ``initkit_machine_scope`` (module, package, session)
sets how long one machine lives. Runs may go in parallel (pytest-xdist: each worker
boots its own machines; threads).
This module imports nothing of hostrun at load time: pytest loads it in every session of
every project that has initkit installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from hostrun.api import Machine, VmRunner

MARKER = "initkit_machine"
SCOPE_INI = "initkit_machine_scope"
SCOPES = ("module", "package", "session")


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
                         "hostrun.api.DEFAULT_TIMEOUT; for initkit_machine, its boot).")
    group.addoption("--initkit-store", default=None, metavar="DIR",
                    help="The directory initkit_machine shares as /nix/store (default: "
                         "/nix/store; the initkit_machine marker's store= wins).")
    parser.addini(SCOPE_INI, "How long one initkit_machine lives: module, package or "
                  "session.", default="module")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(**options): keywords for the "
                            "hostrun.Machine of the initkit_machine fixture (store, kernel, "
                            "cpus, memory, cmdline...)")


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


def _machine_scope(fixture_name: str, config: pytest.Config) -> Any:
    scope = str(config.getini(SCOPE_INI) or "module")
    if scope not in SCOPES:
        raise pytest.UsageError(f"ini option {SCOPE_INI} = {scope!r}: choose one of "
                                f"{', '.join(SCOPES)}")
    return scope


@pytest.fixture(scope=_machine_scope)
def initkit_machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A hostrun.api.Machine booted once per module (see ``initkit_machine_scope``),
    configured by the --initkit-* options and the ``initkit_machine`` marker; powered off
    and torn down after the last test that uses it."""
    from hostrun.api import BOOT_TIMEOUT, Machine

    config = request.config
    kernel = config.getoption("--initkit-kernel")
    store = config.getoption("--initkit-store")
    options: dict[str, Any] = {
        "kernel": Path(kernel) if kernel else None, "accel": config.getoption("--initkit-accel"),
        "vmm": config.getoption("--initkit-vmm"),
        "timeout": config.getoption("--initkit-timeout") or BOOT_TIMEOUT,
        "store": Path(store) if store else None,
    }
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        options.update(marker.kwargs)
    with Machine(**options) as machine:
        yield machine
