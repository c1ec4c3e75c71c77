"""The host end of the control channel: requests to the guest agent over one socket.

One reader thread cuts the guest's frames (guest/wire.py) and hands each to the
request it belongs to; callers in any number of threads issue requests and read their
answers. Nothing the guest sends grows memory without bound: a frame over the announced
limit is refused before it is read, every request buffers at most its window (the
guest may not send more before the consumer has read, which grants credit back), and
copies out go through hostrun/untar.py. A guest that disconnects or breaks the
protocol fails every pending call with a ChannelError.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from guest import wire
from hostrun.untar import Unpacked, UnsafeArchive, extract
from initkit.errors import InitkitError

# The largest frame this side accepts: data frames carry at most wire.CHUNK.
HOST_MAX_FRAME = 1 << 18
HELLO_TIMEOUT = 30.0
DEFAULT_MAX_OUTPUT = 1 << 30  # bytes of stdout + stderr that wait() collects
DEFAULT_MAX_COPY = 1 << 34  # bytes a get_file/get_dir accepts
DEFAULT_MAX_ENTRIES = 1 << 20  # members a get_dir accepts
_RECV = 1 << 18
_STREAMS = {wire.STDOUT: "stdout", wire.STDERR: "stderr", wire.DATA: "data"}
PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]


class ChannelError(InitkitError):
    """The control channel is gone: the guest closed it, crashed, or broke the protocol.
    ``reason`` is the bare cause; the message adds what ``describe_failure`` told."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}\n{detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def copy(self) -> ChannelError:
        """The same error as a new exception, for raising in one more thread."""
        return ChannelError(self.reason, self.detail)


class GuestError(InitkitError):
    """The guest could not do one request (no such path, bad argument...); the channel
    is fine."""


@dataclass(frozen=True)
class ExecResult:
    """How a command ended, shaped like subprocess.CompletedProcess."""

    argv: tuple[bytes, ...]
    returncode: int  # a signal N is 128 + N, as a shell says it
    stdout: bytes
    stderr: bytes
    duration: float  # seconds, measured on the host from request to exit
    timed_out: bool = False
    signal: int | None = None
    background: tuple[int, ...] = ()  # guest pids left behind in its session
    background_killed: bool = False
    error: str | None = None  # why it did not start (returncode 125/126/127)
    guest_duration: float = 0.0  # seconds, measured by the agent


class _Request:
    """One stream's state on the host, guarded by its condition."""

    kinds: frozenset[int] = frozenset()  # the data kinds the guest may send on it
    finals = frozenset((wire.END, wire.ERROR))  # the kinds that end it

    def __init__(self, channel: Channel, stream: int, what: str) -> None:
        self.channel = channel
        self.stream = stream
        self.what = what
        self.cond = threading.Condition()
        self.queue: deque[tuple[int, bytes]] = deque()
        self.buffered = 0
        self.high_water = 0  # the most bytes this request ever held unread
        self.window = channel.window
        self.granted = channel.window  # data bytes the guest may send, in all
        self.received = 0
        self.ungranted = 0
        self.credit = channel.peer_window  # data bytes this side may still send
        self.final: tuple[int, dict[str, Any]] | None = None
        self.failure: ChannelError | None = None
        self.abandoned = False

    # reader thread ------------------------------------------------------------------
    def deliver(self, kind: int, payload: bytes) -> None:
        with self.cond:
            if self.received + len(payload) > self.granted:
                raise wire.ProtocolError(
                    f"{len(payload)} bytes of {wire.NAMES[kind]} on stream {self.stream}, "
                    f"past the {self.granted - self.received} its window allows")
            self.received += len(payload)
            if self.abandoned:
                return
            self.queue.append((kind, payload))
            self.buffered += len(payload)
            self.high_water = max(self.high_water, self.buffered)
            self.cond.notify_all()

    def end(self, kind: int, fields: dict[str, Any]) -> None:
        with self.cond:
            self.final = (kind, fields)
            self.cond.notify_all()

    def add_credit(self, increment: int) -> None:
        with self.cond:
            self.credit += increment
            self.cond.notify_all()

    def fail(self, error: ChannelError) -> None:
        with self.cond:
            if self.final is None and self.failure is None:
                self.failure = error
            self.cond.notify_all()

    # callers ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.final is not None or self.failure is not None

    def take(self, timeout: float | None = None) -> tuple[int, bytes] | None:
        """The next chunk, or None once the request has ended and nothing is left;
        raises the channel's failure, or TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while not self.queue and self.final is None and self.failure is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{self.what}: nothing from the guest in "
                                       f"{timeout} s")
                self.cond.wait(left)
            if not self.queue:
                if self.final is None and self.failure is not None:
                    raise self.failure.copy()
                return None
            kind, chunk = self.queue.popleft()
            self.buffered -= len(chunk)
            self.ungranted += len(chunk)
            grant = 0
            if self.ungranted >= self.window // 4 and self.final is None:
                grant, self.ungranted = self.ungranted, 0
                self.granted += grant
        if grant:
            self.channel._send_quietly(wire.message(wire.WINDOW, self.stream,
                                                    increment=grant))
        return kind, chunk

    def wait_final(self, timeout: float | None = None) -> tuple[int, dict[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self.final is None and self.failure is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{self.what}: no answer from the guest in "
                                       f"{timeout} s")
                self.cond.wait(left)
            if self.final is None:
                assert self.failure is not None
                raise self.failure.copy()
            return self.final

    def send_data(self, kind: int, data: bytes) -> None:
        """Send ``data`` as frames, each within the credit the guest has granted;
        BrokenPipeError once the request has ended (the guest reads no more)."""
        view = memoryview(data)
        while view:
            with self.cond:
                while self.credit <= 0 and not self.done:
                    self.cond.wait()
                if self.failure is not None and self.final is None:
                    raise self.failure.copy()
                if self.final is not None:
                    raise BrokenPipeError(f"{self.what} has ended; the guest takes no more "
                                          "input")
                size = min(self.credit, self.channel.data_limit, len(view))
                self.credit -= size
            self.channel._send(wire.frame(kind, self.stream, bytes(view[:size])))
            view = view[size:]

    def abandon(self) -> None:
        """Stop wanting this request's data: drop what is buffered, cancel it in the
        guest (which answers with its last frame), ignore whatever is still on its way."""
        with self.cond:
            if self.done:
                return
            self.abandoned = True
            self.queue.clear()
            self.buffered = 0
        self.channel._send_quietly(wire.message(wire.KILL, self.stream,
                                                signal=signal.SIGKILL))


class _ExecRequest(_Request):
    kinds = frozenset((wire.STDOUT, wire.STDERR))
    finals = frozenset((wire.EXIT, wire.ERROR))


class _GetRequest(_Request):
    kinds = frozenset((wire.DATA,))


class _PingRequest(_Request):
    finals = frozenset((wire.PING,))


class Execution:
    """A command running in the guest: stream its output, feed its stdin, wait for it."""

    def __init__(self, request: _Request, argv: tuple[bytes, ...], started: float) -> None:
        self._request = request
        self.argv = argv
        self._started = started
        self._ended: float | None = None
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._result: ExecResult | None = None

    @property
    def stream(self) -> int:
        return self._request.stream

    @property
    def high_water(self) -> int:
        """The most output bytes this command ever had buffered on the host."""
        return self._request.high_water

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        """("stdout" | "stderr", chunk) as the guest sends them, until the exit."""
        while True:
            item = self._request.take()
            if item is None:
                return
            yield _STREAMS[item[0]], item[1]

    def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin (exec(..., stream_stdin=True)); blocks while
        the guest's window is full. BrokenPipeError once the command has ended."""
        self._request.send_data(wire.STDIN, data)

    def close_stdin(self) -> None:
        """End of file on the command's stdin."""
        if not self._request.done:
            self._request.channel._send_quietly(wire.message(wire.STDIN_EOF, self.stream))

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to the command's process group."""
        if not 0 < signum < 65:
            raise ValueError(f"signal {signum} is not 1..64")
        if not self._request.done:
            self._request.channel._send(wire.message(wire.KILL, self.stream, signal=signum))

    def wait(self, timeout: float | None = None, *,
             max_output: int = DEFAULT_MAX_OUTPUT) -> ExecResult:
        """Collect the output not yet streamed and the exit. ``timeout`` (host-side,
        seconds) raises TimeoutError with the command still running; more than
        ``max_output`` bytes of output kill it and raise InitkitError."""
        if self._result is not None:
            return self._result
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            item = self._request.take(left)
            if item is None:
                break
            kind, chunk = item
            (self._stdout if kind == wire.STDOUT else self._stderr).extend(chunk)
            if len(self._stdout) + len(self._stderr) > max_output:
                self._request.abandon()
                raise InitkitError(f"{_show_argv(self.argv)} wrote more than {max_output} "
                                   "bytes of output; it was killed (stream it with "
                                   "iteration, or raise max_output)")
        kind, fields = self._request.wait_final()
        if kind == wire.ERROR:
            raise GuestError(f"the guest refused to run {_show_argv(self.argv)}: "
                             f"{fields['message']}")
        self._result = ExecResult(
            argv=self.argv, returncode=fields["code"], stdout=bytes(self._stdout),
            stderr=bytes(self._stderr), duration=time.monotonic() - self._started,
            timed_out=fields["timed_out"], signal=fields["signal"] or None,
            background=tuple(fields["background"]),
            background_killed=fields["background_killed"],
            error=fields["error"] or None, guest_duration=fields["elapsed_us"] / 1e6)
        return self._result


class _DataReader:
    """A get's DATA frames as read(n), the form untar.extract reads."""

    def __init__(self, request: _Request) -> None:
        self._request = request
        self._pending = b""

    def read(self, size: int) -> bytes:
        if not self._pending:
            item = self._request.take()
            if item is None:
                return b""
            self._pending = item[1]
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk


class _DataWriter:
    """A put's DATA frames as a binary file's write(), the form tarfile writes to."""

    def __init__(self, request: _Request) -> None:
        self._request = request

    def write(self, data: bytes) -> int:
        self._request.send_data(wire.DATA, bytes(data))
        return len(data)


class Channel:
    """A session with the guest agent over a connected stream socket.

    ``describe_failure`` is called when the channel fails; what it returns (the
    console's last lines, say) is added to the ChannelError every pending call raises.
    """

    def __init__(self, sock: socket.socket, *,
                 describe_failure: Callable[[], str] | None = None,
                 hello_timeout: float = HELLO_TIMEOUT, window: int = wire.DEFAULT_WINDOW,
                 name: str = "the guest") -> None:
        self._sock = sock
        self._describe = describe_failure
        self.name = name
        self.window = window
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._requests: dict[int, _Request] = {}
        self._next_stream = 1
        self._frames = wire.FrameReader(HOST_MAX_FRAME)
        self.failure: ChannelError | None = None
        self._shutdown_acked = threading.Event()
        self.peer = self._handshake(hello_timeout)
        self.peer_window = self.peer.window
        self.data_limit = wire.data_limit(self.peer)
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"initkit-channel-{sock.fileno()}")
        self._reader.start()

    @classmethod
    def connect(cls, path: PathArg, *, timeout: float = HELLO_TIMEOUT,
                **options: Any) -> Channel:
        """Connect to a unix socket at ``path`` and greet the agent."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(os.fsdecode(path))
            return cls(sock, hello_timeout=timeout, **options)
        except OSError as exc:
            sock.close()
            raise ChannelError(f"cannot connect to the control channel at "
                               f"{os.fsdecode(path)}: {exc.strerror or exc}") from None
        except BaseException:
            sock.close()
            raise

    # -- the session ----------------------------------------------------------------
    def _handshake(self, timeout: float) -> wire.Peer:
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(wire.hello(HOST_MAX_FRAME, self.window,
                                          "initkit hostrun"))
            while True:
                got = self._frames.next()
                if got is not None:
                    peer = wire.accept_hello(*got)
                    break
                data = self._sock.recv(_RECV)
                if not data:
                    raise ChannelError(self._with_detail(
                        f"{self.name} closed the control channel before its hello"))
                self._frames.feed(data)
        except TimeoutError:
            raise ChannelError(f"{self.name} did not answer on the control channel in "
                               f"{timeout} s", self._detail()) from None
        except wire.ProtocolError as exc:
            raise ChannelError(f"{self.name} spoke no initkit protocol on the control "
                               f"channel: {exc}", self._detail()) from None
        except OSError as exc:
            raise ChannelError(f"the control channel failed during its hello: "
                               f"{exc.strerror or exc}", self._detail()) from None
        self._sock.settimeout(None)
        return peer

    def _read_loop(self) -> None:
        reason = f"{self.name} closed the control channel"
        try:
            while True:
                got = self._frames.next()
                if got is None:
                    data = self._sock.recv(_RECV)
                    if not data:
                        break
                    self._frames.feed(data)
                    continue
                self._dispatch(*got)
        except wire.ProtocolError as exc:
            reason = f"{self.name} broke the control channel's protocol: {exc}"
        except ConnectionResetError:
            reason = f"{self.name} closed the control channel (connection reset)"
        except OSError as exc:
            reason = f"the control channel failed: {exc.strerror or exc}"
        except _SessionEnded as ended:
            reason = str(ended)
        self._fail(reason)

    def _dispatch(self, kind: int, stream: int, payload: bytes) -> None:
        if stream == wire.SESSION:
            if kind == wire.SHUTDOWN:
                self._shutdown_acked.set()
                raise _SessionEnded(f"{self.name} has shut down")
            if kind == wire.ERROR:
                raise _SessionEnded(f"{self.name} ended the session: "
                                    f"{wire.decode(kind, payload)['message']}")
            raise wire.ProtocolError(f"{wire.NAMES.get(kind, kind)} on the session stream")
        with self._lock:
            request = self._requests.get(stream)
        if request is None:
            raise wire.ProtocolError(f"a {wire.NAMES.get(kind, kind)} frame for stream "
                                     f"{stream}, which has no request")
        if kind in wire.DATA_KINDS:
            if kind not in request.kinds:
                raise wire.ProtocolError(f"{wire.NAMES[kind]} on stream {stream} "
                                         f"({request.what})")
            request.deliver(kind, payload)
        elif kind == wire.WINDOW:
            request.add_credit(wire.decode(kind, payload)["increment"])
        elif kind in request.finals:
            fields = {"payload": payload} if kind == wire.PING else wire.decode(kind, payload)
            self._finish(request, kind, fields)
        else:
            raise wire.ProtocolError(f"{wire.NAMES.get(kind, kind)} on stream {stream} "
                                     f"({request.what})")

    def _finish(self, request: _Request, kind: int, fields: dict[str, Any]) -> None:
        with self._lock:
            self._requests.pop(request.stream, None)
        request.end(kind, fields)

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = ChannelError(reason, self._detail())
            failure = self.failure
            pending = list(self._requests.values())
            self._requests.clear()
        for request in pending:
            request.fail(failure)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _detail(self) -> str:
        if self._describe is None:
            return ""
        try:
            return self._describe()
        except Exception as exc:  # a broken hook must not hide the failure itself
            return f"(describing the failure failed: {exc})"

    def _with_detail(self, reason: str) -> str:
        detail = self._detail()
        return f"{reason}\n{detail}" if detail else reason

    def _send(self, data: bytes) -> None:
        if self.failure is not None:
            raise self.failure.copy()
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self._fail(f"writing to the control channel failed: {exc.strerror or exc}")
            assert self.failure is not None
            raise self.failure.copy() from None

    def _send_quietly(self, data: bytes) -> None:
        """Send what only matters while the channel works (credit, end of input)."""
        with contextlib.suppress(ChannelError):
            self._send(data)

    def _open(self, request_type: type[_Request], what: str, frame_kind: int,
              fields: dict[str, Any]) -> _Request:
        """Register a request and send its first frame."""
        with self._lock:
            if self.failure is not None:
                raise self.failure.copy()
            stream = self._next_stream
            self._next_stream += 1
            if stream > wire.MAX_STREAM:
                raise ChannelError("the control channel has used up its stream numbers")
            request = request_type(self, stream, what)
            self._requests[stream] = request
        payload = wire.encode(frame_kind, fields) if frame_kind != wire.PING else b""
        frame = wire.frame(frame_kind, stream, payload)
        if len(frame) - 4 > self.peer.max_frame:
            with self._lock:
                self._requests.pop(stream, None)
            raise InitkitError(f"{what}: the request is {len(frame)} bytes, over the "
                               f"{self.peer.max_frame} the guest accepts in one frame "
                               "(argv and environment together must fit)")
        self._send(frame)
        return request

    # -- requests -----------------------------------------------------------------------
    def exec(self, argv: Sequence[PathArg], *, env: Mapping[PathArg, PathArg] | None = None,
             replace_env: bool = False, cwd: PathArg | None = None,
             input: bytes | None = None, stream_stdin: bool = False,
             timeout: float | None = None, keep_background: bool = False) -> Execution:
        """Start ``argv`` in the guest (no shell: each element is one argument, any bytes
        but NUL). ``env`` is laid over the agent's (PATH, HOME=/, TERM=dumb), or alone
        with ``replace_env``. stdin: /dev/null, ``input``'s bytes, or with
        ``stream_stdin`` what Execution.write sends. ``timeout`` (seconds, in the
        guest) kills the process group and reports timed_out; ``keep_background``
        lets what it leaves in its session live on."""
        args = tuple(_bytes(arg, "argument") for arg in argv)
        if not args:
            raise InitkitError("exec: argv is empty; give the program and its arguments")
        pairs = [(_bytes(k, "environment name"), _bytes(v, "environment value"))
                 for k, v in (env or {}).items()]
        for key, _ in pairs:
            if not key or b"=" in key:
                raise InitkitError(f"environment name {key!r} must be non-empty, "
                                   "without '='")
        if input is not None and stream_stdin:
            raise InitkitError("exec: give input= or stream_stdin=True, not both")
        inline = input is not None and len(input) <= self.peer_window
        mode = wire.STDIN_NONE
        if inline:
            mode = wire.STDIN_BYTES
        elif input is not None or stream_stdin:
            mode = wire.STDIN_STREAM
        timeout_ms = 0 if timeout is None else max(1, round(timeout * 1000))
        started = time.monotonic()
        request = self._open(_ExecRequest, f"exec {_show_argv(args)}", wire.EXEC, {
            "argv": args, "env": pairs, "replace_env": replace_env,
            "cwd": b"" if cwd is None else _bytes(cwd, "cwd"), "stdin": mode,
            "input": input if inline else b"", "timeout_ms": timeout_ms,
            "keep_background": keep_background})
        execution = Execution(request, args, started)
        if input is not None and not inline:
            threading.Thread(target=_feed, args=(execution, input), daemon=True,
                             name=f"initkit-stdin-{request.stream}").start()
        return execution

    def run(self, argv: Sequence[PathArg], *, wait_timeout: float | None = None,
            max_output: int = DEFAULT_MAX_OUTPUT, **options: Any) -> ExecResult:
        """exec() and wait(): the result with all of stdout and stderr."""
        return self.exec(argv, **options).wait(wait_timeout, max_output=max_output)

    def ping(self, payload: bytes = b"", timeout: float | None = None) -> float:
        """A round trip through the agent's loop; returns its seconds."""
        started = time.monotonic()
        with self._lock:
            if self.failure is not None:
                raise self.failure.copy()
            stream = self._next_stream
            self._next_stream += 1
            request = _PingRequest(self, stream, "ping")
            self._requests[stream] = request
        self._send(wire.frame(wire.PING, stream, payload))
        _kind, fields = request.wait_final(timeout)
        if fields.get("payload") != payload:
            raise ChannelError(f"{self.name} echoed a ping wrongly")
        return time.monotonic() - started

    def put_bytes(self, data: bytes, guest: PathArg, *, mode: int = 0o644) -> None:
        """Write ``data`` to the guest file ``guest`` (parents made, replaced atomically)."""
        path = _bytes(guest, "guest path")
        request = self._open(_Request, f"copy in to {_show(path)}", wire.PUT,
                             {"path": path, "mode": mode, "what": wire.FILE})
        self._put_and_wait(request, lambda: request.send_data(wire.DATA, data))

    def put_file(self, host: PathArg, guest: PathArg, *, mode: int | None = None) -> None:
        """Copy the host file ``host`` to ``guest`` (its mode unless ``mode``)."""
        path = _bytes(guest, "guest path")
        try:
            source = open(host, "rb")  # noqa: SIM115 - closed in send
            file_mode = os.fstat(source.fileno()).st_mode
        except OSError as exc:
            raise InitkitError(f"copy in: cannot read {os.fsdecode(host)}: "
                               f"{exc.strerror}") from None

        def send() -> None:
            with source:
                while chunk := source.read(1 << 20):
                    request.send_data(wire.DATA, chunk)

        try:
            chosen = (file_mode if mode is None else mode) & 0o7777
            request = self._open(_Request, f"copy in to {_show(path)}", wire.PUT,
                                 {"path": path, "mode": chosen, "what": wire.FILE})
        except BaseException:
            source.close()
            raise
        self._put_and_wait(request, send)

    def put_dir(self, host: PathArg, guest: PathArg) -> None:
        """Copy the host directory ``host`` into the guest directory ``guest`` (made if
        missing) as a tar stream; the guest's copies belong to root."""
        import tarfile

        source = Path(os.fsdecode(host))
        if not source.is_dir():
            raise InitkitError(f"copy in: {source} is not a directory")
        path = _bytes(guest, "guest path")
        request = self._open(_Request, f"copy in to {_show(path)}", wire.PUT,
                             {"path": path, "mode": 0o755, "what": wire.TREE})

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        def send() -> None:
            writer: IO[bytes] = _DataWriter(request)  # type: ignore[assignment]
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.add(source, arcname=".", filter=as_root)

        self._put_and_wait(request, send)

    def _put_and_wait(self, request: _Request, send: Callable[[], None]) -> None:
        try:
            send()
        except BrokenPipeError:
            pass  # the guest answered early (an error): its answer says why
        except OSError as exc:
            request.abandon()
            raise InitkitError(f"{request.what}: reading the host side failed: "
                               f"{exc}") from None
        except BaseException:
            request.abandon()
            raise
        if not request.done:
            self._send(wire.message(wire.END, request.stream))
        kind, fields = request.wait_final()
        if kind == wire.ERROR:
            raise GuestError(f"{request.what}: {fields['message']}")

    def get_bytes(self, guest: PathArg, *, max_bytes: int = DEFAULT_MAX_COPY) -> bytes:
        """The contents of the guest file ``guest``."""
        chunks: list[bytes] = []
        self._get_file(guest, chunks.append, max_bytes)
        return b"".join(chunks)

    def get_file(self, guest: PathArg, host: PathArg, *,
                 max_bytes: int = DEFAULT_MAX_COPY) -> None:
        """Copy the guest file ``guest`` to ``host`` (written beside it, then renamed
        over it; the guest's mode without set-id bits)."""
        target = Path(os.fsdecode(host))
        temp = target.with_name(f".{target.name}.initkit-{os.getpid()}-"
                                f"{threading.get_ident()}")
        try:
            out = open(temp, "xb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InitkitError(f"copy out: cannot write {target}: {exc.strerror}") from None
        try:
            with out:
                fields = self._get_file(guest, out.write, max_bytes)
                os.fchmod(out.fileno(), fields["mode"] & 0o777)
            os.replace(temp, target)
        except OSError as exc:
            raise InitkitError(f"copy out: cannot write {target}: {exc.strerror}") from None
        finally:
            temp.unlink(missing_ok=True)

    def _get_file(self, guest: PathArg, take: Callable[[bytes], object],
                  max_bytes: int) -> dict[str, Any]:
        path = _bytes(guest, "guest path")
        request = self._open(_GetRequest, f"copy out of {_show(path)}", wire.GET,
                             {"path": path, "what": wire.FILE})
        total = 0
        while (item := request.take()) is not None:
            total += len(item[1])
            if total > max_bytes:
                request.abandon()
                raise InitkitError(f"{request.what}: more than {max_bytes} bytes; raise "
                                   "max_bytes if this is expected")
            take(item[1])
        kind, fields = request.wait_final()
        if kind == wire.ERROR:
            raise GuestError(f"{request.what}: {fields['message']}")
        if fields["size"] != total:
            raise ChannelError(f"{request.what}: the guest said {fields['size']} bytes "
                               f"and sent {total}")
        return fields

    def get_dir(self, guest: PathArg, host: PathArg, *, max_bytes: int = DEFAULT_MAX_COPY,
                max_entries: int = DEFAULT_MAX_ENTRIES) -> Unpacked:
        """Copy the guest directory ``guest`` into the host directory ``host`` (made if
        missing). Nothing is ever written outside ``host`` (hostrun/untar.py)."""
        path = _bytes(guest, "guest path")
        request = self._open(_GetRequest, f"copy out of {_show(path)}", wire.GET,
                             {"path": path, "what": wire.TREE})
        reader = _DataReader(request)
        try:
            unpacked = extract(reader.read, Path(os.fsdecode(host)), max_bytes=max_bytes,
                               max_entries=max_entries)
            while reader.read(1 << 16):  # what follows the end of the archive
                pass
        except GuestError:
            raise
        except UnsafeArchive as exc:
            request.abandon()
            if request.final is not None and request.final[0] == wire.ERROR:
                raise GuestError(f"{request.what}: {request.final[1]['message']}") from None
            raise UnsafeArchive(f"{request.what} refused: {exc}") from None
        except BaseException:
            request.abandon()
            raise
        kind, fields = request.wait_final()
        if kind == wire.ERROR:
            raise GuestError(f"{request.what}: {fields['message']}")
        return unpacked

    def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the agent to end every request and stop; close the channel."""
        if self.failure is None:
            with contextlib.suppress(ChannelError):
                self._send(wire.message(wire.SHUTDOWN, wire.SESSION))
            self._shutdown_acked.wait(timeout)
        self.close()

    def close(self) -> None:
        """Close the socket; pending calls fail with ChannelError."""
        self._fail("the control channel was closed")
        self._reader.join(5)
        self._sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _SessionEnded(Exception):
    pass


def _feed(execution: Execution, data: bytes) -> None:
    """A thread's work: stdin bigger than one request frame, then end of file."""
    try:
        execution.write(data)
        execution.close_stdin()
    except (BrokenPipeError, InitkitError):
        pass  # the command ended first, or the channel failed: wait() tells


def _bytes(value: PathArg, what: str) -> bytes:
    data = os.fsencode(value)
    if b"\0" in data:
        raise InitkitError(f"{what} {data!r} has a NUL byte, which no exec or path can carry")
    return data


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


def _show_argv(argv: Sequence[bytes]) -> str:
    shown = " ".join(_show(arg) for arg in argv[:4])
    return f"[{shown}{' ...' if len(argv) > 4 else ''}]"
