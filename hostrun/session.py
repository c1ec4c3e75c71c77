"""One VM run: daemon up -> VM up -> relay the console -> exit status -> teardown, always.

Teardown (VMM stopped, daemon stopped, socket and private temp dir removed, terminal
restored) happens on every path: success, failure, --timeout, Ctrl-C, SIGTERM. Child
processes also get SIGKILL from the kernel if hostrun itself is killed (procs.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shlex
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from guest import contract
from hostrun.action import Action, kernel_cmdline, new_nonce
from hostrun.exitcodes import ExitCode, exit_code_for_host_signal
from hostrun.placement import PADDED_NAME
from hostrun.procs import child_setup, stop_process
from hostrun.virtiofs import DaemonFailed, VirtiofsDaemon
from hostrun.vmm import BootConfig, Vmm, request_queues
from hostrun.workdir import private_dir, reap_abandoned
from initkit import process
from initkit.errors import InitkitError, writing
from initkit.files import TMPDIR_ELSEWHERE, remove_tree

# The console, relay and terminal modules are imported where they are first needed: the
# relay loop runs after QEMU has started, so their import (~3 ms) overlaps its boot.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from guest.contract import ExitStatus
    from hostrun.console import ConsoleFilter, StatusScanner
    from hostrun.storeview.view import StoreView

log = logging.getLogger("initkit.hostrun")

STATUS_GRACE = 5.0  # seconds a guest may take to power off after its status line
PANIC_GRACE = 2.0  # seconds a panicked guest gets to stop on its own
DAEMON_GRACE = 2.0  # seconds the VMM gets to exit after its daemon did (with status 0)
IDLE_FLUSH = 0.2  # seconds before held bytes are shown anyway (terminal output only)
# Seconds of a silent console after the VMM started before hostrun says it is still
# waiting. With `quiet` the first byte is the init's, which takes up to ~6 s under TCG
# on a slow machine with Debian's kernel, well under a second with KVM.
SILENCE_NOTICE = {"tcg": 15.0, "kvm": 5.0}
# Boots that die before the guest's init said a word are booted again this many times:
# nothing of the user's has run yet, so a second boot is safe. (QEMU 10's legacy PIC did
# that to a few boots in thirty until microvm got pic=off: docs/hostrun.md.)
EARLY_DEATH_RETRIES = 2


@dataclass
class RunSpec:
    """Everything resolved for one run (see hostrun.plan for building one)."""

    kernel: Path  # in the form the VMM takes
    initrd: Path
    vmm: Vmm
    daemon: VirtiofsDaemon
    accel: str = "tcg"
    action: Action | None = None
    cpus: int = 1
    memory_mib: int = 512
    extra_cmdline: str = ""
    timeout: float | None = None
    verbose: bool = False
    fs_tag: str = contract.DEFAULT_TAG
    silence_notice: float | None = None  # None: SILENCE_NOTICE for the accelerator
    store_view: StoreView | None = None  # exactly these store paths (--closure), not a dir


@dataclass
class Outcome:
    """How a run ended: the code to exit with, and why."""

    code: int
    status: ExitStatus | None = None
    error: str | None = None  # hostrun's own failure, for stderr
    argv: list[str] = field(default_factory=list)  # the VMM command line
    host_signal: int | None = None  # the signal that stopped hostrun (SIGINT, SIGTERM)


Sink = Callable[[bytes], None]
CHANNEL_SOCKET = "ctl.sock"  # in the private dir: the control channel's socket


@dataclass
class Control:
    """A run driven over the control channel from another thread (hostrun.api.Machine):
    the guest serves the channel instead of doing an action. ``booted`` is called with
    the channel's socket each time a VMM has started (again after an early-death retry);
    ``stop`` is an fd whose becoming readable stops the VM at once."""

    booted: Callable[[Path], None]
    stop: int


def write_stdout(data: bytes) -> None:
    """The default console sink: hostrun's stdout, unbuffered."""
    view = memoryview(data)
    while view:
        written = os.write(1, view)
        view = view[written:]


def run(spec: RunSpec, *, sink: Sink = write_stdout, stdin: int | bytes | None = None,
        interactive: bool = False, live: bool = False,
        control: Control | None = None) -> Outcome:
    """Boot ``spec`` and relay its console to ``sink`` until the guest is done.

    ``stdin``: an fd to relay to the guest (its end sends ^D), bytes to send, or None.
    ``interactive``: ``stdin`` is a terminal to put in raw mode (--shell); its
    output keeps the guest's "\\r\\n" and Ctrl-] stops the VM. ``live``: the sink is
    a terminal, so bytes held to be classified are shown after a short idle time.
    ``control``: attach the control channel and let its caller drive the guest; the run
    ends when the guest powers off (after the channel's shutdown) or ``control.stop``.
    """
    return _Run(spec, sink, stdin, interactive, live, control).run()


def _no_input(stdin: int | bytes | None) -> bool:
    """True if the guest gets no bytes but the final ^D (which a terminal does not echo):
    no stdin, empty bytes, or /dev/null. The guest's console can then keep its echo, and
    its init skips loading termios (a few ms of every boot under TCG)."""
    if stdin is None or stdin == b"":
        return True
    if isinstance(stdin, bytes):
        return False
    try:
        st, null = os.fstat(stdin), os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev


class _Run:
    def __init__(self, spec: RunSpec, sink: Sink, stdin: int | bytes | None,
                 interactive: bool, live: bool, control: Control | None = None) -> None:
        self.spec = spec
        self.control = control
        self.stopped = False  # control.stop became readable
        self.live = live
        self.sink = sink
        self.stdin = stdin
        self.interactive = interactive
        self.nonce = new_nonce()
        self.scanner: StatusScanner | None = None  # made by _supervise, once QEMU runs
        self.vmm_proc: subprocess.Popen[bytes] | None = None
        self.signals: list[int] = []
        self.escaped = False
        self.argv: list[str] = []
        self.got_output = False  # any byte at all on the console
        self.userspace_output = False  # a byte that is no kernel message
        self.reaped = False  # abandoned private dirs looked for (once a run)

    # -- the whole run --------------------------------------------------------------
    def run(self) -> Outcome:
        # The handlers are set before the private dir exists and reset after it is gone:
        # a SIGTERM just before or after them would kill hostrun with the dir in place.
        with _host_signals(self.signals) as wakeup:
            workdir = private_dir()
            try:
                with contextlib.ExitStack() as stack:
                    if self.interactive and isinstance(self.stdin, int):
                        from hostrun.terminal import raw_terminal

                        stack.enter_context(raw_terminal(self.stdin))
                    try:
                        return self._run(workdir, wakeup)
                    finally:
                        self._teardown()
            finally:
                remove_tree(workdir)

    def _run(self, workdir: Path, wakeup: int | None) -> Outcome:
        spec = self.spec
        if spec.store_view is not None:  # the view lives and goes with the private dir
            from hostrun.storeview.view import build_view  # only --closure runs pay for it

            with writing(workdir / "store", "make the store view",
                         instead=TMPDIR_ELSEWHERE):
                view = build_view(spec.store_view, workdir / "store")
            spec.daemon.serve_view(view.root, view.mounts)
        for retry in range(EARLY_DEATH_RETRIES + 1):
            outcome = self._boot(workdir, wakeup)
            if not self._died_before_init(outcome):
                return outcome
            if retry == EARLY_DEATH_RETRIES:
                outcome.error = (f"{outcome.error} ({retry + 1} boots in a row died before "
                                 "the guest's init started)")
                return outcome
            log.info("hostrun: the guest died before its init started (%s); booting it "
                     "again (%d of %d)", outcome.error, retry + 2, EARLY_DEATH_RETRIES + 1)
            self._teardown()
            self.vmm_proc, self.scanner, self.got_output = None, None, False
        raise AssertionError("unreachable")

    def _died_before_init(self, outcome: Outcome) -> bool:
        """The VM stopped (kernel panic, triple fault) before the init said it was ready
        or anything reached userspace: nothing of the run has happened yet."""
        return (outcome.code == ExitCode.NO_STATUS and not self.signals and not self.escaped
                and self.scanner is not None and not self.scanner.ready
                and not self.userspace_output)

    def _boot(self, workdir: Path, wakeup: int | None) -> Outcome:
        """One boot: daemon up, VMM up, supervised to its end."""
        spec = self.spec
        try:
            spec.daemon.start(workdir)
            spec.daemon.wait_ready()
        except DaemonFailed as exc:
            return Outcome(ExitCode.DAEMON_FAILED, error=str(exc))
        if self.control is not None and _readable(self.control.stop):
            self.stopped = True
        if self.signals or self.stopped:  # stopped while the daemon was starting
            return Outcome(self._interrupt_code(), error="interrupted",
                           host_signal=self.signals[0] if self.signals else None)
        assert spec.daemon.socket_path is not None
        extra = spec.extra_cmdline
        channel = None
        if self.control is not None:
            channel = workdir / CHANNEL_SOCKET
            extra = f"{extra} {contract.CHANNEL_KEY}={spec.vmm.channel_device}".strip()
        cmdline = kernel_cmdline(defaults=spec.vmm.cmdline_defaults(spec.accel),
                                 nonce=self.nonce, verbose=spec.verbose, action=spec.action,
                                 extra=extra,
                                 echo=self.interactive or _no_input(self.stdin),
                                 tag=spec.fs_tag)
        with writing(workdir / PADDED_NAME, "copy the initrd, padded for QEMU",
                     instead=TMPDIR_ELSEWHERE):
            initrd = spec.vmm.initrd_for(spec.initrd, workdir)
        config = BootConfig(
            kernel=spec.kernel, initrd=initrd, cmdline=cmdline,
            fs_socket=spec.daemon.socket_path, cpus=spec.cpus, memory_mib=spec.memory_mib,
            fs_tag=spec.fs_tag,
            fs_queues=request_queues(spec.cpus, spec.daemon.max_request_queues),
            accel=spec.accel, channel_socket=channel,
        )
        argv = self.argv = spec.vmm.argv(config)
        log.info("booting: %s", shlex.join(argv))
        vmm_log = workdir / "vmm.log"
        with writing(vmm_log, f"make the log of {spec.vmm.name}", instead=TMPDIR_ELSEWHERE):
            errfile = open(vmm_log, "wb")  # noqa: SIM115 - closed below, once QEMU has it
        try:
            self.vmm_proc = process.start(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errfile,
                new_session=True, preexec_fn=child_setup(), what=spec.vmm.name)
        except InitkitError as exc:
            return Outcome(ExitCode.VMM_FAILED, argv=argv, error=str(exc))
        finally:
            errfile.close()
        if self.control is not None and channel is not None:
            self.control.booted(channel)
        if not self.reaped:  # while the guest boots: left by hostruns killed with SIGKILL
            self.reaped = True
            for stale in reap_abandoned(str(workdir.parent)):
                log.info("hostrun: removed %s, left by a hostrun that was killed", stale)
        outcome = self._supervise(wakeup)
        outcome.argv = argv
        if outcome.error is None and outcome.status is None:
            outcome.error = self._explain(outcome.code, vmm_log)
        return outcome

    # -- the relay loop -------------------------------------------------------------
    def _supervise(self, wakeup: int | None) -> Outcome:
        proc = self.vmm_proc
        assert proc is not None and proc.stdout is not None and proc.stdin is not None
        daemon = self.spec.daemon.process
        from hostrun.console import ConsoleFilter, StatusScanner
        from hostrun.relay import InputRelay, read_some

        self.scanner = scanner = StatusScanner(self.nonce)
        console_filter = ConsoleFilter(self.nonce, show_kernel=self.spec.verbose,
                                       crlf=not self.interactive)
        console = proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(console, selectors.EVENT_READ, "console")
        relay = InputRelay(sel, self.stdin, proc.stdin.fileno(), interactive=self.interactive)
        pidfds = [fd for fd in (_pidfd(proc.pid), _pidfd(daemon.pid) if daemon else None)
                  if fd is not None]
        for fd in pidfds:
            sel.register(fd, selectors.EVENT_READ, "exit")
        if wakeup is not None:
            sel.register(wakeup, selectors.EVENT_READ, "signal")
        if self.control is not None:
            sel.register(self.control.stop, selectors.EVENT_READ, "stop")
        polling = len(pidfds) < (2 if daemon else 1)  # no pidfd: poll the processes
        now = time.monotonic()
        timers = _Timers(deadline=now + self.spec.timeout if self.spec.timeout else None)
        silence = self.spec.silence_notice
        if silence is None:
            silence = SILENCE_NOTICE.get(self.spec.accel, SILENCE_NOTICE["tcg"])
        timers.start("silence", now, silence)
        last_data = now
        console_open = True
        try:
            while True:
                now = time.monotonic()
                if self.signals or relay.escaped or self.stopped:
                    self.escaped = relay.escaped
                    return Outcome(self._interrupt_code(),
                                   host_signal=self.signals[0] if self.signals else None)
                if timers.expired("deadline", now):
                    return Outcome(ExitCode.TIMEOUT)
                if timers.expired("silence", now):
                    timers.cancel("silence")
                    self._notice_silence(silence)
                vmm_alive = proc.poll() is None
                if not vmm_alive and not console_open:
                    break
                if timers.expired("status", now) or timers.expired("panic", now):
                    break  # reported what it had to; stopped by teardown
                if vmm_alive and daemon is not None and daemon.poll() is not None \
                        and scanner.status is None:
                    if daemon.returncode != 0 or timers.expired("daemon", now):
                        return Outcome(ExitCode.DAEMON_FAILED)
                    # A daemon exits 0 when the VMM hangs up: the VMM may be stopping.
                    timers.start("daemon", now, DAEMON_GRACE)
                if not relay.gate and (scanner.ready or console_filter.userspace_output
                                       or scanner.init_started):
                    relay.gate = True  # the guest's tty is open: input is no longer lost
                relay.update(vmm_alive)
                idle = self.live and console_filter.holding
                timeout = timers.next(now, last_data + IDLE_FLUSH if idle else None)
                if polling or relay.busy:
                    limit = 0.0 if relay.busy else 0.05
                    timeout = limit if timeout is None else min(timeout, limit)
                for key, _ in sel.select(timeout):
                    if key.data == "console":
                        data = read_some(console)
                        if data == b"":
                            sel.unregister(console)
                            console_open = False
                        elif data:
                            last_data = time.monotonic()
                            if not self.got_output:
                                self.got_output = True
                                timers.cancel("silence")
                            self._show(data, scanner, console_filter)
                            if scanner.status is not None:
                                timers.start("status", last_data, STATUS_GRACE)
                                timers.cancel("deadline")  # the guest did finish in time
                            if scanner.panic is not None:
                                timers.start("panic", last_data, PANIC_GRACE)
                    elif key.data == "input":
                        relay.readable()
                    elif key.data == "to_guest":
                        relay.writable()
                    elif key.data == "exit":
                        sel.unregister(key.fd)
                    elif key.data == "signal":
                        read_some(key.fd)
                    elif key.data == "stop":
                        self.stopped = True
                if idle and time.monotonic() - last_data >= IDLE_FLUSH:
                    self._emit(console_filter.flush())
        finally:
            self._emit(console_filter.flush(final=True))
            self.userspace_output = console_filter.userspace_output
            sel.close()
            for fd in pidfds:
                os.close(fd)
        return self._verdict(scanner)

    def _verdict(self, scanner: StatusScanner) -> Outcome:
        status = scanner.status
        if status is not None:
            return Outcome(status.code, status=status)
        daemon = self.spec.daemon.process
        if daemon is not None and daemon.poll() not in (None, 0):
            return Outcome(ExitCode.DAEMON_FAILED)
        assert self.vmm_proc is not None
        if scanner.panic is None and self.vmm_proc.poll() not in (None, 0):
            return Outcome(ExitCode.VMM_FAILED)
        return Outcome(ExitCode.NO_STATUS)

    def _explain(self, code: int, vmm_log: Path) -> str:
        """The one message for a run that ended without a guest status."""
        spec = self.spec
        if code == ExitCode.TIMEOUT and not self.got_output:
            return self._silent_guest(vmm_log)
        if code == ExitCode.TIMEOUT:
            return (f"the guest did not finish within --timeout {spec.timeout:g} s; "
                    "stopped the VM")
        if self.escaped:
            return "left the guest with Ctrl-]; stopped the VM"
        if code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED) or self.signals:
            return "interrupted; stopped the VM"
        if code == ExitCode.DAEMON_FAILED:
            proc = spec.daemon.process
            how = (f"exited with status {proc.returncode}" if proc and proc.returncode
                   and proc.returncode > 0 else
                   f"was killed by signal {-proc.returncode}" if proc and proc.returncode
                   else "exited")
            return spec.daemon.failure(how + " while the VM was running")
        vmm_err = _tail(vmm_log)
        if code == ExitCode.VMM_FAILED:
            assert self.vmm_proc is not None
            return (f"{spec.vmm.name} exited with status {self.vmm_proc.returncode}"
                    + (f":\n{vmm_err}" if vmm_err else ""))
        if self.scanner is not None and self.scanner.panic is not None:
            return f"the guest kernel panicked: {self.scanner.panic}"
        hint = "" if spec.verbose else "; run with -v to see the kernel's messages"
        return ("the guest stopped without reporting an exit status (kernel panic, init "
                f"crash or a power-off before the program ended){hint}"
                + (f"\n{spec.vmm.name} said:\n{vmm_err}" if vmm_err else ""))

    def _notice_silence(self, seconds: float) -> None:
        """Say why nothing happens yet (the run goes on until the guest or --timeout)."""
        until = (f"--timeout {self.spec.timeout:g} s" if self.spec.timeout
                 else "it finishes or you press Ctrl-C (no --timeout)")
        log.warning("hostrun: the guest has printed nothing %g s after %s started; still "
                    "waiting until %s. %s", seconds, self.spec.vmm.name, until,
                    "Its command line:\n  " + shlex.join(self.argv)
                    + ("" if self.spec.verbose else
                       "\n(-v drops `quiet` and shows the kernel's own messages)"))

    def _silent_guest(self, vmm_log: Path) -> str:
        """The timeout message for a guest that never printed a byte."""
        spec = self.spec
        vmm_err = _tail(vmm_log)
        return (f"the guest printed nothing in --timeout {spec.timeout:g} s: the kernel "
                "never reached its console, or hung before it; stopped the VM. Check that "
                f"the kernel boots on {spec.vmm.describe()} (QEMU's microvm takes an "
                "x86-64 kernel with a PVH entry), and run with -v to see its messages. "
                f"The command line was:\n  {shlex.join(self.argv)}"
                + (f"\n{spec.vmm.name} said:\n{vmm_err}" if vmm_err else
                   f"\n{spec.vmm.name} printed nothing on its stderr"))

    def _interrupt_code(self) -> int:
        if self.signals:
            return exit_code_for_host_signal(self.signals[0])
        return ExitCode.INTERRUPTED

    # -- output ---------------------------------------------------------------------
    def _show(self, data: bytes, scanner: StatusScanner, console_filter: ConsoleFilter) -> None:
        scanner.feed(data)
        self._emit(console_filter.feed(data))

    def _emit(self, data: bytes) -> None:
        if data:
            with contextlib.suppress(BrokenPipeError):
                self.sink(data)

    def _teardown(self) -> None:
        if self.vmm_proc is not None:
            stop_process(self.vmm_proc, grace=2.0)
            for pipe in (self.vmm_proc.stdin, self.vmm_proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self.spec.daemon.stop()


class _Timers:
    """Named deadlines of the relay loop: the --timeout and the grace periods."""

    def __init__(self, deadline: float | None) -> None:
        self._at: dict[str, float] = {}
        if deadline is not None:
            self._at["deadline"] = deadline

    def start(self, name: str, now: float, seconds: float) -> None:
        self._at.setdefault(name, now + seconds)

    def cancel(self, name: str) -> None:
        self._at.pop(name, None)

    def expired(self, name: str, now: float) -> bool:
        return name in self._at and now >= self._at[name]

    def next(self, now: float, *extra: float | None) -> float | None:
        """Seconds until the earliest deadline (None: none is set)."""
        times = [*self._at.values(), *(t for t in extra if t is not None)]
        return max(0.0, min(times) - now) if times else None


def _readable(fd: int) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(0))


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # old kernel: the loop polls instead


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_bytes()[-4000:].decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def _host_signals(received: list[int]) -> Iterator[int | None]:
    """Turn SIGINT/SIGTERM/SIGHUP into entries of ``received`` plus a wake-up of the
    loop, so teardown runs in order; only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)

    def handler(signum: int, frame: object) -> None:
        received.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        yield r
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, previous in old.items():
            signal.signal(signum, previous)
        os.close(r)
        os.close(w)
