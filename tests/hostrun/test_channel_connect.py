"""Channel.connect against a VMM's socket that is bound a moment before it listens
(QEMU's `server=on` chardev): refused connections are tried again while the caller says
the VMM is still there, and only then."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from guest import wire
from hostrun.channel import Channel, ChannelError


def _listen_later(path: Path, delay: float, stop: threading.Event) -> threading.Thread:
    """Bind ``path`` now, listen after ``delay`` seconds (unless ``stop`` is set by
    then), then greet one host as an agent does."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))

    def serve() -> None:
        with server:
            if stop.wait(delay):
                return
            server.listen(1)
            conn, _ = server.accept()
            with conn:
                reader = wire.FrameReader()
                while reader.next() is None:
                    data = conn.recv(1 << 16)
                    if not data:
                        return
                    reader.feed(data)
                conn.sendall(wire.hello())
                conn.recv(1)  # until the host goes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_socket_bound_but_not_yet_listening_is_tried_again(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    server = _listen_later(path, 0.3, threading.Event())
    asked = []

    def listening() -> bool:
        asked.append(time.monotonic())
        return True

    channel = Channel.connect(path, timeout=10, listening=listening)
    assert channel.peer.software == wire.SOFTWARE
    assert len(asked) >= 5  # it was refused for a while, and asked each time
    channel.close()
    server.join(10)


@pytest.mark.parametrize("listening", [None, lambda: False])
def test_without_a_starting_server_a_refusal_is_final(tmp_path: Path, listening: object
                                                      ) -> None:
    path = tmp_path / "ctl.sock"
    stop = threading.Event()
    server = _listen_later(path, 3, stop)
    started = time.monotonic()
    with pytest.raises(ChannelError, match=r"cannot connect to the control channel .*refused"):
        Channel.connect(path, timeout=10, listening=listening)  # type: ignore[arg-type]
    assert time.monotonic() - started < 1
    stop.set()
    server.join(10)
