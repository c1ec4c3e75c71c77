"""The control channel on a console device (cloud-hypervisor's virtio-console: a tty in
the guest): the host waits for the agent's ready line before its hello. The real agent
on a real pseudo-terminal of this host, and a scripted peer for the edge cases."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from agentproc import end_session

from guest import contract, wire
from hostrun.channel import MAX_BEFORE_READY, Channel, ChannelError

AGENT_ON_DEVICE = """
import posix, sys
from guest import port
from guest.system import System
pid = System.start_agent(sys.argv[1], port.main)
raise SystemExit(posix.waitstatus_to_exitcode(posix.waitpid(pid, 0)[1]))
"""


def _bridge(master: int, sock: socket.socket) -> None:
    """Copy between the pty's master and the host's socket until either side ends."""
    try:
        while True:
            ready, _, _ = select.select([master, sock.fileno()], [], [])
            if master in ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: the agent closed the tty
                    return
                if not data:
                    return
                sock.sendall(data)
            if sock.fileno() in ready:
                data = sock.recv(1 << 16)
                if not data:
                    return
                os.write(master, data)
    finally:
        sock.close()


@pytest.fixture
def console_channel() -> Iterator[Channel]:
    """The real agent serving a pty's slave as the guest serves /dev/hvc0, its master
    bridged to a socketpair whose other end is a Channel told to wait for the agent."""
    master, slave = os.openpty()  # the slave starts as a tty does: echo, ICANON, ICRNL
    host, bridge_end = socket.socketpair()
    bridge = threading.Thread(target=_bridge, args=(master, bridge_end), daemon=True)
    bridge.start()
    agent = subprocess.Popen([sys.executable, "-c", AGENT_ON_DEVICE, os.ttyname(slave)],
                             stderr=subprocess.PIPE)
    channel = None
    try:
        channel = Channel(host, hello_timeout=30, ready=contract.CONSOLE_READY)
        yield channel
    finally:
        end_session(channel, host, agent)
        os.close(slave)  # the last slave fd: the master reads EIO, the bridge ends
        bridge.join(10)
        os.close(master)  # only then: the bridge may still be waiting on it


def test_every_byte_crosses_a_real_tty_unchanged(console_channel: Channel) -> None:
    data = bytes(range(256)) * 256 + b"\r\n\x03\x04\x11\x13\x1a\x1c\x7f"
    result = console_channel.run(["cat"], input=data, wait_timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, data, b"")


def test_many_commands_on_a_real_tty(console_channel: Channel) -> None:
    for code in (0, 3, 255):
        result = console_channel.run(["sh", "-c", f"printf 'a\\r\\nb'; exit {code}"],
                                     wait_timeout=60)
        assert (result.returncode, result.stdout) == (code, b"a\r\nb")


# -- a scripted agent: what comes before the ready line --------------------------------
def _scripted(*sends: bytes) -> tuple[socket.socket, threading.Thread]:
    """The host's end of a socketpair whose other end sends ``sends`` one by one, then
    answers the host's hello with an agent's hello."""
    host, agent = socket.socketpair()

    def play() -> None:
        # A host that refuses closes its end while this one still sends or reads: a
        # reset then is the host going, not a failure of the script (nor of the test).
        with agent, contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for data in sends:
                agent.sendall(data)
            reader = wire.FrameReader()
            while (got := reader.next()) is None:
                data = agent.recv(1 << 16)
                if not data:
                    return
                reader.feed(data)
            assert got[0] == wire.HELLO
            agent.sendall(wire.hello())
            agent.recv(1)  # until the host goes

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    return host, thread


@pytest.mark.parametrize("sends", [
    [contract.CONSOLE_READY],
    [b"leftovers of a tty\r\n", contract.CONSOLE_READY],
    # the marker cut across reads, at every place
    *[[b"x" * 100 + contract.CONSOLE_READY[:cut], contract.CONSOLE_READY[cut:]]
      for cut in range(1, len(contract.CONSOLE_READY))],
])
def test_the_hello_waits_for_the_ready_line(sends: list[bytes]) -> None:
    host, thread = _scripted(*sends)
    channel = Channel(host, hello_timeout=10, ready=contract.CONSOLE_READY)
    assert channel.peer.software == wire.SOFTWARE
    channel.close()
    thread.join(10)


def test_too_much_before_the_ready_line_is_refused() -> None:
    host, thread = _scripted(b"\0" * (MAX_BEFORE_READY + 2 * len(contract.CONSOLE_READY)),
                             contract.CONSOLE_READY)
    with pytest.raises(ChannelError, match="before the agent's ready line"):
        Channel(host, hello_timeout=10, ready=contract.CONSOLE_READY)
    host.close()
    thread.join(10)


def test_a_peer_that_closes_before_it_is_ready() -> None:
    host, agent = socket.socketpair()
    agent.sendall(b"no marker here")
    agent.close()
    with pytest.raises(ChannelError, match="before the agent was ready"):
        Channel(host, hello_timeout=10, ready=contract.CONSOLE_READY)
    host.close()
