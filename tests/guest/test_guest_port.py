"""guest.port: finding the control channel's port and waiting for its host."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from guest import port


def _announce_later(sysfs: Path) -> None:
    """What the device does: the port's directory first, its name a little later."""
    time.sleep(0.05)
    (sysfs / "vport0p1").mkdir(parents=True)
    (sysfs / "vport0p2").mkdir()
    (sysfs / "vport0p1" / "name").write_text("org.other.port\n")
    time.sleep(0.05)
    (sysfs / "vport0p2" / "name").write_text(port.PORT_NAME + "\n")


def test_find_port_waits_for_the_named_port(tmp_path: Path) -> None:
    sysfs = tmp_path / "virtio-ports"
    announcer = threading.Thread(target=_announce_later, args=(sysfs,))
    announcer.start()
    try:
        assert port.find_port(sysfs=str(sysfs), dev="/dev", timeout=30) == "/dev/vport0p2"
    finally:
        announcer.join()


def test_find_port_gives_up(tmp_path: Path) -> None:
    (tmp_path / "vport0p1").mkdir()
    (tmp_path / "vport0p1" / "name").write_text("org.other.port\n")
    assert port.find_port(sysfs=str(tmp_path), timeout=0.05) is None
    assert port.find_port(sysfs=str(tmp_path / "missing"), timeout=0.05) is None


def test_wait_for_host_sees_a_connected_peer_and_a_hangup() -> None:
    ours, theirs = socket.socketpair()
    try:
        assert port.wait_for_host(ours.fileno(), timeout=5)
        theirs.close()
        assert not port.wait_for_host(ours.fileno(), timeout=0.1, interval=0.01)
    finally:
        ours.close()


def test_a_console_device_is_its_node_not_a_port_name(tmp_path: Path) -> None:
    """initkit.channel=/dev/hvc0 (cloud-hypervisor's console) names the node itself:
    found when it exists, None after the wait when it does not."""
    from guest.system import System

    assert System.find_port("/dev/null", 0.1) == "/dev/null"
    assert System.find_port(f"/dev/{tmp_path.name}-no-such-console", 0.05) is None
