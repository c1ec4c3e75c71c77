"""pytest plugin ``initkit``: boot a VM in a test and assert on its output and status.

    def test_hello(initkit_vm, tmp_path):
        store = make_store(tmp_path)                     # your /nix/store tree
        result = initkit_vm.exec("/nix/store/abc-hello/bin/hello", store=store)
        assert result.exit_code == 0
        assert result.output == "Hello, world!\\n"

Every run has its own temp dir, daemon and socket, and the default initrd is built once
under a lock, so tests may run in parallel (pytest-xdist, or threads: ``VmRunner.run``
is thread-safe). Options: --initkit-kernel, --initkit-accel, --initkit-vmm,
--initkit-timeout (or $HOSTRUN_KERNEL / $HOSTRUN_ACCEL). This module imports nothing
heavy at load time: pytest loads it in every session of every project that has initkit
installed.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from guest.contract import ExitStatus

DEFAULT_TIMEOUT = 120.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("initkit", "initkit VM runs (initkit_vm fixture)")
    group.addoption("--initkit-kernel", default=None, metavar="PATH",
                    help="Kernel for initkit_vm: a path, or 'minimal' for initkit's own "
                         "kernel (default: $HOSTRUN_KERNEL, else Debian's).")
    group.addoption("--initkit-accel", default=None, choices=("auto", "kvm", "tcg"),
                    help="Accelerator for initkit_vm (default: $HOSTRUN_ACCEL, else auto).")
    group.addoption("--initkit-vmm", default="auto",
                    choices=("auto", "qemu", "cloud-hypervisor"), help="VMM for initkit_vm.")
    group.addoption("--initkit-timeout", default=DEFAULT_TIMEOUT, type=float, metavar="S",
                    help=f"Default timeout of one VM run (default {DEFAULT_TIMEOUT:g} s).")


@dataclass(frozen=True)
class VmResult:
    """One finished VM run."""

    exit_code: int
    output_bytes: bytes
    status: ExitStatus | None  # None: the guest reported nothing (see error)
    error: str | None  # hostrun's own failure message
    argv: tuple[str, ...]  # the VMM command line

    @property
    def output(self) -> str:
        """The console output as text (kernel messages and the status record removed)."""
        return self.output_bytes.decode(errors="replace")

    def describe(self) -> str:
        """Exit code, error and output, for an assertion message."""
        text = f"exit code {self.exit_code}"
        if self.error:
            text += f"; hostrun: {self.error}"
        return text + f"\n--- console ---\n{self.output}"


class VmRunner:
    """Boots VMs with shared defaults; one per test (fixture ``initkit_vm``)."""

    def __init__(self, *, kernel: Path | None = None, accel: str | None = None,
                 vmm: str = "auto", daemon: str = "auto", timeout: float = DEFAULT_TIMEOUT,
                 initrd: Path | None = None) -> None:
        self.kernel = kernel
        self.accel = accel
        self.vmm = vmm
        self.daemon = daemon
        self.timeout = timeout
        self.initrd = initrd

    def run(self, *, store: Path | None = None, find: bool = False, shell: bool = False,
            exec: list[str] | tuple[str, ...] | str | None = None, run: str | None = None,
            init: str | None = None, input: bytes | None = None, cmdline: str = "",
            cpus: int = 1, memory: str = "512M", timeout: float | None = None,
            initrd: Path | None = None, kernel: Path | None = None,
            verbose: bool = False, closure: list[str] | tuple[str, ...] = (),
            substituters: list[str] | tuple[str, ...] = ()) -> VmResult:
        """Boot once with ``store`` (default /nix/store) as /nix/store, do the one action
        given, return how it ended. ``input`` goes to the guest's console once it is up,
        then end-of-file. With ``closure`` (store paths) the guest's store holds exactly
        their closure, taken from ``store`` or the ``substituters`` (file:// caches)."""
        from hostrun.action import Action
        from hostrun.plan import Request, plan
        from hostrun.session import run as run_session
        from hostrun.vmm import parse_memory

        actions = [a for a, given in (("find", find), ("shell", shell), ("exec", exec),
                                      ("run", run), ("init", init)) if given]
        if len(actions) != 1:
            raise ValueError(f"give exactly one of find/shell/exec/run/init, not {actions}")
        if isinstance(exec, str):
            exec = [exec]
        action = {
            "find": lambda: Action("find"),
            "shell": lambda: Action("shell"),
            "exec": lambda: Action("exec", argv=tuple(exec or ())),
            "run": lambda: Action("run", command=run or ""),
            "init": lambda: Action("init", command=init or ""),
        }[actions[0]]()
        request = Request(
            kernel=kernel or self.kernel, initrd=initrd or self.initrd,
            store=Path(store) if store is not None else Path("/nix/store"),
            action=action, cpus=cpus, memory_mib=parse_memory(memory), extra_cmdline=cmdline,
            timeout=timeout if timeout is not None else self.timeout, vmm=self.vmm,
            accel=self.accel, daemon=self.daemon, verbose=verbose, closure=list(closure),
            substituters=list(substituters),
        )
        chunks: list[bytes] = []
        lock = threading.Lock()

        def sink(data: bytes) -> None:
            with lock:
                chunks.append(data)

        outcome = run_session(plan(request), sink=sink, stdin=input if input is not None
                              else b"")
        if outcome.host_signal == signal.SIGINT:
            raise KeyboardInterrupt  # the VM is down; let pytest stop as it would
        return VmResult(outcome.code, b"".join(chunks), outcome.status, outcome.error,
                        tuple(outcome.argv))

    def exec(self, path: str, *args: str, store: Path | None = None,
             **kwargs: Any) -> VmResult:
        """Run ``path`` with ``args`` in the guest (tvix.exec)."""
        return self.run(store=store, exec=[path, *args], **kwargs)

    def sh(self, command: str, *, store: Path | None = None, **kwargs: Any) -> VmResult:
        """Run a shell command line in the guest (tvix.run)."""
        return self.run(store=store, run=command, **kwargs)


@pytest.fixture
def initkit_vm(request: pytest.FixtureRequest) -> VmRunner:
    """A VmRunner configured from the --initkit-* options."""
    config = request.config
    kernel = config.getoption("--initkit-kernel")
    return VmRunner(kernel=Path(kernel) if kernel else None,
                    accel=config.getoption("--initkit-accel"),
                    vmm=config.getoption("--initkit-vmm"),
                    timeout=config.getoption("--initkit-timeout"))
