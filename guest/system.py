"""The only module that touches the OS: mounts, modules, processes, power, the console.

Everything goes through os and ctypes (libc's mount, umount2, syscall, ioctl, reboot).
Tests pass a recording fake with the same methods to guest.boot instead.
"""

from __future__ import annotations

import _signal  # the public signal module imports enum, which costs at every boot
import ctypes
import errno
import io
import os
import stat
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which is slow at boot
if TYPE_CHECKING:
    from collections.abc import Iterator

# reboot(2) commands (linux/reboot.h).
RB_POWER_OFF = 0x4321FEDC
# finit_module(2) has no glibc wrapper; its number differs per architecture.
_FINIT_MODULE = {
    "x86_64": 313, "aarch64": 273, "riscv64": 273, "loongarch64": 273,
    "i386": 350, "i686": 350, "armv7l": 379, "ppc64le": 353, "ppc64": 353, "s390x": 344,
}
_TIOCSCTTY = {"mips": 0x5480, "mips64": 0x5480}
_GENERIC_TIOCSCTTY = 0x540E
CMDLINE_ENV = "INITKIT_TEST_CMDLINE"  # test-only: the command line when /proc's is not ours
SHELL_CANDIDATES = (("/bin/sh",), ("/bin/busybox", "sh"))
_WRITE_CHUNK = 1 << 16


class ShutdownRequested(Exception):
    """A signal asked PID 1 to power off (busybox poweroff sends SIGUSR2)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"power-off requested by signal {signum}")
        self.signum = signum


def _raise_shutdown(signum: int, _frame: object) -> None:
    raise ShutdownRequested(signum)


class System:
    """The real operating system, as PID 1 sees it."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._mount = libc.mount
        self._mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_ulong, ctypes.c_char_p]
        self._umount2 = libc.umount2
        self._umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._syscall = libc.syscall
        self._syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_long]
        self._ioctl = libc.ioctl
        self._ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_long]
        self._reboot = libc.reboot
        self._reboot.argtypes = [ctypes.c_int]
        self._machine = os.uname().machine

    # -- time and output -------------------------------------------------------------
    @staticmethod
    def now() -> float:
        """Seconds since boot (CLOCK_BOOTTIME), the timeline the kernel log uses."""
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    @staticmethod
    def init_exec_time() -> float | None:
        """When the kernel exec'd init, in seconds since boot, from its "Run /init as init
        process" record in /dev/kmsg (PID 1's own start time is the kernel thread's)."""
        try:
            fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            while True:
                try:
                    record = os.read(fd, 8192)
                except BlockingIOError:
                    return None
                except BrokenPipeError:  # records overwritten while reading: go on
                    continue
                head, _, message = record.partition(b";")
                if message.startswith(b"Run ") and b" as init process" in message:
                    return int(head.split(b",")[2]) / 1e6
        except (OSError, IndexError, ValueError):
            return None
        finally:
            os.close(fd)

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
            written = os.write(1, view)
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
            console = os.stat(path)
        except OSError:
            console = None
        stale = []
        for fd in (0, 1, 2):
            try:
                st = os.fstat(fd)
            except OSError:
                stale.append(fd)
                continue
            if (console is not None and stat.S_ISCHR(st.st_mode)
                    and st.st_rdev == console.st_rdev
                    and (st.st_dev, st.st_ino) != (console.st_dev, console.st_ino)):
                stale.append(fd)
        if stale:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:
                    stream.flush()
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
            for target in stale:
                os.dup2(fd, target)
            if fd > 2:
                os.close(fd)
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
        test = os.environb.get(CMDLINE_ENV.encode())
        if test is not None:
            return test
        with open("/proc/cmdline", "rb") as f:
            return f.read()

    @staticmethod
    def read_text(path: str) -> str | None:
        """A file's text, or None if it does not exist."""
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except FileNotFoundError:
            return None

    @staticmethod
    def environ() -> dict[str, str]:
        """The environment the kernel gave init (HOME, TERM, unknown key=value words)."""
        return dict(os.environ)

    @staticmethod
    def find_shell() -> tuple[str, ...] | None:
        """The argv prefix that runs the initrd's shell, or None without one."""
        for argv in SHELL_CANDIDATES:
            if os.access(argv[0], os.X_OK):
                return argv
        return None

    @staticmethod
    def make_dir(path: str) -> None:
        os.makedirs(path, mode=0o755, exist_ok=True)

    @staticmethod
    def symlink(path: str, target: str) -> None:
        if not os.path.lexists(path):
            os.symlink(target, path)

    @staticmethod
    def walk(root: bytes) -> Iterator[tuple[bytes, OSError | None]]:
        """Yield (path, None) for ``root`` and everything under it, depth first, sorted,
        not following symlinks; (path, OSError) for what could not be read."""
        stack = [root]
        yield root, None
        while stack:
            top = stack.pop()
            try:
                with os.scandir(top) as it:
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
        ret = self._mount(os.fsencode(source), os.fsencode(target),
                          None if fstype is None else fstype.encode(), flags,
                          data.encode() if data else None)
        if ret != 0:
            _raise_errno(target)

    def umount(self, target: str, flags: int = 0) -> None:
        if self._umount2(os.fsencode(target), flags) != 0:
            _raise_errno(target)

    def load_module(self, path: str) -> None:
        """finit_module(2) a plain .ko; EEXIST (already loaded) counts as success."""
        number = _FINIT_MODULE.get(self._machine)
        if number is None:
            raise OSError(errno.ENOSYS, f"finit_module: unknown machine {self._machine}", path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if self._syscall(number, fd, b"", 0) != 0:
                err = ctypes.get_errno()
                if err != errno.EEXIST:
                    raise OSError(err, os.strerror(err), path)
        finally:
            os.close(fd)

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
        read_end, write_end = os.pipe()  # both close-on-exec
        pid = os.fork()
        if pid == 0:  # the child: nothing in here may return into the parent's code
            code = 127
            try:
                os.close(read_end)
                os.setsid()
                if os.isatty(0):
                    self._ioctl(0, ctty, 1)  # steal the console if a session had it
                # Ignored signals survive exec; Python ignores these two for itself.
                for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):
                    _signal.signal(signum, _signal.SIG_DFL)
                os.execvpe(argv[0], list(argv), env)
            except OSError as exc:
                os.write(write_end, str(exc.errno or errno.EIO).encode())
            except BaseException:
                os.write(write_end, str(errno.EIO).encode())
            finally:
                os._exit(code)
        os.close(write_end)
        with open(read_end, "rb") as pipe:
            reply = pipe.read()
        if reply:
            os.waitpid(pid, 0)
            err = int(reply)
            raise OSError(err, os.strerror(err), argv[0])
        return pid

    @staticmethod
    def wait_any() -> tuple[int, int]:
        """Block until some child ends: (pid, wait status). ChildProcessError if none."""
        return os.waitpid(-1, 0)

    def end_all(self, grace: float) -> list[tuple[int, int]]:
        """SIGTERM every other process, reap, SIGKILL what is left after ``grace`` s.
        Returns what was reaped."""
        reaped: list[tuple[int, int]] = []
        for signum, limit in ((_signal.SIGTERM, grace), (_signal.SIGKILL, grace)):
            # contextlib.suppress would cost an import at every boot.
            try:  # noqa: SIM105
                os.kill(-1, signum)
            except ProcessLookupError:
                pass
            deadline = self.now() + limit
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
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
        return os.path.lexists(path)

    @staticmethod
    def remove_tree_on_root(keep: str) -> int:
        """Delete the initramfs's files (as switch_root does, to free its memory),
        staying on the root's device and sparing ``keep``. Returns how many failed."""
        failures = 0
        root_dev = os.lstat("/").st_dev
        stack = [("/", False)]
        while stack:
            path, listed = stack.pop()
            if listed:
                try:
                    os.rmdir(path)
                except OSError as exc:
                    # Still holding a mount point, which stays: expected, not a failure.
                    failures += exc.errno not in (errno.ENOTEMPTY, errno.EBUSY)
                continue
            if path != "/":
                stack.append((path, True))
            for name in os.listdir(path):
                child = os.path.join(path, name)
                try:
                    st = os.lstat(child)
                    if st.st_dev != root_dev or child == keep:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append((child, False))
                    else:
                        os.unlink(child)
                except OSError:
                    failures += 1
        return failures

    @staticmethod
    def chdir(path: str) -> None:
        os.chdir(path)

    @staticmethod
    def chroot(path: str) -> None:
        os.chroot(path)

    @staticmethod
    def execve(argv: tuple[str, ...], env: dict[str, str]) -> None:
        """Replace this process (PID 1 stays PID 1); returns only by raising OSError."""
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(signum, _signal.SIG_DFL)
        os.execve(argv[0], list(argv), env)

    def power_off(self) -> None:
        """sync(2), then reboot(2) POWER_OFF; returns only if the kernel refused."""
        os.sync()
        if self._reboot(RB_POWER_OFF) != 0:
            _raise_errno("reboot")



def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), what)
