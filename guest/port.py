"""The control channel's virtio-serial port in the guest: finding it, waiting for the
host, serving host after host on it.

What QEMU 7.2 microvm with Debian's 6.1 kernel does (measured, docs/guest.md): the port
is announced by the device after virtio_console has probed, so its directory under
/sys/class/virtio-ports and then its ``name`` appear a few ms to tens of ms after the
module is loaded; devtmpfs makes /dev/vportNpM (there is no udev for the
/dev/virtio-ports/NAME links). While no host is connected, poll() says POLLHUP (with
POLLIN), read() returns end of file and write() would block: nothing is buffered, so
a new host never reads what was written for an old one. A host that connects clears
POLLHUP without any other event, hence the polling in wait_for_host.
"""

from __future__ import annotations

import select
import time

from guest.agent import SHUTDOWN, Agent
from guest.contract import CHANNEL_PORT, VIRTIO_PORTS
from guest.osfuncs import find_port as find_port  # this module's interface too
from guest.system import System

SYSFS = VIRTIO_PORTS
PORT_NAME = CHANNEL_PORT  # the name hostrun gives the port (virtserialport name=)
HOST_POLL_SECONDS = 0.02


def wait_for_host(fd: int, *, timeout: float | None = None,
                  interval: float = HOST_POLL_SECONDS) -> bool:
    """Block until a host is connected to the port ``fd`` (POLLHUP gone): True, or
    False after ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        events = poller.poll(0)
        if not events or not events[0][1] & select.POLLHUP:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def serve_port(fd: int, *, reconnect: bool = True) -> str:
    """Serve the hosts that connect to port ``fd`` one after the other, until one asks
    to shut down; with ``reconnect`` False, only the first. Returns why it stopped."""
    while True:
        wait_for_host(fd)
        reason = Agent(fd).serve()
        if reason == SHUTDOWN or not reconnect:
            return reason


def main(fd: int) -> int:
    """The agent as a process of its own on ``fd`` (a port, or a socket in tests), a
    child subreaper so that what commands leave behind comes back to it: 0 after a
    shutdown, 1 when the host went away."""
    try:
        System().become_subreaper()
    except OSError as exc:
        import sys

        sys.stderr.write(f"initkit agent: not a child subreaper ({exc}); what commands "
                         "leave behind goes to PID 1\n")
    return 0 if serve_port(fd, reconnect=False) == SHUTDOWN else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(int(sys.argv[1])))
