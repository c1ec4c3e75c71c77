"""One request's stream on the host side of the control channel: what the guest sent
for it, buffered within its window, and the credit granted back as the caller reads;
a command's handle (Execution) and result (ExecResult).

Every buffer here is bounded by the window the host announced: the reader thread
delivers a chunk only if the guest had the credit to send it (more is a protocol
error), and credit goes back only for what the caller has taken.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from guest import wire
from initkit.errors import InitkitError

DEFAULT_MAX_OUTPUT = 1 << 30  # bytes of stdout + stderr that wait() collects
_STREAMS = {wire.STDOUT: "stdout", wire.STDERR: "stderr", wire.DATA: "data"}


class Sender(Protocol):
    """What a stream needs of its channel."""

    window: int  # what this side accepts per request
    peer_window: int  # what the guest accepts per request
    data_limit: int  # the most data one frame may carry

    def send(self, data: bytes) -> None: ...

    def send_quietly(self, data: bytes) -> None: ...


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


class Stream:
    """One stream's state on the host, guarded by its condition."""

    kinds: frozenset[int] = frozenset()  # the data kinds the guest may send on it
    finals = frozenset((wire.END, wire.ERROR))  # the kinds that end it

    def __init__(self, channel: Sender, stream: int, what: str) -> None:
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
            self.channel.send_quietly(wire.message(wire.WINDOW, self.stream,
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
            self.channel.send(wire.frame(kind, self.stream, bytes(view[:size])))
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
        self.channel.send_quietly(wire.message(wire.KILL, self.stream,
                                                signal=signal.SIGKILL))


class ExecStream(Stream):
    kinds = frozenset((wire.STDOUT, wire.STDERR))
    finals = frozenset((wire.EXIT, wire.ERROR))


class GetStream(Stream):
    kinds = frozenset((wire.DATA,))


class PingStream(Stream):
    finals = frozenset((wire.PING,))


class Execution:
    """A command running in the guest: stream its output, feed its stdin, wait for it."""

    def __init__(self, request: Stream, argv: tuple[bytes, ...], started: float) -> None:
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
            self._request.channel.send_quietly(wire.message(wire.STDIN_EOF, self.stream))

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Send ``signum`` to the command's process group."""
        if not 0 < signum < 65:
            raise ValueError(f"signal {signum} is not 1..64")
        if not self._request.done:
            self._request.channel.send(wire.message(wire.KILL, self.stream, signal=signum))

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
                raise InitkitError(f"{show_argv(self.argv)} wrote more than {max_output} "
                                   "bytes of output; it was killed (stream it with "
                                   "iteration, or raise max_output)")
        kind, fields = self._request.wait_final()
        if kind == wire.ERROR:
            raise GuestError(f"the guest refused to run {show_argv(self.argv)}: "
                             f"{fields['message']}")
        self._result = ExecResult(
            argv=self.argv, returncode=fields["code"], stdout=bytes(self._stdout),
            stderr=bytes(self._stderr), duration=time.monotonic() - self._started,
            timed_out=fields["timed_out"], signal=fields["signal"] or None,
            background=tuple(fields["background"]),
            background_killed=fields["background_killed"],
            error=fields["error"] or None, guest_duration=fields["elapsed_us"] / 1e6)
        return self._result


class DataReader:
    """A get's DATA frames as read(n), the form untar.extract reads."""

    def __init__(self, request: Stream) -> None:
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


class DataWriter:
    """A put's DATA frames as a binary file's write(), the form tarfile writes to."""

    def __init__(self, request: Stream) -> None:
        self._request = request

    def write(self, data: bytes) -> int:
        self._request.send_data(wire.DATA, bytes(data))
        return len(data)


def feed(execution: Execution, data: bytes) -> None:
    """A thread's work: stdin bigger than one request frame, then end of file."""
    try:
        execution.write(data)
        execution.close_stdin()
    except (BrokenPipeError, InitkitError):
        pass  # the command ended first, or the channel failed: wait() tells


def show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


def show_argv(argv: Sequence[bytes]) -> str:
    shown = " ".join(show(arg) for arg in argv[:4])
    return f"[{shown}{' ...' if len(argv) > 4 else ''}]"
