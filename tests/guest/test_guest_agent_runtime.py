"""The agent on the packed runtime, without a VM: the unpacked initrd's own interpreter
and .pyc files, chrooted, in a new PID and mount namespace with its own /proc, serving a
socketpair. A module the import follower missed (one the agent or a transfer worker
imports lazily) fails here as an ImportError, not first in a VM."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import served
from realparts import missing_part, unpack_with_cpio

from hostrun.channel import Channel
from initbuilder.cpio import write_initrd
from initbuilder.image import Image
from initbuilder.runtime import PREFIX, add_runtime
from initbuilder.sources import add_busybox, add_skeleton

AGENT_SCRIPT = b"""import sys
from guest.port import main
raise SystemExit(main(int(sys.argv[1])))
"""
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        missing_part("needs root for unshare and chroot")
    for tool in ("unshare", "chroot", "cpio", "busybox"):
        if shutil.which(tool) is None:
            missing_part(f"{tool} is not installed")
    work = tmp_path_factory.mktemp("agent-runtime")
    image = Image()
    add_skeleton(image)
    add_busybox(image, Path(shutil.which("busybox") or "busybox"))
    add_runtime(image)
    image.add_file("agent.py", data=AGENT_SCRIPT, mode=0o644)
    write_initrd(image, work / "initrd.cpio", compression="none")
    return unpack_with_cpio(work / "initrd.cpio", work / "root")


@pytest.fixture
def channel(root: Path) -> Iterator[Channel]:
    argv = ["unshare", "--pid", "--fork", "--mount", f"--mount-proc={root}/proc",
            "chroot", str(root), f"{PREFIX}/bin/python{VERSION}", "-IS", "/agent.py"]
    with served(argv) as (chan, _proc):
        yield chan


def test_commands_run_on_the_packed_runtime(channel: Channel) -> None:
    result = channel.run(["/bin/busybox", "sh", "-c", 'printf "%s|" "$@"; echo >&2 err',
                          "sh", "a b", b"\xff", ""], wait_timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"a b|\xff||", b"err\n")
    left = channel.run(["sh", "-c", "sleep 1000 & echo $!"], wait_timeout=60)
    assert left.background == (int(left.stdout),) and left.background_killed
    late = channel.run(["sleep", "100"], timeout=0.3, wait_timeout=60)
    assert late.timed_out


def test_transfers_on_the_packed_runtime(channel: Channel, root: Path,
                                         tmp_path: Path) -> None:
    """Directory transfers run tarfile in a worker: packed with what it imports."""
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_bytes(b"content")
    (source / "link").symlink_to("sub/file")
    channel.put_dir(source, "/tmp/copied")
    assert (root / "tmp" / "copied" / "sub" / "file").read_bytes() == b"content"
    channel.get_dir("/tmp/copied", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "file").read_bytes() == b"content"
    assert os.readlink(tmp_path / "back" / "link") == "sub/file"
    channel.put_bytes(b"one file", "/tmp/one", mode=0o640)
    assert channel.get_bytes("/tmp/one") == b"one file"
