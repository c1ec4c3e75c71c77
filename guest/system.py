"""The operating system as PID 1 uses it: mounts, modules, processes, power, the console.

The one module whose methods touch the OS. Everything goes through posix and libc's
mount, umount2, syscall, ioctl and reboot, bound by guest.libc through _ctypes; the few
helpers of os that PID 1 needs are guest.osfuncs (importing os costs at every boot).
guest.boot is written against guest.interface.SystemInterface, which System implements
and the tests' recording fake imitates.
"""

from __future__ import annotations

# errno is imported where an error is handled, never at the top: it costs ~2 ms of every
# boot under TCG.
import _signal  # the public signal module imports enum, which costs at every boot
import io
import posix  # not os: see the module docstring
import sys
import time

from guest import libc
from guest.contract import BUSYBOX, CMDLINE_ENV, CONSOLE_READY, SHELL, is_console_channel
from guest.osfuncs import (
    S_IFCHR,
    S_IFDIR,
    S_IFMT,
    execvpe,
    find_port,
    fsdecode,
    fsencode,
    lexists,
    make_dirs,
    make_raw,
    read_file,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which is slow at boot
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# reboot(2) commands (linux/reboot.h).
RB_POWER_OFF = 0x4321FEDC
PR_SET_CHILD_SUBREAPER = 36  # prctl(2), linux/prctl.h
# finit_module(2) has no glibc wrapper; its number differs per architecture.
_FINIT_MODULE = {
    "x86_64": 313, "aarch64": 273, "riscv64": 273, "loongarch64": 273,
    "i386": 350, "i686": 350, "armv7l": 379, "ppc64le": 353, "ppc64": 353, "s390x": 344,
}
_TIOCSCTTY = {"mips": 0x5480, "mips64": 0x5480}
_GENERIC_TIOCSCTTY = 0x540E
# TCSBRK with a non-zero argument is tcdrain(3): wait until the tty has sent its output.
_TCSBRK = {"mips": 0x5405, "mips64": 0x5405, "ppc64": 0x2000741D, "ppc64le": 0x2000741D}
_GENERIC_TCSBRK = 0x5409
SHELL_CANDIDATES = ((SHELL,), (BUSYBOX, "sh"))
_EIO = 5  # errno's EIO, the same on every Linux architecture (asm-generic/errno-base.h)


class ShutdownRequested(Exception):
    """A signal asked PID 1 to power off (busybox poweroff sends SIGUSR2)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"power-off requested by signal {signum}")
        self.signum = signum


def _raise_shutdown(signum: int, _frame: object) -> None:
    raise ShutdownRequested(signum)



# A console device's node can be there before its console: devtmpfs has /dev/hvc0 from
# the moment the hvc driver registers, and opening it says ENODEV (or ENXIO) until
# virtio_console has probed the port behind it (seen with Debian 13's 6.12 kernel).
_NOT_YET = (6, 19)  # ENXIO, ENODEV (errno.h): not imported at boot for two numbers


def _console_ready(device: str, deadline: float) -> str | None:
    """``device`` once it opens, or None when it does not by ``deadline``."""
    while True:
        try:
            fd = posix.open(device, posix.O_RDWR | posix.O_NOCTTY | posix.O_NONBLOCK
                            | posix.O_CLOEXEC)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in _NOT_YET:
                raise
        else:
            posix.close(fd)
            return device
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)

class System:
    """The real operating system, as PID 1 sees it."""

    def __init__(self) -> None:
        functions = libc.bind()
        self._mount = functions["mount"]
        self._umount2 = functions["umount2"]
        self._syscall = functions["syscall"]
        self._ioctl = functions["ioctl"]
        self._reboot = functions["reboot"]
        self._prctl = functions["prctl"]
        self._get_errno = functions["get_errno"]
        self._machine = posix.uname().machine

    # -- time and output -------------------------------------------------------------
    @staticmethod
    def now() -> float:
        """Seconds since boot (CLOCK_BOOTTIME): the init's timeline."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    @staticmethod
    def init_exec_time() -> tuple[float, float] | None:
        """When the kernel exec'd init, on now()'s timeline, from its "Run /init as init
        process" record in /dev/kmsg (PID 1's own start time is the kernel thread's),
        and how far the kernel log's clock is ahead of now()'s, in seconds.

        The kernel log's clock is not CLOCK_BOOTTIME: on x86 the two differ by what the
        kernel ran before its timekeeping started (13-27 ms under TCG here). A record of
        our own, written and read back, measures the difference."""
        try:
            fd = posix.open("/dev/kmsg", posix.O_RDWR | posix.O_NONBLOCK | posix.O_CLOEXEC)
        except OSError:
            return None
        exec_stamp = None
        try:
            before = time.clock_gettime(time.CLOCK_BOOTTIME)
            posix.write(fd, b"<7>initkit: clock\n")  # debug level: never on the console
            after = time.clock_gettime(time.CLOCK_BOOTTIME)
            while True:
                try:
                    record = posix.read(fd, 8192)
                except BlockingIOError:
                    return None
                except BrokenPipeError:  # records overwritten while reading: go on
                    continue
                head, _, message = record.partition(b";")
                stamp = int(head.split(b",")[2]) / 1e6
                if message.startswith(b"Run ") and b" as init process" in message:
                    exec_stamp = stamp
                elif message.startswith(b"initkit: clock") and exec_stamp is not None:
                    ahead = stamp - (before + after) / 2
                    return exec_stamp - ahead, ahead
        except (OSError, IndexError, ValueError):
            return None
        finally:
            posix.close(fd)

    @staticmethod
    def say(message: str) -> None:
        """One line for the user on the console (stderr), prefixed with who speaks."""
        stream = sys.stderr or sys.stdout
        if stream is not None:
            stream.write(f"initkit: {message}\n")
            stream.flush()

    @staticmethod
    def write_out(data: bytes) -> None:
        """Bytes to fd 1 (the console) with no buffering in between."""
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        view = memoryview(data)
        while view:
            written = posix.write(1, view)
            view = view[written:]

    @staticmethod
    def set_echo(enabled: bool) -> None:
        """Turn the console's echo on or off (line editing stays: ^D still ends input)."""
        import termios  # only piped input needs it: keep it off the boot path

        attrs = termios.tcgetattr(0)
        attrs[3] = attrs[3] | termios.ECHO if enabled else attrs[3] & ~termios.ECHO
        termios.tcsetattr(0, termios.TCSANOW, attrs)

    @staticmethod
    def ensure_console(path: str) -> None:
        """Open fds 0-2 on ``path`` where the kernel could not, and reopen those on the
        initrd's console node (now hidden by devtmpfs) so ttyname() works; then make
        sure Python has streams on them."""
        try:
            console = posix.stat(path)
        except OSError:
            console = None
        stale = []
        for fd in (0, 1, 2):
            try:
                st = posix.fstat(fd)
            except OSError:
                stale.append(fd)
                continue
            if (console is not None and st.st_mode & S_IFMT == S_IFCHR
                    and st.st_rdev == console.st_rdev
                    and (st.st_dev, st.st_ino) != (console.st_dev, console.st_ino)):
                stale.append(fd)
        if stale:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
            fd = posix.open(path, posix.O_RDWR | posix.O_NOCTTY)
            for target in stale:
                posix.dup2(fd, target)
            if fd > 2:
                posix.close(fd)
        # These streams live as long as PID 1, so no context manager.
        if sys.stdout is None:
            sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                              closefd=False)
        if sys.stderr is None:
            sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                              closefd=False)
        # Our lines must not wait in a buffer while a child writes to the same console.
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(line_buffering=True)

    # -- files ------------------------------------------------------------------------
    @staticmethod
    def read_cmdline() -> bytes:
        test = posix.environ.get(CMDLINE_ENV.encode())
        if test is not None:
            return test
        return read_file("/proc/cmdline")

    @staticmethod
    def read_text(path: str) -> str | None:
        """A file's text, or None if it does not exist."""
        try:
            return fsdecode(read_file(path))
        except FileNotFoundError:
            return None

    @staticmethod
    def environ() -> dict[str, str]:
        """The environment the kernel gave init (HOME, TERM, unknown key=value words)."""
        return {fsdecode(k): fsdecode(v) for k, v in posix.environ.items()}

    @staticmethod
    def find_shell() -> tuple[str, ...] | None:
        """The argv prefix that runs the initrd's shell, or None without one."""
        for argv in SHELL_CANDIDATES:
            if posix.access(argv[0], posix.X_OK):
                return argv
        return None

    @staticmethod
    def make_dir(path: str) -> None:
        make_dirs(path)

    @staticmethod
    def symlink(path: str, target: str) -> None:
        if not lexists(path):
            posix.symlink(target, path)

    @staticmethod
    def link_all(paths: tuple[str, ...], target: str) -> None:
        """Symlink each path to ``target``, leaving existing paths alone; after trying
        them all, raise the first failure, its message saying how many failed."""
        failed: list[tuple[str, OSError]] = []
        for path in paths:
            try:
                posix.symlink(target, path)
            except FileExistsError:
                pass
            except OSError as exc:
                failed.append((path, exc))
        if failed:
            path, first = failed[0]
            raise OSError(first.errno, f"{first.strerror} ({len(failed)} of {len(paths)} "
                                       "paths failed)", path)

    @staticmethod
    def walk(root: bytes) -> Iterator[tuple[bytes, OSError | None]]:
        """Yield (path, None) for ``root`` and everything under it, depth first, sorted,
        not following symlinks; (path, OSError) for what could not be read."""
        stack = [root]
        yield root, None
        while stack:
            top = stack.pop()
            try:
                with posix.scandir(top) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                yield top, exc
                continue
            below = []
            for entry in entries:
                yield entry.path, None
                try:
                    if entry.is_dir(follow_symlinks=False):
                        below.append(entry.path)
                except OSError as exc:
                    yield entry.path, exc
            stack.extend(reversed(below))

    # -- mounts and modules -----------------------------------------------------------
    def mount(self, source: str, target: str, fstype: str | None, flags: int,
              data: str) -> None:
        ret = self._mount(fsencode(source), fsencode(target),
                          None if fstype is None else fstype.encode(), flags,
                          data.encode() if data else None)
        if ret != 0:
            _raise_errno(self._get_errno(), target)

    def umount(self, target: str, flags: int = 0) -> None:
        if self._umount2(fsencode(target), flags) != 0:
            _raise_errno(self._get_errno(), target)

    def load_module(self, path: str) -> None:
        """finit_module(2) a plain .ko; EEXIST (already loaded) counts as success."""
        number = _FINIT_MODULE.get(self._machine)
        if number is None:
            import errno

            raise OSError(errno.ENOSYS, f"finit_module: unknown machine {self._machine}", path)
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
        try:
            if self._syscall(number, fd, b"", 0) != 0:
                import errno

                err = self._get_errno()
                if err != errno.EEXIST:
                    raise OSError(err, posix.strerror(err), path)
        finally:
            posix.close(fd)

    # -- processes --------------------------------------------------------------------
    @staticmethod
    def catch_shutdown_signals() -> None:
        """Turn poweroff/halt/reboot requests (busybox sends USR2/USR1/TERM) into
        ShutdownRequested, raised wherever PID 1 happens to be waiting."""
        for signum in (_signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGTERM, _signal.SIGINT):
            _signal.signal(signum, _raise_shutdown)

    def spawn(self, argv: tuple[str, ...], env: dict[str, str]) -> int:
        """Start ``argv`` in a new session with the console as controlling terminal.

        Returns the pid once exec() has succeeded; raises OSError with exec's errno
        (sent back over a close-on-exec pipe) if it failed.
        """
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        ctty = _TIOCSCTTY.get(self._machine, _GENERIC_TIOCSCTTY)
        read_end, write_end = posix.pipe()  # both close-on-exec
        pid = posix.fork()
        if pid == 0:  # the child: nothing in here may return into the parent's code
            code = 127
            try:
                posix.close(read_end)
                posix.setsid()
                if posix.isatty(0):
                    self._ioctl(0, ctty, 1)  # steal the console if a session had it
                # Ignored signals survive exec; Python ignores these two for itself.
                for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):
                    _signal.signal(signum, _signal.SIG_DFL)
                execvpe(argv[0], list(argv), env)
            except OSError as exc:
                posix.write(write_end, str(exc.errno or _EIO).encode())
            except BaseException:
                posix.write(write_end, str(_EIO).encode())
            finally:
                posix._exit(code)
        posix.close(write_end)
        with open(read_end, "rb") as pipe:
            reply = pipe.read()
        if reply:
            posix.waitpid(pid, 0)
            err = int(reply)
            raise OSError(err, posix.strerror(err), argv[0])
        return pid

    def become_subreaper(self) -> None:
        """prctl(PR_SET_CHILD_SUBREAPER): orphans among this process's descendants are
        reparented to it instead of PID 1 (the agent reaps and reports them)."""
        if self._prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            _raise_errno(self._get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")

    @staticmethod
    def find_port(name: str, wait: float) -> str | None:
        """The device of the virtio-serial port called ``name``: the kernel names its
        ports after virtio_console has probed them, which may be after the module load
        returned, and devtmpfs makes the node after that, so look again for ``wait``
        seconds."""
        deadline = time.monotonic() + wait
        if is_console_channel(name):
            return _console_ready(name, deadline)
        device = find_port(name, timeout=wait)
        while device is not None and not lexists(device):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
        return device

    @staticmethod
    def start_agent(device: str, serve: Callable[[int], int]) -> int:
        """Fork a child that runs ``serve(fd)`` (the agent, guest/agent.py) on ``device``
        in a session of its own and exits with its value: PID 1 stays free to reap and
        to power off, and the agent's own failure is a status PID 1 reports instead of
        a dead init."""
        fd = posix.open(device, posix.O_RDWR | posix.O_NOCTTY | posix.O_CLOEXEC)
        if posix.isatty(fd):  # a console channel (contract.CHANNEL_CONSOLE)
            try:
                make_raw(fd)
                posix.write(fd, CONSOLE_READY)
            except BaseException:
                posix.close(fd)
                raise
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        pid = posix.fork()
        if pid == 0:  # the child: nothing in here may return into the parent's code
            code = 1
            try:
                posix.setsid()
                code = serve(fd)
            except BaseException as exc:  # reported, then the child ends
                try:  # contextlib costs an import
                    sys.stderr.write(f"initkit agent: {exc!r}\n")
                    sys.stderr.flush()
                except BaseException:
                    pass
            finally:
                posix._exit(code)
        posix.close(fd)
        return pid

    @staticmethod
    def wait_any() -> tuple[int, int]:
        """Block until some child ends: (pid, wait status). ChildProcessError if none."""
        return posix.waitpid(-1, 0)

    def end_all(self, grace: float) -> list[tuple[int, int]]:
        """SIGTERM every other process, reap, SIGKILL what is left after ``grace`` s.
        Returns what was reaped."""
        reaped: list[tuple[int, int]] = []
        for signum, limit in ((_signal.SIGTERM, grace), (_signal.SIGKILL, grace)):
            # contextlib.suppress would cost an import at every boot.
            try:  # noqa: SIM105
                posix.kill(-1, signum)
            except ProcessLookupError:
                pass
            deadline = self.now() + limit
            while True:
                try:
                    pid, status = posix.waitpid(-1, posix.WNOHANG)
                except ChildProcessError:
                    return reaped
                if pid:
                    reaped.append((pid, status))
                elif self.now() >= deadline:
                    break
                else:
                    time.sleep(0.005)
        return reaped

    # -- switching root and powering off ------------------------------------------------
    @staticmethod
    def exists(path: str) -> bool:
        return lexists(path)

    @staticmethod
    def remove_tree_on_root(keep: str) -> int:
        """Delete the initramfs's files (as switch_root does, to free its memory),
        staying on the root's device and sparing ``keep``. Returns how many failed."""
        failures = 0
        root_dev = posix.lstat("/").st_dev
        stack = [("/", False)]
        while stack:
            path, listed = stack.pop()
            if listed:
                try:
                    posix.rmdir(path)
                except OSError as exc:
                    import errno

                    # Still holding a mount point, which stays: expected, not a failure.
                    failures += exc.errno not in (errno.ENOTEMPTY, errno.EBUSY)
                continue
            if path != "/":
                stack.append((path, True))
            for name in posix.listdir(path):
                child = path.rstrip("/") + "/" + name
                try:
                    st = posix.lstat(child)
                    if st.st_dev != root_dev or child == keep:
                        continue
                    if st.st_mode & S_IFMT == S_IFDIR:
                        stack.append((child, False))
                    else:
                        posix.unlink(child)
                except OSError:
                    failures += 1
        return failures

    @staticmethod
    def chdir(path: str) -> None:
        posix.chdir(path)

    @staticmethod
    def chroot(path: str) -> None:
        posix.chroot(path)

    @staticmethod
    def execve(argv: tuple[str, ...], env: dict[str, str]) -> None:
        """Replace this process (PID 1 stays PID 1); returns only by raising OSError."""
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(signum, _signal.SIG_DFL)
        posix.execve(argv[0], list(argv), env)

    def drain(self, fd: int) -> int:
        """tcdrain(3) without termios: wait until the tty on ``fd`` has sent what was
        written to it. 0, or -1 (errno kept) where ``fd`` is no tty."""
        return int(self._ioctl(fd, _TCSBRK.get(self._machine, _GENERIC_TCSBRK), 1))

    def power_off(self) -> None:
        """Let the console send what was written to it, sync(2), then reboot(2)
        POWER_OFF; returns only if the kernel refused."""
        # A tty write returns once the bytes are in the serial driver's buffer; powering
        # off then can drop the last of them, the status record included (seen with
        # Debian 13's kernel on QEMU 10 now and then). Not a tty: nothing to wait for.
        self.drain(1)
        posix.sync()
        if self._reboot(RB_POWER_OFF) != 0:
            _raise_errno(self._get_errno(), "reboot")


def _raise_errno(err: int, what: str) -> None:
    raise OSError(err, posix.strerror(err), what)
