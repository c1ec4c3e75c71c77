"""Carry a plan out through a System: the steps, then the action, to an ExitStatus."""

from __future__ import annotations

from guest import plan as steps
from guest.cmdline import parse
from guest.contract import (
    APPLET_LIST,
    INIT_FAILED,
    MODULE_LIST,
    NO_NONCE,
    NOT_EXECUTABLE,
    NOT_FOUND,
    STORE,
    ExitStatus,
    is_console_channel,
    ready_record,
)
from guest.system import ShutdownRequested

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which is slow at boot
if TYPE_CHECKING:
    from guest.interface import SystemInterface

_FIND_CHUNK = 1 << 16


class Outcome:
    """What PID 1 reports at the end; filled in as the boot learns it."""

    __slots__ = ("nonce", "status")

    def __init__(self) -> None:
        self.nonce = NO_NONCE
        self.status = ExitStatus.exited(INIT_FAILED)


class Timeline:
    """Phase timings for ``initkit.debug``, in seconds since boot."""

    def __init__(self, system: SystemInterface, started: float) -> None:
        self._now = system.now
        self.started = started
        self.marks: list[tuple[str, float]] = []

    def mark(self, label: str) -> None:
        self.marks.append((label, self._now()))

    def report(self, exec_time: tuple[float, float] | None) -> list[str]:
        """Lines describing where the init's time went, up to now. ``exec_time``: when
        the kernel ran /init and how far the kernel log's clock is ahead of ours."""
        end = self._now()
        lines = []
        if exec_time is not None:
            lines.append(f"timing: kernel ran /init at {exec_time[0]:.3f} s since boot; its "
                         f"code began {(self.started - exec_time[0]) * 1000:.1f} ms later "
                         "(the interpreter's start)")
            lines.append(f"timing: the kernel log's clock is {exec_time[1] * 1000:.1f} ms "
                         "ahead of this one")
        else:
            lines.append(f"timing: /init's code began at {self.started:.3f} s since boot")
        last = self.started
        for label, when in self.marks:
            lines.append(f"timing: {(when - last) * 1000:7.1f} ms  {label}")
            last = when
        since_exec = (f", {(end - exec_time[0]) * 1000:.1f} ms since exec"
                      if exec_time else "")
        lines.append(f"timing: action starts at {end:.3f} s since boot "
                     f"({(end - self.started) * 1000:.1f} ms since /init's code began"
                     f"{since_exec})")
        return lines


def boot(system: SystemInterface, outcome: Outcome, started: float,
         imported: float | None = None) -> None:
    """Everything PID 1 does before powering off; sets ``outcome``. ``started`` is when
    /init's code began, ``imported`` when the guest package had been imported."""
    timeline = Timeline(system, started)
    if imported is not None:
        timeline.marks.append(("import the guest package", imported))
    run_steps(steps.early_steps(), system, timeline)
    cmdline = parse(system.read_cmdline())
    plan = steps.make_plan(cmdline, modules=system.read_text(MODULE_LIST),
                           shell=system.find_shell(), environ=system.environ(),
                           applets=system.read_text(APPLET_LIST))
    outcome.nonce = plan.nonce
    timeline.mark("read the command line and plan")
    for warning in plan.warnings:
        system.say(warning)
    fatal = run_steps(plan.steps, system, timeline)
    if plan.debug:
        for line in timeline.report(system.init_exec_time()):
            system.say(line)
    if fatal is not None:
        system.say(f"{fatal}; not starting the action")
        outcome.status = ExitStatus.exited(INIT_FAILED)
        return
    system.catch_shutdown_signals()
    if not plan.echo:
        try:
            system.set_echo(False)
        except OSError as exc:
            system.say(f"cannot turn off the console's echo: {describe(exc)}")
    system.write_out(ready_record(plan.nonce))
    began = system.now()
    try:
        outcome.status = run_action(plan.action, system, debug=plan.debug)
    except ShutdownRequested as request:
        system.say(f"{request}; ending every process")
        outcome.status = ExitStatus.exited(0)
    if plan.debug:  # what is left after this is the power-off
        ended = system.now()
        system.say(f"timing: action ended at {ended:.3f} s since boot "
                   f"({(ended - began) * 1000:.1f} ms)")


def describe(exc: OSError) -> str:
    """``errno 2 ENOENT (No such file or directory)``: the kernel's errno, spelled out."""
    import errno  # where errors are reported only: it costs ~2 ms of every boot under TCG

    number = exc.errno or 0
    name = errno.errorcode.get(number, "?")
    return f"errno {number} {name} ({exc.strerror})"


def run_steps(plan_steps: tuple[steps.Step, ...], system: SystemInterface,
              timeline: Timeline) -> str | None:
    """Run every step; report failures. Returns the message of a fatal failure, or None."""
    for step in plan_steps:
        label = _label(step)
        try:
            _run_step(step, system)
        except OSError as exc:
            message = f"{label} failed: {describe(exc)}"
            hint = getattr(step, "hint", "")
            if hint:
                message += f"; {hint}"
            system.say(message)
            if getattr(step, "fatal", False):
                return message
        timeline.mark(label)
    return None


def _label(step: steps.Step) -> str:
    if isinstance(step, steps.Mount):
        if step.flags & steps.MS_REMOUNT:
            return f"remount {step.target}"
        what = step.fstype or "bind"
        return f"mount {what} {step.source!r} on {step.target}"
    if isinstance(step, steps.LoadModule):
        return f"load module {step.path}"
    if isinstance(step, steps.Console):
        return f"open console {step.path}"
    if isinstance(step, steps.Symlink):
        return f"link {step.path}"
    if isinstance(step, steps.LinkAll):
        return f"link {len(step.paths)} paths to {step.target}"
    return f"create {step.path}"


def _run_step(step: steps.Step, system: SystemInterface) -> None:
    if isinstance(step, steps.Mount):
        if not step.flags & steps.MS_REMOUNT:
            system.make_dir(step.target)
        system.mount(step.source, step.target, step.fstype, step.flags, step.data)
    elif isinstance(step, steps.Console):
        system.ensure_console(step.path)
    elif isinstance(step, steps.Symlink):
        system.symlink(step.path, step.target)
    elif isinstance(step, steps.LinkAll):
        system.link_all(step.paths, step.target)
    elif isinstance(step, steps.LoadModule):
        system.load_module(step.path)
    elif isinstance(step, steps.MakeDir):
        system.make_dir(step.path)
    else:
        raise TypeError(f"unknown step {step!r}")


def run_action(action: steps.Action, system: SystemInterface, *, debug: bool = False) -> ExitStatus:
    """Carry out the one action and say how it ended."""
    if isinstance(action, steps.ListTree):
        return _list_tree(action, system)
    if isinstance(action, steps.Spawn):
        return _spawn(action, system, debug)
    if isinstance(action, steps.SwitchRoot):
        return _switch_root(action, system)
    if isinstance(action, steps.Serve):
        return _serve(action, system, debug)
    if isinstance(action, steps.Fail):
        system.say(action.message)
        return ExitStatus.exited(action.status)
    raise TypeError(f"unknown action {action!r}")


def _list_tree(action: steps.ListTree, system: SystemInterface) -> ExitStatus:
    pending = bytearray()
    failed = False
    for path, error in system.walk(action.root.encode("utf-8", "surrogateescape")):
        if error is not None:
            system.write_out(bytes(pending))
            pending.clear()
            name = path.decode("utf-8", "backslashreplace")
            system.say(f"find: {name}: {describe(error)}")
            failed = True
            continue
        pending += path + b"\n"
        if len(pending) >= _FIND_CHUNK:
            system.write_out(bytes(pending))
            pending.clear()
    system.write_out(bytes(pending))
    return ExitStatus.exited(1 if failed else 0)


def _spawn(action: steps.Spawn, system: SystemInterface, debug: bool) -> ExitStatus:
    if debug:  # otherwise the console carries only the program's own output
        system.say(f"running {action.what}: {' '.join(action.argv)}")
    try:
        pid = system.spawn(action.argv, action.env)
    except OSError as exc:
        return _exec_failure(action.argv[0], exc, system)
    return _wait_for(pid, system, debug)


def _wait_for(pid: int, system: SystemInterface, debug: bool) -> ExitStatus:
    """Reap children until ``pid`` ends; its status."""
    while True:
        try:
            ended, status = system.wait_any()
        except ChildProcessError:
            system.say(f"lost track of process {pid}")
            return ExitStatus.exited(INIT_FAILED)
        if ended == pid:
            return ExitStatus.from_wait(status)
        if debug:
            system.say(f"reaped orphan {ended} ({ExitStatus.from_wait(status)})")


# Seconds the port may take to appear after virtio_console loaded (its probe and the
# host's port announcement run after the module's init returned).
PORT_WAIT = 10.0


def _serve(action: steps.Serve, system: SystemInterface, debug: bool) -> ExitStatus:
    """Run the agent on the control channel until it ends; reap orphans meanwhile.
    The agent's status is the boot's: 0 after the host's shutdown."""
    try:
        device = system.find_port(action.port, PORT_WAIT)
    except OSError as exc:
        system.say(f"cannot serve the control channel on {action.port}: {describe(exc)}")
        return ExitStatus.exited(INIT_FAILED)
    if device is None:
        where = ("no console device " + action.port if is_console_channel(action.port) else
                 f"no virtio-serial port named {action.port!r} (under /sys/class/virtio-ports)")
        system.say(f"{where}: is the virtio_console module in the initrd or built in, and "
                   "did the host attach the port?")
        return ExitStatus.exited(INIT_FAILED)
    try:
        pid = system.start_agent(device, _agent_main)
    except OSError as exc:
        system.say(f"cannot serve the control channel on {device}: {describe(exc)}")
        return ExitStatus.exited(INIT_FAILED)
    if debug:
        system.say(f"serving the control channel on {device} (agent pid {pid})")
    return _wait_for(pid, system, debug)


def _agent_main(fd: int) -> int:
    """The agent's entry, in the forked child: only a session pays for its imports."""
    from guest import port

    return port.main(fd)


def _exec_failure(program: str, exc: OSError, system: SystemInterface) -> ExitStatus:
    """A shell's answer to a failed exec: 127 not found, 126 found but not runnable."""
    import errno  # see describe()

    code = NOT_FOUND if exc.errno in (errno.ENOENT, errno.ENOTDIR) else NOT_EXECUTABLE
    why = describe(exc)
    if exc.errno == errno.ENOENT and "/" in program and system.exists(program):
        why += "; the file exists, so its ELF interpreter or #! interpreter is missing"
    system.say(f"cannot run {program}: {why}")
    return ExitStatus.exited(code)


def _switch_root(action: steps.SwitchRoot, system: SystemInterface) -> ExitStatus:
    new_root, init = action.new_root, action.argv[0]
    if init.startswith(STORE + "/") and not system.exists(init):
        # Checked before anything is torn down, so a typo leaves a working initrd.
        import errno  # see describe()

        return _exec_failure(init, OSError(errno.ENOENT, "No such file or directory"), system)
    try:
        system.make_dir(new_root)
        system.mount("tmpfs", new_root, "tmpfs", 0, "mode=0755")
        system.make_dir(new_root + STORE)
        system.mount(STORE, new_root + STORE, None, steps.MS_MOVE, "")
        for path in steps.CARRIED_MOUNTS:
            try:
                system.make_dir(new_root + path)
                system.mount(path, new_root + path, None, steps.MS_MOVE, "")
            except OSError as exc:
                system.say(f"switch root: moving {path} failed: {describe(exc)}; going on")
        try:
            system.umount("/tmp", steps.MNT_DETACH)  # its memory would stay pinned, unreachable
        except OSError as exc:
            system.say(f"switch root: unmounting /tmp failed: {describe(exc)}; going on")
        failures = system.remove_tree_on_root(new_root)
        if failures:
            system.say(f"switch root: {failures} initrd files could not be removed; going on")
        system.chdir(new_root)
        system.mount(new_root, "/", None, steps.MS_MOVE, "")
        system.chroot(".")
        system.chdir("/")
    except OSError as exc:
        system.say(f"cannot switch root to {new_root}: {describe(exc)}")
        return ExitStatus.exited(INIT_FAILED)
    system.say(f"switched root; handing PID 1 to {' '.join(action.argv)}")
    try:
        system.execve(action.argv, action.env)
    except OSError as exc:
        return _exec_failure(init, exc, system)
    return ExitStatus.exited(INIT_FAILED)  # execve returned without an error: cannot happen
