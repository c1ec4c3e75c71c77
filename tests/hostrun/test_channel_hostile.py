"""A guest that lies to the host: a fake agent (hostile_agent.py, a real process)
answers copies out with escaping tar streams and the protocol with oversized or
unasked-for frames. Each is refused, and nothing is written outside the target."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import served
from tarbuild import end, header, member, snapshot

from hostrun.channel import Channel, ChannelError
from hostrun.untar import UnsafeArchive
from initkit.errors import InitkitError

HOSTILE = [sys.executable, str(Path(__file__).with_name("hostile_agent.py"))]


@pytest.fixture
def liar() -> Iterator[Channel]:
    with served(HOSTILE) as (chan, _proc):
        yield chan


def _escapes(outside: Path) -> dict[str, bytes]:
    return {
        "dotdot": member(b"ok", data=b"fine") + member(b"../escaped", data=b"evil") + end(),
        "absolute": member(os.fsencode(outside / "absolute"), data=b"evil") + end(),
        "symlink-escape": member(b"link", b"2", link=b"../outside") + end(),
        "symlink-absolute": member(b"link", b"2", link=os.fsencode(outside)) + end(),
        "through-symlink": member(b"d/", b"5") + member(b"l", b"2", link=b"d")
        + member(b"l/x", data=b"evil") + end(),
        "device-node": header(b"null", b"3", major=1, minor=3) + end(),
        "fifo": header(b"pipe", b"6") + end(),
        "hardlink-out": member(b"h", b"1", link=os.fsencode(outside / "precious")) + end(),
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink-escape", "symlink-absolute",
                                  "through-symlink", "device-node", "fifo", "hardlink-out"])
def test_escaping_archives_are_refused(case: str, liar: Channel, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    answer = tmp_path / "answer.tar"
    answer.write_bytes(_escapes(outside)[case])
    target = tmp_path / "target"
    before = snapshot(tmp_path, skip=target)
    with pytest.raises(UnsafeArchive, match="refused"):
        liar.get_dir(answer, target)
    assert snapshot(tmp_path, skip=target) == before
    assert not (tmp_path / "escaped").exists() and not (outside / "absolute").exists()
    # The refused request was cancelled; the channel still serves the next one.
    answer.write_bytes(member(b"fine", data=b"ok") + end())
    liar.get_dir(answer, tmp_path / "again")
    assert (tmp_path / "again" / "fine").read_bytes() == b"ok"


def test_an_archive_over_the_limit_is_refused(liar: Channel, tmp_path: Path) -> None:
    answer = tmp_path / "answer.tar"
    answer.write_bytes(member(b"big", data=b"b" * 100_000) + end())
    with pytest.raises(UnsafeArchive, match="larger than the limit"):
        liar.get_dir(answer, tmp_path / "target", max_bytes=50_000)
    assert not (tmp_path / "target" / "big").exists()


def test_endless_data_stops_at_max_bytes(liar: Channel, tmp_path: Path) -> None:
    with pytest.raises(InitkitError, match="more than 3000000 bytes"):
        liar.get_file("!endless", tmp_path / "out", max_bytes=3_000_000)
    assert list(tmp_path.iterdir()) == []  # not even the temporary file
    answer = tmp_path / "answer"
    answer.write_bytes(b"after")
    assert liar.get_bytes(answer) == b"after"


def test_output_past_the_window_fails_the_channel(tmp_path: Path) -> None:
    """The command's output is not read: the guest may send one window, no more."""
    with served(HOSTILE) as (chan, _proc):
        execution = chan.exec(["!over-window"])
        deadline = time.monotonic() + 30
        while chan.failure is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert chan.failure is not None and "its window allows" in chan.failure.reason
        assert execution.high_water <= chan.window
        with pytest.raises(ChannelError, match="window"):
            execution.wait(10)


@pytest.mark.parametrize(("path", "match"), [
    ("!oversized-frame", "over the limit"),
    ("!unknown-stream", "has no request"),
    ("!garbage", "too short|over the limit|kind|stream"),
    ("!wrong-kind", "stdout on stream"),
])
def test_protocol_violations_fail_every_call(path: str, match: str, tmp_path: Path) -> None:
    with served(HOSTILE, describe_failure=lambda: "console tail here") as (chan, _proc):
        with pytest.raises(ChannelError, match=match) as info:
            chan.get_file(path, tmp_path / "out")
        assert "console tail here" in str(info.value)
        with pytest.raises(ChannelError):
            chan.get_bytes("/etc/hostname")
    assert list(tmp_path.iterdir()) == []
