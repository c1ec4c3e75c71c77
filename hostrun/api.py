"""hostrun's public Python API: boot a VM, do one thing in it, get how it ended.

    from hostrun import VmRunner

    runner = VmRunner(accel="tcg")
    result = runner.exec("/nix/store/abc-hello/bin/hello", store=Path("store"))
    assert result.exit_code == 0 and result.output == "Hello, world!\\n"

Every run has its own temp dir, daemon and socket, and the default initrd is built once
under a lock, so runs may go in parallel (processes, or threads: ``VmRunner.run`` is
thread-safe). Importing this module is cheap and loads neither click nor pytest: the
machinery that boots loads with the first run. The pytest plugin (hostrun.pytest_plugin)
is a fixture over this.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guest.contract import ExitStatus
from hostrun.action import chosen_actions, without_actions

DEFAULT_TIMEOUT = 120.0


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
    """Boots VMs with shared defaults (the pytest fixture ``initkit_vm`` is one)."""

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
        then end-of-file. ``cmdline`` is added to the kernel command line (an action word
        in it is dropped: the action given here wins). With ``closure`` (store paths) the
        guest's store holds exactly their closure, taken from ``store`` or the
        ``substituters`` (file:// caches). InitkitError for what the caller can fix."""
        actions = chosen_actions(find=find, shell=shell,
                                 exec=[exec] if isinstance(exec, str) else exec,
                                 run=run, init=init)
        if len(actions) != 1:
            kinds = [action.kind for action in actions]
            raise ValueError(f"give exactly one of find/shell/exec/run/init, not {kinds}")
        # The boot's machinery loads here, not with the module (see the docstring above).
        from hostrun.plan import Request, plan
        from hostrun.session import run as run_session
        from hostrun.vmm import parse_memory

        request = Request(
            kernel=kernel or self.kernel, initrd=initrd or self.initrd,
            store=Path(store) if store is not None else Path("/nix/store"),
            action=actions[0], cpus=cpus, memory_mib=parse_memory(memory),
            extra_cmdline=without_actions(cmdline),
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
            raise KeyboardInterrupt  # the VM is down; let the caller stop as it would
        return VmResult(outcome.code, b"".join(chunks), outcome.status, outcome.error,
                        tuple(outcome.argv))

    def exec(self, path: str, *args: str, store: Path | None = None,
             **kwargs: Any) -> VmResult:
        """Run ``path`` with ``args`` in the guest (tvix.exec)."""
        return self.run(store=store, exec=[path, *args], **kwargs)

    def sh(self, command: str, *, store: Path | None = None, **kwargs: Any) -> VmResult:
        """Run a shell command line in the guest (tvix.run)."""
        return self.run(store=store, run=command, **kwargs)
