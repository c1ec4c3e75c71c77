"""The only module that touches the OS: mounts, modules, processes, power, the console.

Everything goes through posix and libc (mount, umount2, syscall, ioctl, reboot), called
through _ctypes, the C half of ctypes (see _libc_functions). posix is what os wraps:
importing os (with posixpath, _collections_abc, stat) costs ~14 ms of every boot under
TCG, and PID 1 needs none of its Python layer but the few helpers at the end of this file.
Tests pass a recording fake with the same methods to guest.boot instead.
"""

from __future__ import annotations

import _signal  # the public signal module imports enum, which costs at every boot
import errno
import io
import posix  # not os: see the module docstring
import sys
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which is slow at boot
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

# reboot(2) commands (linux/reboot.h).
RB_POWER_OFF = 0x4321FEDC
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
        libc = _libc_functions()
        self._mount = libc["mount"]
        self._umount2 = libc["umount2"]
        self._syscall = libc["syscall"]
        self._ioctl = libc["ioctl"]
        self._reboot = libc["reboot"]
        self._get_errno = libc["get_errno"]
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
            if (console is not None and st.st_mode & _S_IFMT == _S_IFCHR
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
        return _read_file("/proc/cmdline")

    @staticmethod
    def read_text(path: str) -> str | None:
        """A file's text, or None if it does not exist."""
        try:
            return _fsdecode(_read_file(path))
        except FileNotFoundError:
            return None

    @staticmethod
    def environ() -> dict[str, str]:
        """The environment the kernel gave init (HOME, TERM, unknown key=value words)."""
        return {_fsdecode(k): _fsdecode(v) for k, v in posix.environ.items()}

    @staticmethod
    def find_shell() -> tuple[str, ...] | None:
        """The argv prefix that runs the initrd's shell, or None without one."""
        for argv in SHELL_CANDIDATES:
            if posix.access(argv[0], posix.X_OK):
                return argv
        return None

    @staticmethod
    def make_dir(path: str) -> None:
        _make_dirs(path)

    @staticmethod
    def symlink(path: str, target: str) -> None:
        if not _lexists(path):
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
        ret = self._mount(_fsencode(source), _fsencode(target),
                          None if fstype is None else fstype.encode(), flags,
                          data.encode() if data else None)
        if ret != 0:
            _raise_errno(self._get_errno(), target)

    def umount(self, target: str, flags: int = 0) -> None:
        if self._umount2(_fsencode(target), flags) != 0:
            _raise_errno(self._get_errno(), target)

    def load_module(self, path: str) -> None:
        """finit_module(2) a plain .ko; EEXIST (already loaded) counts as success."""
        number = _FINIT_MODULE.get(self._machine)
        if number is None:
            raise OSError(errno.ENOSYS, f"finit_module: unknown machine {self._machine}", path)
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
        try:
            if self._syscall(number, fd, b"", 0) != 0:
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
                _execvpe(argv[0], list(argv), env)
            except OSError as exc:
                posix.write(write_end, str(exc.errno or errno.EIO).encode())
            except BaseException:
                posix.write(write_end, str(errno.EIO).encode())
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
        return _lexists(path)

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
                    if st.st_mode & _S_IFMT == _S_IFDIR:
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


# libc's functions and their C signatures: "i" int, "l" long, "L" unsigned long,
# "z" char * (bytes or None).
LIBC_SIGNATURES = {
    "mount": ("z", "z", "z", "L", "z"),
    "umount2": ("z", "i"),
    "syscall": ("l", "l", "z", "l"),  # finit_module(fd, params, flags)
    "ioctl": ("i", "L", "l"),
    "reboot": ("i",),
}


def _libc_functions(lean: bool = True) -> dict[str, Any]:
    """The functions of LIBC_SIGNATURES (each returns int and keeps errno for
    "get_errno"), bound through _ctypes, the C half of ctypes.

    Importing the ctypes package costs ~25 ms of every boot under TCG (its Python
    layer, struct, types) for five functions; _ctypes gives them directly. Its
    interface (CFuncPtr, _SimpleCData, dlopen) is CPython's own rather than a
    documented one, so any surprise there falls back to the ctypes package.
    """
    if lean:
        try:
            return _bind_with_ctypes_core()
        except (ImportError, AttributeError, TypeError):
            pass
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    types = {"i": ctypes.c_int, "l": ctypes.c_long, "L": ctypes.c_ulong,
             "z": ctypes.c_char_p}
    functions: dict[str, Any] = {"get_errno": ctypes.get_errno}
    for name, signature in LIBC_SIGNATURES.items():
        function = getattr(libc, name)
        function.argtypes = [types[code] for code in signature]
        function.restype = ctypes.c_int
        functions[name] = function
    return functions


def _bind_with_ctypes_core() -> dict[str, Any]:
    import _ctypes

    # ctypes.c_int and friends are these same one-line classes.
    types = {code: type(f"c_{code}", (_ctypes._SimpleCData,), {"_type_": code})
             for code in "ilLz"}

    class Function(_ctypes.CFuncPtr):  # what ctypes.CDLL(None, use_errno=True) makes
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = types["i"]

    class Library:  # CFuncPtr((name, library)) looks the name up in library._handle
        _handle = _ctypes.dlopen(None, 0)

    functions: dict[str, Any] = {"get_errno": _ctypes.get_errno}
    for name, signature in LIBC_SIGNATURES.items():
        function = Function((name, Library))
        function.argtypes = [types[code] for code in signature]
        functions[name] = function
    return functions


# -- what os (and stat) add to posix, for the guest's few uses -------------------------
_S_IFMT, _S_IFDIR, _S_IFCHR = 0o170000, 0o040000, 0o020000  # st_mode's file type (stat.h)


def _read_file(path: str) -> bytes:
    """The whole file, read with the bare system calls (no io objects)."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks = []
        while chunk := posix.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        posix.close(fd)


# The guest's Python runs in UTF-8 mode (the kernel gives init no locale), so file names
# and the environment are UTF-8, undecodable bytes kept as surrogates (os.fsencode).
def _fsencode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _fsdecode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def _lexists(path: str) -> bool:
    try:
        posix.lstat(path)
    except OSError:
        return False
    return True


def _make_dirs(path: str, mode: int = 0o755) -> None:
    """mkdir -p (os.makedirs with exist_ok=True)."""
    parts = [part for part in path.split("/") if part]
    current = ""
    for part in parts:
        current += "/" + part
        try:
            posix.mkdir(current, mode)
        except FileExistsError:
            if posix.stat(current).st_mode & _S_IFMT != _S_IFDIR:
                raise
        except OSError:
            if not _lexists(current):  # e.g. a read-only parent; EEXIST wins as in os
                raise


def _execvpe(file: str, args: list[str], env: dict[str, str]) -> None:
    """os.execvpe: exec ``file``, searched on env's PATH unless it has a slash; raises
    the most telling error (anything but ENOENT/ENOTDIR beats them, as in os)."""
    if "/" in file:
        posix.execve(file, args, env)
    error: OSError | None = None
    for directory in env.get("PATH", "/bin:/usr/bin").split(":"):
        try:
            posix.execve(f"{directory or '.'}/{file}", args, env)
        except (FileNotFoundError, NotADirectoryError) as exc:
            error = error or exc
        except OSError as exc:
            error = exc if error is None or isinstance(
                error, FileNotFoundError | NotADirectoryError) else error
    raise error or FileNotFoundError(errno.ENOENT, posix.strerror(errno.ENOENT), file)
