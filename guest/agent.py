"""The guest agent: serves the host's requests over the control channel (docs/guest.md).

One process, one thread, one poll loop over the channel, every request's pipes and
files, and a pipe that SIGCHLD writes to (``set_wakeup_fd``), so that several commands
run at once and none waits for another. Flow control bounds every buffer: output is
read from a command's pipe only while the host has granted credit for it, so a slow
consumer stalls its own command (the pipe fills, the command blocks) and nothing else.

The init runs it in a forked child (docs/guest.md says why), which makes itself a
child subreaper so that what commands leave behind is reparented to it. A bad request
is answered with an error; only a broken channel or protocol ends ``serve()``.
"""

from __future__ import annotations

import _signal
import posix
import select
import time

from guest import wire
from guest.spawn import (
    SpawnError,
    describe,
    environment,
    group_alive,
    kill_all,
    session_members,
    spawn,
)
from guest.transfer import make_dirs, receive_tree, send_tree, start_worker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Why serve() returned.
SHUTDOWN = "shutdown"
DISCONNECTED = "disconnected"

READ_SIZE = 1 << 18
# Output still read after a command's own process ended: what it left in its pipes
# (at most a pipe's capacity) and whatever background processes add meanwhile.
DRAIN_LIMIT = 1 << 20
MAX_REQUESTS = 256
ERROR_TEXT = 1 << 12  # bytes of a worker's stderr kept for the error message
FLUSH_SECONDS = 2.0  # how long the last frames may take to leave at the end
TEMP_SUFFIX = b".initkit-part"

_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_POLLHUP, _POLLERR, _POLLNVAL = select.POLLHUP, select.POLLERR, select.POLLNVAL
_COLLECT = 0  # a source whose bytes become the error message, not frames
_MODE_BITS = 0o7777


class Request:
    """One stream: a command, or a file or directory going in or out."""

    __slots__ = ("allowance", "background", "background_killed", "credit", "deadline",
                 "drained", "draining", "errors", "keep_background", "mode", "path",
                 "pid", "received", "sent", "sink", "sink_buffer", "sink_eof", "sources",
                 "started", "status", "stream", "temp", "timed_out", "ungranted", "what")

    def __init__(self, stream: int, what: str, credit: int) -> None:
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
        self.credit = credit  # data bytes this side may still send
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


class Agent:
    """Serves one connection on ``fd`` (a virtio-serial port, or a socket in tests)."""

    def __init__(self, fd: int, *, window: int = wire.DEFAULT_WINDOW,
                 max_frame: int = wire.DEFAULT_MAX_FRAME) -> None:
        self.fd = fd
        self.window = window
        self.max_frame = max_frame
        self.reader = wire.FrameReader(wire.HELLO_MAX_FRAME)
        self.out = bytearray()
        self.peer: wire.Peer | None = None
        self.requests: dict[int, Request] = {}
        self.children: dict[int, Request] = {}  # pid -> the request it serves
        self.ending: str | None = None
        self._poller = select.poll()
        self._watched: dict[int, int] = {}
        self._wake = -1
        self._limit = wire.CHUNK

    # -- the loop ---------------------------------------------------------------------
    def serve(self) -> str:
        """Serve until the host asks to shut down (SHUTDOWN), goes away (DISCONNECTED)
        or breaks the protocol ("protocol error: ..."); every request is ended then."""
        posix.chdir("/")  # relative paths in requests are from the root; see spawn()
        posix.set_blocking(self.fd, False)
        wake_read, wake_write = posix.pipe()
        posix.set_blocking(wake_read, False)
        posix.set_blocking(wake_write, False)
        self._wake = wake_read
        previous = _signal.signal(_signal.SIGCHLD, _ignore)
        old_wakeup = _signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        try:
            while self.ending is None:
                self._step()
            self._flush()
        finally:
            self._end_all()
            _signal.set_wakeup_fd(old_wakeup)
            _signal.signal(_signal.SIGCHLD, previous)
            posix.close(wake_read)
            posix.close(wake_write)
        return self.ending

    def _step(self) -> None:
        wanted = {self.fd: _POLLIN | (_POLLOUT if self.out else 0), self._wake: _POLLIN}
        for request in self.requests.values():
            for fd in request.sources:
                if not request.draining and (request.credit > 0
                                             or request.sources[fd] == _COLLECT):
                    wanted[fd] = _POLLIN
            if request.sink >= 0 and request.sink_buffer:
                wanted[request.sink] = _POLLOUT
        self._watch(wanted)
        try:
            events = self._poller.poll(self._timeout())
        except InterruptedError:
            events = []
        for fd, event in events:
            if fd == self.fd:
                if event & _POLLOUT:
                    self._write_out()
                if event & (_POLLIN | _POLLHUP | _POLLERR | _POLLNVAL):
                    self._read_channel()
            elif fd == self._wake:
                self._reap()
            else:
                self._pipe_event(fd, event)
            if self.ending is not None:
                return
        self._check_deadlines()
        if self.out:
            self._write_out()

    def _watch(self, wanted: dict[int, int]) -> None:
        for fd in [fd for fd in self._watched if fd not in wanted]:
            self._poller.unregister(fd)
            del self._watched[fd]
        for fd, mask in wanted.items():
            if self._watched.get(fd) != mask:
                self._poller.register(fd, mask)
                self._watched[fd] = mask

    def _timeout(self) -> int:
        deadlines = [r.deadline for r in self.requests.values()
                     if r.deadline is not None and not r.timed_out]
        if not deadlines:
            return -1
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    # -- the channel ------------------------------------------------------------------
    def _read_channel(self) -> None:
        try:
            data = posix.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.ending = DISCONNECTED
            return
        self.reader.feed(data)
        try:
            while self.ending is None:
                got = self.reader.next()
                if got is None:
                    break
                try:
                    self._frame(*got)
                except wire.ProtocolError:
                    raise
                except Exception as exc:  # a bug met by one request: the others go on
                    self._internal_error(got[1], exc)
        except wire.ProtocolError as exc:
            self._protocol_error(str(exc))

    def _internal_error(self, stream: int, exc: Exception) -> None:
        import sys

        sys.stderr.write(f"initkit agent: a request on stream {stream} failed:\n")
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
        request = self.requests.get(stream) or Request(stream, "failed", 0)
        if request.pid and request.status is None:
            kill_all(request.pid, [], _signal.SIGKILL)
        self._fail(request, f"the agent failed: {type(exc).__name__}: {exc}")

    def _send(self, data: bytes) -> None:
        self.out += data

    def _write_out(self) -> None:
        try:
            written = posix.write(self.fd, self.out)
        except BlockingIOError:
            return
        except OSError:
            self.ending = self.ending or DISCONNECTED
            self.out.clear()
            return
        del self.out[:written]

    def _flush(self) -> None:
        """Let the last frames leave, for FLUSH_SECONDS at most."""
        if self.ending == DISCONNECTED:
            return
        deadline = time.monotonic() + FLUSH_SECONDS
        poller = select.poll()
        poller.register(self.fd, _POLLOUT)
        while self.out:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(int(left * 1000) + 1):
                return
            try:
                written = posix.write(self.fd, self.out)
            except BlockingIOError:
                continue
            except OSError:
                return
            del self.out[:written]

    def _protocol_error(self, text: str) -> None:
        self._send(wire.message(wire.ERROR, wire.SESSION,
                                message=f"protocol error: {text}"))
        self.ending = f"protocol error: {text}"

    # -- frames from the host ---------------------------------------------------------
    def _frame(self, kind: int, stream: int, payload: bytes) -> None:
        if self.peer is None:
            self.peer = wire.accept_hello(kind, stream, payload)
            self.reader.max_frame = self.max_frame
            self._limit = wire.data_limit(self.peer)
            self._send(wire.hello(self.max_frame, self.window, _software()))
            return
        if kind in wire.DATA_KINDS:
            self._data(kind, stream, payload)
        elif kind == wire.PING:
            self._send(wire.frame(wire.PING, stream, payload))
        elif kind in (wire.EXEC, wire.PUT, wire.GET):
            if stream == wire.SESSION or stream in self.requests:
                raise wire.ProtocolError(f"{wire.NAMES[kind]} on stream {stream}, "
                                         "which is the session's or already in use")
            if len(self.requests) >= MAX_REQUESTS:
                self._fail(Request(stream, "refused", 0),
                           f"more than {MAX_REQUESTS} requests at once")
                return
            fields = wire.decode(kind, payload)
            if kind == wire.EXEC:
                self._exec(stream, fields)
            elif kind == wire.PUT:
                self._put(stream, fields)
            else:
                self._get(stream, fields)
        elif kind == wire.SHUTDOWN:
            self._send(wire.message(wire.SHUTDOWN, stream))
            self.ending = SHUTDOWN
        elif kind in (wire.STDIN_EOF, wire.END, wire.KILL, wire.WINDOW, wire.ERROR):
            self._control(kind, stream, wire.decode(kind, payload))
        else:
            raise wire.ProtocolError(f"frame kind {kind} is not one the host sends")

    def _data(self, kind: int, stream: int, payload: bytes) -> None:
        request = self.requests.get(stream)
        if request is None:
            return  # the request ended (a command that exited): data in flight, dropped
        expected = wire.STDIN if request.what == "exec" else wire.DATA
        if kind != expected or request.sink_eof:
            raise wire.ProtocolError(f"{wire.NAMES[kind]} on stream {stream} "
                                     f"({request.what})")
        if len(payload) > request.allowance:
            raise wire.ProtocolError(f"{len(payload)} bytes on stream {stream}, over the "
                                     f"{request.allowance} its window allows")
        request.allowance -= len(payload)
        request.received += len(payload)
        if request.sink < 0:  # nobody reads them any more: consumed at once
            self._grant(request, len(payload))
            return
        request.sink_buffer += payload
        if request.what == "put-file":
            self._write_sink(request)

    def _control(self, kind: int, stream: int, fields: dict[str, Any]) -> None:
        if stream == wire.SESSION:
            if kind == wire.ERROR:
                self.ending = f"the host reported: {fields['message']}"
                return
            raise wire.ProtocolError(f"{wire.NAMES[kind]} on the session's stream")
        request = self.requests.get(stream)
        if request is None:
            return  # it ended while this was on its way
        if kind == wire.WINDOW:
            request.credit += fields["increment"]
            if request.draining:
                self._drain(request)
            elif request.what == "get-file":
                self._pump_file(request)
        elif kind in (wire.STDIN_EOF, wire.END):
            if (kind == wire.STDIN_EOF and request.what != "exec") or (
                    kind == wire.END and not request.what.startswith("put")):
                raise wire.ProtocolError(f"{wire.NAMES[kind]} on stream {stream} "
                                         f"({request.what})")
            request.sink_eof = True
            self._write_sink(request)
        elif kind == wire.KILL:
            self._kill(request, fields["signal"])
        else:  # the host gave up on a transfer
            self._cancel(request, f"cancelled by the host: {fields['message']}")

    # -- exec -------------------------------------------------------------------------
    def _exec(self, stream: int, fields: dict[str, Any]) -> None:
        assert self.peer is not None
        request = Request(stream, "exec", self.peer.window)
        argv = fields["argv"]
        if not argv or any(b"\0" in arg for arg in argv):
            self._fail(request, "argv must be non-empty, without NUL bytes in arguments")
            return
        try:
            env = environment(fields["env"], fields["replace_env"])
        except ValueError as exc:
            self._fail(request, str(exc))
            return
        if b"\0" in fields["cwd"]:
            self._fail(request, "cwd has a NUL byte")
            return
        mode = fields["stdin"]
        if mode not in (wire.STDIN_NONE, wire.STDIN_BYTES, wire.STDIN_STREAM):
            self._fail(request, f"stdin mode {mode} is not none (0), bytes (1) or "
                                "stream (2)")
            return
        opened: list[int] = []
        try:
            if mode == wire.STDIN_NONE:
                stdin = posix.open(b"/dev/null", posix.O_RDONLY | posix.O_CLOEXEC)
                opened.append(stdin)
            else:
                stdin, request.sink = posix.pipe()
                opened += [stdin, request.sink]
            out_read, out_write = posix.pipe()
            opened += [out_read, out_write]
            err_read, err_write = posix.pipe()
            opened += [err_read, err_write]
        except OSError as exc:
            _close_all(opened)
            self._fail(request, f"cannot make the command's pipes: {describe(exc)}")
            return
        try:
            request.pid = spawn(argv, env, fields["cwd"], (stdin, out_write, err_write))
        except SpawnError as exc:
            _close_all(opened)
            self._send(wire.message(wire.EXIT, stream, code=exc.code, error=str(exc)))
            return
        except ValueError as exc:  # posix_spawn's own checks
            _close_all(opened)
            self._fail(request, str(exc))
            return
        _close_all([stdin, out_write, err_write])
        for fd in (out_read, err_read, request.sink):
            if fd >= 0:
                posix.set_blocking(fd, False)
        request.sources = {out_read: wire.STDOUT, err_read: wire.STDERR}
        if mode == wire.STDIN_BYTES:
            request.sink_buffer += fields["input"]
            request.sink_eof = True
        elif mode == wire.STDIN_STREAM:
            request.allowance = self.window
        if fields["timeout_ms"]:
            request.deadline = request.started + fields["timeout_ms"] / 1000
        request.keep_background = fields["keep_background"]
        self.requests[stream] = request
        self.children[request.pid] = request
        self._write_sink(request)

    def _kill(self, request: Request, signum: int) -> None:
        if not 0 < signum < 65:
            return  # the client checks; a request to the whole session is not a kill
        if request.what == "exec":
            if request.status is None:
                kill_all(request.pid, [], signum)
        else:
            self._cancel(request, "cancelled by the host")

    def _exited(self, request: Request) -> None:
        """The command's own process ended: deal with what it left, then drain."""
        if group_alive(request.pid):
            request.background = session_members(request.pid)
            if not request.keep_background:
                kill_all(request.pid, request.background, _signal.SIGKILL)
                request.background_killed = True
        self._close_sink(request)
        request.draining = True
        self._drain(request)

    def _drain(self, request: Request) -> None:
        """Read what is in the pipes now, without waiting: the command is over, and
        background processes may keep them open for ever."""
        for fd in list(request.sources):
            while fd in request.sources and (request.credit > 0
                                             or request.sources[fd] == _COLLECT):
                if request.drained >= DRAIN_LIMIT or not self._read_source(request, fd):
                    self._close_source(request, fd)
        self._finish(request)

    # -- files and directories --------------------------------------------------------
    def _put(self, stream: int, fields: dict[str, Any]) -> None:
        request = Request(stream, "put-file" if fields["what"] == wire.FILE else "put-tree",
                          0)
        request.path = fields["path"]
        request.mode = fields["mode"] & _MODE_BITS
        request.allowance = self.window
        if not _valid_path(request.path):
            self._fail(request, "the path must be non-empty, without NUL bytes")
            return
        try:
            if fields["what"] == wire.FILE:
                parent = request.path.rpartition(b"/")[0]
                if parent:
                    make_dirs(parent)
                request.temp = request.path + TEMP_SUFFIX + str(stream).encode()
                request.sink = posix.open(request.temp, posix.O_WRONLY | posix.O_CREAT
                                          | posix.O_TRUNC | posix.O_CLOEXEC, 0o600)
            elif fields["what"] == wire.TREE:
                self._start_worker(request, receive_tree, inbound=True)
            else:
                self._fail(request, f"put of kind {fields['what']}: not file (0) or "
                                    "directory (1)")
                return
        except OSError as exc:
            self._fail(request, f"cannot write {_show(request.path)}: {describe(exc)}")
            return
        self.requests[stream] = request

    def _get(self, stream: int, fields: dict[str, Any]) -> None:
        assert self.peer is not None
        request = Request(stream, "get-file" if fields["what"] == wire.FILE else "get-tree",
                          self.peer.window)
        request.path = fields["path"]
        if not _valid_path(request.path):
            self._fail(request, "the path must be non-empty, without NUL bytes")
            return
        try:
            if fields["what"] == wire.FILE:
                fd = posix.open(request.path, posix.O_RDONLY | posix.O_CLOEXEC
                                | posix.O_NONBLOCK)
                st = posix.fstat(fd)
                if st.st_mode & 0o170000 != 0o100000:
                    posix.close(fd)
                    kind = "a directory" if st.st_mode & 0o170000 == 0o040000 else \
                        "not a regular file"
                    self._fail(request, f"{_show(request.path)} is {kind}")
                    return
                request.mode = st.st_mode & _MODE_BITS
                request.sources = {fd: wire.DATA}
            elif fields["what"] == wire.TREE:
                self._start_worker(request, send_tree, inbound=False)
            else:
                self._fail(request, f"get of kind {fields['what']}: not file (0) or "
                                    "directory (1)")
                return
        except OSError as exc:
            self._fail(request, f"cannot read {_show(request.path)}: {describe(exc)}")
            return
        self.requests[stream] = request
        if request.what == "get-file":
            self._pump_file(request)

    def _start_worker(self, request: Request, work: Any, *, inbound: bool) -> None:
        opened: list[int] = []
        try:
            if inbound:
                stdin, request.sink = posix.pipe()
                opened += [stdin, request.sink]
                stdout = posix.open(b"/dev/null", posix.O_WRONLY | posix.O_CLOEXEC)
                opened.append(stdout)
                keep = request.sink
            else:
                stdin = posix.open(b"/dev/null", posix.O_RDONLY | posix.O_CLOEXEC)
                opened.append(stdin)
                data, stdout = posix.pipe()
                opened += [data, stdout]
                keep = data
            errors, error_write = posix.pipe()
            opened += [errors, error_write]
            request.pid = start_worker(work, request.path, (stdin, stdout, error_write),
                                       (_signal.SIGCHLD, _signal.SIGPIPE, _signal.SIGXFSZ))
        except OSError:
            _close_all(opened)
            request.sink = -1
            raise
        _close_all([fd for fd in opened if fd not in (keep, errors)])
        posix.set_blocking(keep, False)
        posix.set_blocking(errors, False)
        request.sources = {errors: _COLLECT}
        if not inbound:
            request.sources[keep] = wire.DATA
        self.children[request.pid] = request

    def _pump_file(self, request: Request) -> None:
        """Send a regular file as far as the credit goes (its reads never block)."""
        for fd in list(request.sources):
            while fd in request.sources and request.credit > 0:
                if not self._read_source(request, fd):
                    self._close_source(request, fd)
        self._finish(request)

    def _cancel(self, request: Request, why: str) -> None:
        if request.pid and request.status is None:
            kill_all(request.pid, [], _signal.SIGKILL)
        self._fail(request, why)

    # -- pipes and files --------------------------------------------------------------
    def _pipe_event(self, fd: int, event: int) -> None:
        for request in list(self.requests.values()):
            if fd in request.sources:
                if not self._read_source(request, fd):
                    self._close_source(request, fd)
                    self._finish(request)
                return
            if fd == request.sink:
                self._write_sink(request)
                return

    def _read_source(self, request: Request, fd: int) -> bool:
        """Read once from a source; False at its end (or when a drain finds it empty)."""
        kind = request.sources[fd]
        size = ERROR_TEXT if kind == _COLLECT else min(request.credit, self._limit)
        if size <= 0:
            return True  # its sibling took the credit: read it once the host grants more
        try:
            data = posix.read(fd, size)
        except BlockingIOError:
            return not request.draining
        except OSError as exc:
            if kind != _COLLECT:
                request.errors += f"reading failed: {describe(exc)}".encode()
            return False
        if not data:
            return False
        if kind == _COLLECT:
            request.errors += data[:ERROR_TEXT - len(request.errors)]
        else:
            self._send(wire.frame(kind, request.stream, data))
            request.credit -= len(data)
            request.sent += len(data)
        if request.draining:
            request.drained += len(data)
        return True

    def _close_source(self, request: Request, fd: int) -> None:
        del request.sources[fd]
        posix.close(fd)

    def _write_sink(self, request: Request) -> None:
        while request.sink >= 0 and request.sink_buffer:
            try:
                written = posix.write(request.sink, request.sink_buffer[:self._limit])
            except BlockingIOError:
                return
            except BrokenPipeError:  # the command stopped reading: its input is dropped
                self._close_sink(request)
                break
            except OSError as exc:
                self._cancel(request, f"cannot write {_show(request.path)}: "
                                      f"{describe(exc)}")
                return
            del request.sink_buffer[:written]
            self._grant(request, written)
        if request.sink >= 0 and request.sink_eof and not request.sink_buffer:
            if request.what == "put-file":
                self._commit_file(request)
                return
            self._close_sink(request)
        self._finish(request)

    def _close_sink(self, request: Request) -> None:
        if request.sink >= 0:
            posix.close(request.sink)
            request.sink = -1
        if request.sink_buffer:
            self._grant(request, len(request.sink_buffer))
            request.sink_buffer.clear()

    def _grant(self, request: Request, count: int) -> None:
        """Give the host back credit for data consumed, a quarter window at a time."""
        if request.sink_eof:
            return
        request.ungranted += count
        if request.ungranted >= self.window // 4 or (request.sink < 0 and request.ungranted):
            self._send(wire.message(wire.WINDOW, request.stream,
                                    increment=request.ungranted))
            request.allowance += request.ungranted
            request.ungranted = 0

    def _commit_file(self, request: Request) -> None:
        fd, request.sink = request.sink, -1
        try:
            try:
                posix.fchmod(fd, request.mode)
            finally:
                posix.close(fd)
            posix.rename(request.temp, request.path)
        except OSError as exc:
            self._fail(request, f"cannot write {_show(request.path)}: {describe(exc)}")
            return
        request.temp = b""
        self._send(wire.message(wire.END, request.stream, size=request.received,
                                mode=request.mode))
        self._forget(request)

    # -- processes --------------------------------------------------------------------
    def _reap(self) -> None:
        try:
            while posix.read(self._wake, 512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                pid, status = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            request = self.children.pop(pid, None)
            if request is None:
                continue  # an orphan reparented to us: reaped, nothing to report
            request.status = status
            if request.what == "exec":
                self._exited(request)
            else:
                self._finish(request)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for request in list(self.requests.values()):
            if (request.deadline is not None and not request.timed_out
                    and request.status is None and now >= request.deadline):
                request.timed_out = True
                kill_all(request.pid, session_members(request.pid), _signal.SIGKILL)

    # -- ending requests --------------------------------------------------------------
    def _finish(self, request: Request) -> None:
        """Send the last frame of a request whose work is over."""
        if self.requests.get(request.stream) is not request or request.sources:
            return
        if request.what == "exec":
            if request.status is None:
                return
            status = request.status
            signum = posix.WTERMSIG(status) if posix.WIFSIGNALED(status) else 0
            code = 128 + signum if signum else posix.WEXITSTATUS(status)
            elapsed = int((time.monotonic() - request.started) * 1e6)
            self._send(wire.message(
                wire.EXIT, request.stream, code=code, signal=signum,
                timed_out=request.timed_out, background=request.background,
                background_killed=request.background_killed, elapsed_us=elapsed))
            self._forget(request)
        elif request.what == "get-file":
            self._send(wire.message(wire.END, request.stream, size=request.sent,
                                    mode=request.mode))
            self._forget(request)
        elif request.what in ("get-tree", "put-tree"):
            if request.status is None or (request.what == "put-tree" and request.sink >= 0):
                return
            if request.status == 0:
                size = request.sent if request.what == "get-tree" else request.received
                self._send(wire.message(wire.END, request.stream, size=size))
                self._forget(request)
            else:
                text = request.errors.decode("utf-8", "replace").strip() or \
                    f"the worker ended with status {request.status}"
                verb = "read" if request.what == "get-tree" else "write"
                self._fail(request, f"cannot {verb} {_show(request.path)}: {text}")

    def _fail(self, request: Request, why: str) -> None:
        self._send(wire.message(wire.ERROR, request.stream, message=why[:4000]))
        self._forget(request)

    def _forget(self, request: Request) -> None:
        """Release what a request holds; its process, if any, is reaped by _reap."""
        if self.requests.get(request.stream) is request:
            del self.requests[request.stream]
        for fd in list(request.sources):
            self._close_source(request, fd)
        if request.sink >= 0:
            posix.close(request.sink)
            request.sink = -1
        if request.temp:
            try:  # noqa: SIM105 - contextlib costs an import
                posix.unlink(request.temp)
            except OSError:
                pass
            request.temp = b""

    def _end_all(self) -> None:
        """Kill every command and worker, reap them, release everything."""
        for request in list(self.requests.values()):
            if request.pid and request.status is None:
                kill_all(request.pid, session_members(request.pid), _signal.SIGKILL)
            self._forget(request)
        deadline = time.monotonic() + FLUSH_SECONDS
        while self.children and time.monotonic() < deadline:
            try:
                pid, _status = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.children.pop(pid, None)
            else:
                time.sleep(0.002)
        self.children.clear()
        for fd in list(self._watched):
            self._poller.unregister(fd)
        self._watched.clear()


def _ignore(_signum: int, _frame: object) -> None:
    """SIGCHLD's handler: its only job is that set_wakeup_fd wakes the loop."""


def _software() -> str:
    import sys

    return f"initkit guest agent, Python {sys.version.split()[0]}"


def _valid_path(path: bytes) -> bool:
    return bool(path) and b"\0" not in path


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            try:  # noqa: SIM105
                posix.close(fd)
            except OSError:
                pass


def main(fd: int) -> int:
    """Serve the channel on ``fd`` as a process of its own: 0 after a shutdown."""
    try:
        from guest.system import System

        System().become_subreaper()
    except OSError as exc:
        import sys

        sys.stderr.write(f"initkit agent: not a child subreaper ({exc}); what commands "
                         "leave behind goes to PID 1\n")
    return 0 if Agent(fd).serve() == SHUTDOWN else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(int(sys.argv[1])))
