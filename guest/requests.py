"""The agent's requests: one stream's state, how each kind starts, and its last frame.

A request owns file descriptors: ``sources`` the agent reads and sends to the host (a
command's stdout and stderr, a file, a worker's tar stream), and a ``sink`` it writes
the host's data to (a command's stdin, a file, a worker's stdin). Starting one opens
them; guest/agent.py moves the bytes and ends it with ``last_frame``.
"""

from __future__ import annotations

import _signal
import posix
import time

from guest import wire
from guest.spawn import describe, environment, spawn
from guest.transfer import make_dirs, receive_tree, send_tree, start_worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COLLECT = 0  # a source whose bytes become the error message, not frames
ERROR_TEXT = 1 << 12  # bytes of a worker's stderr kept for the error message
TEMP_SUFFIX = b".initkit-part"
_MODE_BITS = 0o7777
_S_IFMT, _S_IFREG, _S_IFDIR = 0o170000, 0o100000, 0o040000
_WORKER_SIGNALS = (_signal.SIGCHLD, _signal.SIGPIPE, _signal.SIGXFSZ)


class Refused(Exception):
    """The request cannot start; the message is the host's error."""


class Request:
    """One stream: a command, or a file or directory going in or out."""

    __slots__ = ("allowance", "background", "background_killed", "credit", "deadline",
                 "drained", "draining", "errors", "keep_background", "mode", "path",
                 "pid", "received", "sent", "sink", "sink_buffer", "sink_eof", "sources",
                 "started", "status", "stream", "temp", "timed_out", "ungranted", "what")

    def __init__(self, stream: int, what: str, credit: int = 0) -> None:
        self.stream = stream
        self.what = what  # exec, put-file, put-tree, get-file, get-tree
        self.pid = 0
        self.status: int | None = None  # the wait status of its process, once it ended
        self.sources: dict[int, int] = {}  # fd -> frame kind to send its bytes as
        self.sink = -1  # where the host's data goes (a pipe or a file), -1 when closed
        self.sink_buffer = bytearray()
        self.sink_eof = False  # the host has sent all its data
        self.allowance = 0  # data bytes the host may still send
        self.ungranted = 0  # data bytes consumed and not yet granted back
        self.credit = credit  # data bytes the agent may still send
        self.started = time.monotonic()
        self.deadline: float | None = None
        self.timed_out = False
        self.keep_background = False
        self.background: list[int] = []
        self.background_killed = False
        self.draining = False
        self.drained = 0
        self.errors = bytearray()
        self.sent = 0
        self.received = 0
        self.path = b""
        self.temp = b""
        self.mode = 0

    def close(self) -> None:
        """Close every descriptor and remove an unfinished file."""
        close_all([*self.sources, self.sink])
        self.sources = {}
        self.sink = -1
        if self.temp:
            try:  # noqa: SIM105 - contextlib costs an import
                posix.unlink(self.temp)
            except OSError:
                pass
            self.temp = b""


# -- starting -----------------------------------------------------------------------------
def start_exec(stream: int, fields: dict[str, Any], window: int, credit: int) -> Request:
    """Spawn a command with pipes for its output (and stdin unless /dev/null).
    Refused for a malformed request; SpawnError (guest/spawn.py) if it cannot run."""
    argv = fields["argv"]
    if not argv or any(b"\0" in arg for arg in argv):
        raise Refused("argv must be non-empty, without NUL bytes in arguments")
    try:
        env = environment(fields["env"], fields["replace_env"])
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if b"\0" in fields["cwd"]:
        raise Refused("cwd has a NUL byte")
    mode = fields["stdin"]
    if mode not in (wire.STDIN_NONE, wire.STDIN_BYTES, wire.STDIN_STREAM):
        raise Refused(f"stdin mode {mode} is not none (0), bytes (1) or stream (2)")
    request = Request(stream, "exec", credit)
    opened: list[int] = []
    try:
        if mode == wire.STDIN_NONE:
            stdin = _open_null(posix.O_RDONLY, opened)
        else:
            stdin, request.sink = _pipe(opened)
        out_read, out_write = _pipe(opened)
        err_read, err_write = _pipe(opened)
        request.pid = spawn(argv, env, fields["cwd"], (stdin, out_write, err_write))
    except OSError as exc:
        close_all(opened)
        raise Refused(f"cannot make the command's pipes: {describe(exc)}") from None
    except ValueError as exc:  # posix_spawn's own checks
        close_all(opened)
        raise Refused(str(exc)) from None
    except BaseException:  # SpawnError: the agent answers with its exit status
        close_all(opened)
        raise
    close_all([stdin, out_write, err_write])
    _nonblocking(out_read, err_read, request.sink)
    request.sources = {out_read: wire.STDOUT, err_read: wire.STDERR}
    if mode == wire.STDIN_BYTES:
        request.sink_buffer += fields["input"]
        request.sink_eof = True
    elif mode == wire.STDIN_STREAM:
        request.allowance = window
    if fields["timeout_ms"]:
        request.deadline = request.started + fields["timeout_ms"] / 1000
    request.keep_background = fields["keep_background"]
    return request


def start_put(stream: int, fields: dict[str, Any], window: int) -> Request:
    """A file written under a temporary name (renamed at the end), or a worker
    unpacking a tar stream; parent directories are made."""
    what = fields["what"]
    if what not in (wire.FILE, wire.TREE):
        raise Refused(f"put of kind {what}: not file (0) or directory (1)")
    request = Request(stream, "put-file" if what == wire.FILE else "put-tree")
    request.path = _checked_path(fields["path"])
    request.mode = fields["mode"] & _MODE_BITS
    request.allowance = window
    try:
        if what == wire.FILE:
            parent = request.path.rpartition(b"/")[0]
            if parent:
                make_dirs(parent)
            request.temp = request.path + TEMP_SUFFIX + str(stream).encode()
            request.sink = posix.open(request.temp, posix.O_WRONLY | posix.O_CREAT
                                      | posix.O_TRUNC | posix.O_CLOEXEC, 0o600)
        else:
            _start_worker(request, receive_tree, inbound=True)
    except OSError as exc:
        request.close()
        raise Refused(f"cannot write {show(request.path)}: {describe(exc)}") from None
    return request


def start_get(stream: int, fields: dict[str, Any], credit: int) -> Request:
    """A regular file read as the credit allows, or a worker writing a tar stream."""
    what = fields["what"]
    if what not in (wire.FILE, wire.TREE):
        raise Refused(f"get of kind {what}: not file (0) or directory (1)")
    request = Request(stream, "get-file" if what == wire.FILE else "get-tree", credit)
    request.path = _checked_path(fields["path"])
    try:
        if what == wire.FILE:
            fd = posix.open(request.path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK)
            request.sources = {fd: wire.DATA}
            st = posix.fstat(fd)
            if st.st_mode & _S_IFMT != _S_IFREG:
                request.close()
                kind = "a directory" if st.st_mode & _S_IFMT == _S_IFDIR else \
                    "not a regular file"
                raise Refused(f"{show(request.path)} is {kind}")
            request.mode = st.st_mode & _MODE_BITS
        else:
            _start_worker(request, send_tree, inbound=False)
    except OSError as exc:
        request.close()
        raise Refused(f"cannot read {show(request.path)}: {describe(exc)}") from None
    return request


def _start_worker(request: Request, work: Callable[[bytes], None], *,
                  inbound: bool) -> None:
    """Fork a transfer worker: the host's data into its stdin, or its stdout to the
    host; its stderr becomes the error message."""
    opened: list[int] = []
    try:
        if inbound:
            stdin, request.sink = _pipe(opened)
            stdout = _open_null(posix.O_WRONLY, opened)
            kept = request.sink
        else:
            stdin = _open_null(posix.O_RDONLY, opened)
            kept, stdout = _pipe(opened)
        errors, error_write = _pipe(opened)
        request.pid = start_worker(work, request.path, (stdin, stdout, error_write),
                                   _WORKER_SIGNALS)
    except OSError:
        close_all(opened)
        request.sink = -1
        raise
    close_all([fd for fd in opened if fd not in (kept, errors)])
    _nonblocking(kept, errors)
    request.sources = {errors: COLLECT}
    if not inbound:
        request.sources[kept] = wire.DATA


# -- ending -------------------------------------------------------------------------------
def last_frame(request: Request) -> bytes | None:
    """The frame that ends ``request`` once its work is over (EXIT, END or ERROR), or
    None while it is not: sources still open, its process still running."""
    if request.sources:
        return None
    stream = request.stream
    if request.what == "exec":
        if request.status is None:
            return None
        status = request.status
        signum = posix.WTERMSIG(status) if posix.WIFSIGNALED(status) else 0
        return wire.message(
            wire.EXIT, stream, code=128 + signum if signum else posix.WEXITSTATUS(status),
            signal=signum, timed_out=request.timed_out, background=request.background,
            background_killed=request.background_killed,
            elapsed_us=int((time.monotonic() - request.started) * 1e6))
    if request.what == "get-file":
        return wire.message(wire.END, stream, size=request.sent, mode=request.mode)
    if request.status is None or request.sink >= 0:  # a tree: its worker is not done
        return None
    if request.status == 0:
        size = request.sent if request.what == "get-tree" else request.received
        return wire.message(wire.END, stream, size=size)
    text = request.errors.decode("utf-8", "replace").strip() or \
        f"the worker ended with status {request.status}"
    verb = "read" if request.what == "get-tree" else "write"
    return error_frame(stream, f"cannot {verb} {show(request.path)}: {text}")


def error_frame(stream: int, message: str) -> bytes:
    return wire.message(wire.ERROR, stream, message=message[:4000])


# -- helpers ------------------------------------------------------------------------------
def _checked_path(path: bytes) -> bytes:
    if not path or b"\0" in path:
        raise Refused("the path must be non-empty, without NUL bytes")
    return path


def _pipe(opened: list[int]) -> tuple[int, int]:
    read_end, write_end = posix.pipe()  # both close-on-exec
    opened += (read_end, write_end)
    return read_end, write_end


def _open_null(flags: int, opened: list[int]) -> int:
    fd = posix.open(b"/dev/null", flags | posix.O_CLOEXEC)
    opened.append(fd)
    return fd


def _nonblocking(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            posix.set_blocking(fd, False)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            try:  # noqa: SIM105
                posix.close(fd)
            except OSError:
                pass


def show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))
