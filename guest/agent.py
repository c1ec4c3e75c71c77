"""The guest agent: serves the host's requests over the control channel (docs/guest.md).

One process, one thread, one poll loop over the channel, every request's pipes and
files, and a pipe that SIGCHLD writes to (``set_wakeup_fd``), so that several commands
run at once and none waits for another. Flow control bounds every buffer: output is
read from a command's pipe only while the host has granted credit for it, so a slow
consumer stalls its own command (the pipe fills, the command blocks) and nothing else.

It is meant to run in a forked child of the init (docs/guest.md says why), which makes
itself a child subreaper so that what commands leave behind is reparented to it
(guest/port.py). A bad request is answered with an error, a bug met by one request
fails that request; only a broken channel or protocol ends ``serve()``.
"""

from __future__ import annotations

import _signal
import posix
import select
import time

from guest import wire
from guest.requests import (
    COLLECT,
    ERROR_TEXT,
    Refused,
    Request,
    error_frame,
    last_frame,
    show,
    start_exec,
    start_get,
    start_put,
)
from guest.spawn import SpawnError, describe, group_alive, kill_all, session_members

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
FLUSH_SECONDS = 2.0  # how long the last frames may take to leave at the end

_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_POLLHUP, _POLLERR, _POLLNVAL = select.POLLHUP, select.POLLERR, select.POLLNVAL


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
        # A command that inherited the channel would keep it open after the agent died,
        # and the host would never see it go.
        posix.set_inheritable(self.fd, False)
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
                                             or request.sources[fd] == COLLECT):
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
                self._send(error_frame(stream, f"more than {MAX_REQUESTS} requests at once"))
                return
            self._start(kind, stream, wire.decode(kind, payload))
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

    # -- starting requests --------------------------------------------------------
    def _start(self, kind: int, stream: int, fields: dict[str, Any]) -> None:
        assert self.peer is not None
        try:
            if kind == wire.EXEC:
                request = start_exec(stream, fields, self.window, self.peer.window)
            elif kind == wire.PUT:
                request = start_put(stream, fields, self.window)
            else:
                request = start_get(stream, fields, self.peer.window)
        except Refused as exc:
            self._send(error_frame(stream, str(exc)))
            return
        except SpawnError as exc:
            self._send(wire.message(wire.EXIT, stream, code=exc.code, error=str(exc)))
            return
        self.requests[stream] = request
        if request.pid:
            self.children[request.pid] = request
        if request.what == "get-file":
            self._pump_file(request)
        else:
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
                                             or request.sources[fd] == COLLECT):
                if request.drained >= DRAIN_LIMIT or not self._read_source(request, fd):
                    self._close_source(request, fd)
        self._finish(request)

    # -- files ----------------------------------------------------------------------
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
        size = ERROR_TEXT if kind == COLLECT else min(request.credit, self._limit)
        if size <= 0:
            return True  # its sibling took the credit: read it once the host grants more
        try:
            data = posix.read(fd, size)
        except BlockingIOError:
            return not request.draining
        except OSError as exc:
            if kind != COLLECT:
                request.errors += f"reading failed: {describe(exc)}".encode()
            return False
        if not data:
            return False
        if kind == COLLECT:
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
                self._cancel(request, f"cannot write {show(request.path)}: "
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
            self._fail(request, f"cannot write {show(request.path)}: {describe(exc)}")
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
        if self.requests.get(request.stream) is not request:
            return
        frame = last_frame(request)
        if frame is not None:
            self._send(frame)
            self._forget(request)

    def _fail(self, request: Request, why: str) -> None:
        self._send(error_frame(request.stream, why))
        self._forget(request)

    def _forget(self, request: Request) -> None:
        """Release what a request holds; its process, if any, is reaped by _reap."""
        if self.requests.get(request.stream) is request:
            del self.requests[request.stream]
        request.close()

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
