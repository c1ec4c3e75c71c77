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
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from guest import wire
from hostrun.streams import (
    DEFAULT_MAX_OUTPUT,
    ChannelError,
    DataReader,
    DataWriter,
    ExecResult,
    ExecStream,
    Execution,
    GetStream,
    GuestError,
    PingStream,
    Stream,
    feed,
    show,
    show_argv,
)
from hostrun.untar import Unpacked, UnsafeArchive, extract
from initkit.errors import InitkitError

__all__ = ["Channel", "ChannelError", "ExecResult", "Execution", "GuestError",
           "UnsafeArchive"]

# The largest frame this side accepts: data frames carry at most wire.CHUNK.
HOST_MAX_FRAME = 1 << 18
HELLO_TIMEOUT = 30.0
DEFAULT_MAX_COPY = 1 << 34  # bytes a get_file/get_dir accepts
DEFAULT_MAX_ENTRIES = 1 << 20  # members a get_dir accepts
_RECV = 1 << 18
# On a console channel, what may come before the agent's ready line (a tty's leftovers).
MAX_BEFORE_READY = 1 << 16
# The window a console channel's host grants per request and direction. QEMU's console
# ports drop what their socket does not take at once (hw/char/virtio-console.c: only
# named ports are throttled), so the guest must never have more in flight than the
# socket holds (~200 KiB for a unix socket here); stdout and stderr of a few requests
# at 32 KiB each stay below that.
CONSOLE_WINDOW = 1 << 15
PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]


class Channel:
    """A session with the guest agent over a connected stream socket.

    ``ready``: a console channel (a tty in the guest): wait for the agent to write this
    before greeting it (guest/contract.py's CONSOLE_READY). ``describe_failure`` is
    called when the channel fails; what it returns (the console's last lines, say) is
    added to the ChannelError every pending call raises.
    """

    def __init__(self, sock: socket.socket, *,
                 describe_failure: Callable[[], str] | None = None,
                 hello_timeout: float = HELLO_TIMEOUT, window: int = wire.DEFAULT_WINDOW,
                 name: str = "the guest", ready: bytes | None = None) -> None:
        self._sock = sock
        self._ready = ready
        self._describe = describe_failure
        self.name = name
        self.window = window
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._requests: dict[int, Stream] = {}
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
                listening: Callable[[], bool] | None = None, **options: Any) -> Channel:
        """Connect to a unix socket at ``path`` and greet the agent. ``listening``: the
        socket's server is still starting (a VMM binds its socket a moment before it
        listens): a refused connection is tried again every 10 ms while it says True,
        within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(os.fsdecode(path))
                break
            except OSError as exc:
                sock.close()
                starting = isinstance(exc, (ConnectionRefusedError, FileNotFoundError))
                if not starting or listening is None or not listening() \
                        or time.monotonic() >= deadline:
                    raise ChannelError(f"cannot connect to the control channel at "
                                       f"{os.fsdecode(path)}: {exc.strerror or exc}") from None
                time.sleep(0.01)
            except BaseException:
                sock.close()
                raise
        try:
            return cls(sock, hello_timeout=max(1.0, deadline - time.monotonic()), **options)
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
            if self._ready is not None:
                self._await_ready(self._ready)
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

    def _await_ready(self, marker: bytes) -> None:
        """Read until the agent's ready line; what follows it is the first of its frames.
        At most MAX_BEFORE_READY bytes before it are skipped, never kept."""
        seen = b""
        skipped = 0
        keep = len(marker) - 1  # a marker's start may end one read
        while True:
            data = self._sock.recv(_RECV)
            if not data:
                raise ChannelError(self._with_detail(
                    f"{self.name} closed the control channel before the agent was ready"))
            seen += data
            at = seen.find(marker)
            if at >= 0 and skipped + at <= MAX_BEFORE_READY:
                self._frames.feed(seen[at + len(marker):])
                return
            if len(seen) > keep:
                skipped += len(seen) - keep
                seen = seen[len(seen) - keep:]
            if skipped > MAX_BEFORE_READY or at >= 0:
                raise wire.ProtocolError(f"more than {MAX_BEFORE_READY} bytes came before "
                                         "the agent's ready line")

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

    def _finish(self, request: Stream, kind: int, fields: dict[str, Any]) -> None:
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

    def send(self, data: bytes) -> None:
        if self.failure is not None:
            raise self.failure.copy()
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self._fail(f"writing to the control channel failed: {exc.strerror or exc}")
            assert self.failure is not None
            raise self.failure.copy() from None

    def send_quietly(self, data: bytes) -> None:
        """Send what only matters while the channel works (credit, end of input)."""
        with contextlib.suppress(ChannelError):
            self.send(data)

    def _open(self, request_type: type[Stream], what: str, frame_kind: int,
              fields: dict[str, Any]) -> Stream:
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
        self.send(frame)
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
        request = self._open(ExecStream, f"exec {show_argv(args)}", wire.EXEC, {
            "argv": args, "env": pairs, "replace_env": replace_env,
            "cwd": b"" if cwd is None else _bytes(cwd, "cwd"), "stdin": mode,
            "input": input if inline else b"", "timeout_ms": timeout_ms,
            "keep_background": keep_background})
        execution = Execution(request, args, started)
        if input is not None and not inline:
            threading.Thread(target=feed, args=(execution, input), daemon=True,
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
            request = PingStream(self, stream, "ping")
            self._requests[stream] = request
        self.send(wire.frame(wire.PING, stream, payload))
        _kind, fields = request.wait_final(timeout)
        if fields.get("payload") != payload:
            raise ChannelError(f"{self.name} echoed a ping wrongly")
        return time.monotonic() - started

    def put_bytes(self, data: bytes, guest: PathArg, *, mode: int = 0o644) -> None:
        """Write ``data`` to the guest file ``guest`` (parents made, replaced atomically)."""
        path = _bytes(guest, "guest path")
        request = self._open(Stream, f"copy in to {show(path)}", wire.PUT,
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
            request = self._open(Stream, f"copy in to {show(path)}", wire.PUT,
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
        request = self._open(Stream, f"copy in to {show(path)}", wire.PUT,
                             {"path": path, "mode": 0o755, "what": wire.TREE})

        def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            return info

        def send() -> None:
            writer: IO[bytes] = DataWriter(request)  # type: ignore[assignment]
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.add(source, arcname=".", filter=as_root)

        self._put_and_wait(request, send)

    def _put_and_wait(self, request: Stream, send: Callable[[], None]) -> None:
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
            self.send(wire.message(wire.END, request.stream))
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
        request = self._open(GetStream, f"copy out of {show(path)}", wire.GET,
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
        request = self._open(GetStream, f"copy out of {show(path)}", wire.GET,
                             {"path": path, "what": wire.TREE})
        reader = DataReader(request)
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
                self.send(wire.message(wire.SHUTDOWN, wire.SESSION))
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


def _bytes(value: PathArg, what: str) -> bytes:
    data = os.fsencode(value)
    if b"\0" in data:
        raise InitkitError(f"{what} {data!r} has a NUL byte, which no exec or path can carry")
    return data


