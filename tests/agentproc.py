"""The guest agent as a real process on this host, serving one end of a socketpair.

Importable from the tests (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence

from hostrun.channel import Channel


@contextlib.contextmanager
def served(argv: Sequence[str] | None = None, **options: object) -> Iterator[
        tuple[Channel, subprocess.Popen[bytes]]]:
    """A Channel to an agent started with ``argv`` + the fd it serves (default: this
    Python running ``guest.port``). Shut down and reaped on the way out."""
    ours, theirs = socket.socketpair()
    command = [*(argv or [sys.executable, "-m", "guest.port"]), str(theirs.fileno())]
    proc = subprocess.Popen(command, pass_fds=[theirs.fileno()], stderr=subprocess.PIPE)
    theirs.close()
    channel = None
    try:
        channel = Channel(ours, hello_timeout=30, **options)  # type: ignore[arg-type]
        yield channel, proc
    finally:
        end_session(channel, ours, proc)


def end_session(channel: Channel | None, sock: socket.socket,
                proc: subprocess.Popen[bytes]) -> None:
    """Shut the session down (or close the socket a Channel never took), then reap the
    agent: at once after a shutdown, killed if it lingers."""
    if channel is not None:
        channel.shutdown(timeout=10)
    else:
        sock.close()
    # An agent that shut down ends at once; the peer of a failed channel may never.
    clean = channel is not None and (channel.failure is None
                                     or "shut down" in channel.failure.reason)
    try:
        proc.wait(timeout=20 if clean else 1)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it went between the two
        return False
    return stat[stat.rfind(b")") + 2:][:1] != b"Z"


def argv_printer() -> list[str]:
    """A real program that writes its argv exactly as the kernel gave it."""
    return [sys.executable, "-c",
            "import sys; sys.stdout.buffer.write(open('/proc/self/cmdline', 'rb').read())"]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]

