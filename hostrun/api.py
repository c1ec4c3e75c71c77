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

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guest import contract
from guest.contract import ExitStatus
from hostrun.action import chosen_actions, without_actions
from hostrun.channel import (
    CONSOLE_WINDOW,
    Channel,
    ChannelError,
    ExecResult,
    Execution,
    PathArg,
)
from initkit.errors import InitkitError

if TYPE_CHECKING:
    from hostrun.session import Outcome, RunSpec

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


class CommandFailed(InitkitError):
    """``Machine.succeed`` or ``fail`` saw the other outcome; carries the result."""

    def __init__(self, message: str, result: ExecResult) -> None:
        super().__init__(message)
        self.result = result


class BootFailed(ChannelError):
    """The VM ended before its control channel answered; ``outcome`` says how (its
    ``code`` is what hostrun exits with for that end)."""

    def __init__(self, reason: str, detail: str, outcome: Outcome | None) -> None:
        super().__init__(reason, detail)
        self.outcome = outcome


# Lines of the console kept for the message of a guest that died.
CONSOLE_TAIL_BYTES = 8192
BOOT_TIMEOUT = 300.0  # seconds from the VMM's start to the agent's hello (TCG, busy host)
STOP_GRACE = 30.0  # seconds the guest gets to power off after the channel's shutdown


class Machine:
    """One VM booted once and driven over the control channel (docs/hostrun.md,
    "Sessions"): any argv, stdout and stderr apart, exit codes, files in and out.

        with Machine(store="./store") as vm:
            vm.succeed("test -d /nix/store")
            r = vm.run(["/bin/busybox", "echo", "a b"])

    The boot is hostrun's own (the same choices, defaults and errors as VmRunner),
    run by a background thread that relays the console and tears the VM down when it
    ends. Safe to use from several threads: commands run at once, multiplexed.
    """

    def __init__(self, *, store: str | Path | None = None, kernel: str | Path | None = None,
                 cpus: int = 1, memory: str = "512M", initrd: str | Path | None = None,
                 accel: str | None = None, vmm: str = "auto", daemon: str = "auto",
                 cmdline: str = "", timeout: float = BOOT_TIMEOUT, verbose: bool = False,
                 closure: list[str] | tuple[str, ...] = (),
                 substituters: list[str] | tuple[str, ...] = ()) -> None:
        from hostrun.plan import Request, plan
        from hostrun.vmm import parse_memory

        request = Request(
            kernel=None if kernel is None else Path(kernel),
            initrd=None if initrd is None else Path(initrd),
            store=Path(store) if store is not None else Path("/nix/store"),
            action=None, cpus=cpus, memory_mib=parse_memory(memory),
            extra_cmdline=without_actions(cmdline), timeout=None, vmm=vmm, accel=accel,
            daemon=daemon, verbose=verbose, closure=list(closure),
            substituters=list(substituters))
        self._start(plan(request), timeout)

    @classmethod
    def from_spec(cls, spec: RunSpec, *, timeout: float = BOOT_TIMEOUT) -> Machine:
        """A Machine on an already planned run (the CLI's: its flags and environment
        resolved by hostrun.plan); the spec's action and timeout are not used."""
        machine = cls.__new__(cls)
        machine._start(spec, timeout)
        return machine

    def _start(self, spec: RunSpec, timeout: float) -> None:
        spec.action, spec.timeout = None, None
        self._spec = spec
        self._console = bytearray()
        self._console_lock = threading.Lock()
        self._booted = threading.Condition()
        self._sockets: list[Path] = []
        self._outcome: Outcome | None = None
        self._crash: BaseException | None = None
        self._closed = False
        self._stop_r, self._stop_w = os.pipe()
        self.channel: Channel | None = None
        self.socket: Path | None = None  # the channel's, in hostrun's private dir
        # True until the session thread has ended, set under _booted: what its waiters
        # check (is_alive() stays True for a moment after the thread's last notify, and
        # a waiter that saw it then would sleep its whole timeout).
        self._running = True
        self._thread = threading.Thread(target=self._session, daemon=True,
                                        name="initkit-machine")
        self._thread.start()
        try:
            self.channel = self._connect(timeout)
        except BaseException:
            self._stop()
            raise

    # -- the session thread -------------------------------------------------------------
    def _session(self) -> None:
        from hostrun.session import Control
        from hostrun.session import run as run_session

        def booted(socket_path: Path) -> None:
            with self._booted:
                self._sockets.append(socket_path)
                self._booted.notify_all()

        try:
            self._outcome = run_session(self._spec, sink=self._keep, stdin=b"",
                                        control=Control(booted, self._stop_r))
        except BaseException as exc:  # handed to the caller's thread
            self._crash = exc
        finally:
            with self._booted:
                self._running = False
                self._booted.notify_all()

    def _keep(self, data: bytes) -> None:
        with self._console_lock:
            self._console += data
            del self._console[:-CONSOLE_TAIL_BYTES]

    @property
    def outcome(self) -> Outcome | None:
        """How the boot ended, once it has (hostrun's exit code, the guest's status)."""
        return self._outcome

    def console_tail(self, lines: int = 30) -> str:
        """The last lines the guest's console showed (kernel messages, the init's)."""
        with self._console_lock:
            text = bytes(self._console).decode(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def _describe_failure(self) -> str:
        self._thread.join(5)  # the VM's last words arrive as it stops
        parts = []
        if self._outcome is not None and self._outcome.error:
            parts.append(f"hostrun: {self._outcome.error}")
        tail = self.console_tail()
        parts.append("--- console ---\n" + (tail or "(nothing)"))
        return "\n".join(parts)

    def _ended(self) -> str:
        if self._crash is not None:
            raise self._crash
        outcome = self._outcome
        why = outcome.error if outcome is not None and outcome.error else "it stopped"
        return f"the VM ended before its control channel answered: {why}"

    def _connect(self, timeout: float) -> Channel:
        """The channel of the newest boot; a boot that dies before its init (and is
        booted again by the session) is waited out."""
        deadline = time.monotonic() + timeout
        tried = 0
        while True:
            with self._booted:
                while len(self._sockets) == tried and self._running:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ChannelError(f"the VM did not boot in {timeout:g} s",
                                           self._describe_failure())
                    self._booted.wait(left)
                if len(self._sockets) == tried:
                    raise BootFailed(self._ended(), self._describe_failure(), self._outcome)
                tried = len(self._sockets)
                path = self._sockets[-1]
            while not path.exists() and self._running \
                    and time.monotonic() < deadline:
                time.sleep(0.01)  # QEMU makes its socket a moment after it started
            left = max(1.0, deadline - time.monotonic())
            self.socket = path
            try:
                if contract.is_console_channel(self._spec.vmm.channel_device):
                    console: dict[str, Any] = {"ready": contract.CONSOLE_READY,
                                               "window": CONSOLE_WINDOW}
                else:
                    console = {}
                return Channel.connect(path, timeout=left,
                                       listening=lambda: self._running,
                                       describe_failure=self._describe_failure,
                                       name="the guest", **console)
            except ChannelError:
                if not self._booted_again(tried):
                    if not self._running:  # the VM ended first: say how
                        raise BootFailed(self._ended(), self._describe_failure(),
                                         self._outcome) from None
                    raise

    def _booted_again(self, boots: int) -> bool:
        """True once the session has started a boot after the first ``boots`` (it boots
        again a guest that died before its init); False if it ended instead."""
        with self._booted:
            self._booted.wait_for(
                lambda: len(self._sockets) > boots or not self._running, timeout=10)
            return len(self._sockets) > boots

    # -- commands -------------------------------------------------------------------------
    def _channel(self) -> Channel:
        if self._closed or self.channel is None:
            raise InitkitError("the machine is closed; make a new Machine to boot again")
        return self.channel

    def execute(self, command: Command, *, input: bytes | None = None,
                timeout: float | None = None, env: Mapping[PathArg, PathArg] | None = None,
                cwd: str | None = None, keep_background: bool = False) -> Execution:
        """Start ``command`` (an argv, or a str for ``/bin/sh -c``) and return at once:
        iterate it for its output, ``wait()`` for its result."""
        return self._channel().exec(_argv(command), input=input, timeout=timeout, env=env,
                                    cwd=cwd, keep_background=keep_background)

    def run(self, command: Command, *, input: bytes | None = None,
            timeout: float | None = None, env: Mapping[PathArg, PathArg] | None = None,
            cwd: str | None = None, keep_background: bool = False) -> ExecResult:
        """Run ``command`` to its end: returncode (128+N for signal N), stdout and stderr
        (bytes, apart), duration. ``timeout`` (s) kills its process group in the guest
        and sets ``timed_out``; the machine stays usable."""
        return self.execute(command, input=input, timeout=timeout, env=env, cwd=cwd,
                            keep_background=keep_background).wait()

    def succeed(self, command: Command, **options: Any) -> ExecResult:
        """run(), raising CommandFailed (argv, status, stdout, stderr) unless it exits 0."""
        result = self.run(command, **options)
        if result.returncode != 0:
            raise CommandFailed(self._failed("expected success", result), result)
        return result

    def fail(self, command: Command, **options: Any) -> ExecResult:
        """run(), raising CommandFailed if it exits 0."""
        result = self.run(command, **options)
        if result.returncode == 0:
            raise CommandFailed(self._failed("expected failure", result), result)
        return result

    def wait_until_succeeds(self, command: Command, *, timeout: float = 60.0,
                            interval: float = 0.2, **options: Any) -> ExecResult:
        """run() again until it exits 0; CommandFailed with the last try after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.run(command, **options)
            if result.returncode == 0:
                return result
            if time.monotonic() + interval > deadline:
                raise CommandFailed(self._failed(f"no success in {timeout:g} s", result),
                                    result)
            time.sleep(interval)

    def _failed(self, what: str, result: ExecResult) -> str:
        tail = self.console_tail(10)
        return describe_result(what, result) + (f"--- console ---\n{tail}\n" if tail else "")

    def stream(self, command: Command, **options: Any) -> Iterator[tuple[str, bytes]]:
        """("stdout" | "stderr", chunk) while ``command`` runs; its result is then
        ``wait()`` on the Execution (use ``execute`` to keep it)."""
        execution = self.execute(command, **options)
        try:
            yield from execution
        finally:  # the consumer stopped early: the command is not left running
            with contextlib.suppress(InitkitError):
                execution.kill()
        execution.wait()

    def copy_in(self, host: str | Path, guest: str) -> None:
        """Copy a host file or directory to ``guest`` (a directory: its tree)."""
        channel = self._channel()
        if Path(host).is_dir():
            channel.put_dir(host, guest)
        else:
            channel.put_file(host, guest)

    def copy_out(self, guest: str, host: str | Path, *, directory: bool = False) -> None:
        """Copy the guest's file (or with ``directory``, tree) ``guest`` to ``host``;
        nothing the guest sends is written outside ``host``."""
        channel = self._channel()
        if directory:
            channel.get_dir(guest, host)
        else:
            channel.get_file(guest, host)

    # -- the end --------------------------------------------------------------------------
    def close(self) -> None:
        """Power the guest off over the channel, then tear down as hostrun does (VMM,
        daemon, private dir). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.channel is not None:
            with contextlib.suppress(InitkitError, OSError):
                self.channel.shutdown()
        self._thread.join(STOP_GRACE)
        self._stop()

    def _stop(self) -> None:
        """Stop the VM now (if still up) and wait for the teardown."""
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join()
        if self.channel is not None:
            self.channel.close()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Command = Sequence[str | bytes] | str


def _argv(command: Command) -> list[str | bytes]:
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    return list(command)


def describe_result(what: str, result: ExecResult) -> str:
    """A failed expectation: argv, status, stdout and stderr."""
    argv = " ".join(repr(a.decode(errors="backslashreplace")) for a in result.argv)
    how = "timed out" if result.timed_out else f"exit status {result.returncode}"
    return (f"{what}: [{argv}] ended with {how}"
            f"\n--- stdout ---\n{_lines(result.stdout)}--- stderr ---\n{_lines(result.stderr)}")


def _lines(data: bytes) -> str:
    text = data.decode(errors="replace")
    return text if not text or text.endswith("\n") else text + "\n"
