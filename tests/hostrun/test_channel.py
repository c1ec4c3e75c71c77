"""The control channel for real: the guest agent as a process on this host, over a
socketpair, driven by hostrun.channel, running real programs."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentproc import alive, argv_printer, python, served
from realparts import need

from guest import wire
from hostrun.channel import Channel, ChannelError, GuestError
from hostrun.streams import ExecStream
from initkit.errors import InitkitError


@pytest.fixture
def channel() -> Iterator[Channel]:
    with served() as (chan, _proc):
        yield chan


# -- argv, stdin, stdout, stderr ------------------------------------------------------
ARGS = [b"a b", b'"double" \'single\'', b"line one\nline two\n", b"\xff\xfe\x80 not utf-8",
        "ünïcødé".encode(), b"", b"$HOME `x` \\back\\slash", b"--", b"-c", b"x" * 100_000]


def test_argv_arrives_exactly(channel: Channel) -> None:
    printer = argv_printer()
    result = channel.run([*printer, *ARGS], wait_timeout=60)
    assert result.returncode == 0, result.stderr
    expected = b"".join(arg + b"\0" for arg in [p.encode() for p in printer] + ARGS)
    assert result.stdout == expected
    assert result.stderr == b""


def test_argv_through_busybox_sh(channel: Channel) -> None:
    """What a shell receives as "$@" is each argument unchanged."""
    busybox = need("busybox")
    result = channel.run([busybox, "sh", "-c", 'for a in "$@"; do printf "%s|" "$a"; done',
                          "sh", *ARGS[:-1]], wait_timeout=60)
    assert result.stdout == b"".join(arg + b"|" for arg in ARGS[:-1])


def test_stdin_bytes_arrive_exactly(channel: Channel) -> None:
    data = bytes(range(256)) * 1000
    result = channel.run(["cat"], input=data, wait_timeout=60)
    assert result.stdout == data


def test_stdin_larger_than_a_frame_is_streamed(channel: Channel) -> None:
    data = os.urandom(5 << 20)  # over the window: fed by a thread, in credit
    result = channel.run(python("import sys, hashlib; print(hashlib.sha256("
                                "sys.stdin.buffer.read()).hexdigest())"),
                         input=data, wait_timeout=120)
    assert result.stdout.decode().strip() == hashlib.sha256(data).hexdigest()


def test_stdin_streamed_by_the_caller(channel: Channel) -> None:
    execution = channel.exec(["cat"], stream_stdin=True)
    execution.write(b"first ")
    execution.write(b"second")
    execution.close_stdin()
    assert execution.wait(60).stdout == b"first second"


def test_no_stdin_is_dev_null(channel: Channel) -> None:
    result = channel.run(["cat"], wait_timeout=60)
    assert (result.returncode, result.stdout) == (0, b"")


def test_stdout_and_stderr_exact_and_apart(channel: Channel) -> None:
    code = ("import sys\n"
            "for i in range(200):\n"
            "    sys.stdout.buffer.write(b'out%d\\xff\\n' % i); sys.stdout.flush()\n"
            "    sys.stderr.buffer.write(b'err%d\\x00\\n' % i); sys.stderr.flush()\n")
    result = channel.run(python(code), wait_timeout=60)
    assert result.stdout == b"".join(b"out%d\xff\n" % i for i in range(200))
    assert result.stderr == b"".join(b"err%d\x00\n" % i for i in range(200))


def test_output_streams_while_the_command_runs(channel: Channel) -> None:
    """The first line arrives before the command ends (it waits for a file we make)."""
    flag = f"/tmp/initkit-test-flag-{os.getpid()}-{threading.get_ident()}"
    execution = channel.exec(python(
        "import os, time, sys\nprint('started', flush=True)\n"
        f"while not os.path.exists({flag!r}): time.sleep(0.01)\nprint('done')"))
    chunks = iter(execution)
    assert next(chunks) == ("stdout", b"started\n")
    Path(flag).touch()
    try:
        assert b"".join(c for _, c in chunks) == b"done\n"
        assert execution.wait(60).returncode == 0
    finally:
        Path(flag).unlink()


def test_64_mib_of_stdout_stream_with_bounded_buffering(channel: Channel) -> None:
    size = 64 << 20
    code = ("import sys\nblock = bytes(range(256)) * 4096\n"
            f"for _ in range({size} // len(block)): sys.stdout.buffer.write(block)\n")
    execution = channel.exec(python(code))
    digest = hashlib.sha256()
    total = 0
    for stream, chunk in execution:
        assert stream == "stdout"
        digest.update(chunk)
        total += len(chunk)
    result = execution.wait(60)
    assert result.returncode == 0 and total == size
    assert digest.hexdigest() == hashlib.sha256(bytes(range(256)) * 4096 * 64).hexdigest()
    assert 0 < execution.high_water <= channel.window


def test_a_consumer_that_does_not_read_blocks_nobody_else(channel: Channel) -> None:
    flood = channel.exec(python("import sys\nsys.stdout.buffer.write(b'x' * (20 << 20))"))
    for _ in range(3):  # while the flood waits for its reader
        assert channel.run(["echo", "still served"], wait_timeout=60).stdout == \
            b"still served\n"
    assert flood.high_water <= channel.window
    assert len(flood.wait(60).stdout) == 20 << 20


def test_four_commands_at_once(channel: Channel, tmp_path: Path) -> None:
    """Each command waits until all four have started: served one at a time, they
    could never finish."""
    code = ("import os, sys, time\nd, me = sys.argv[1], sys.argv[2]\n"
            "open(os.path.join(d, me), 'w').close()\n"
            "deadline = time.monotonic() + 30\n"
            "while len(os.listdir(d)) < 4:\n"
            "    if time.monotonic() > deadline: sys.exit('alone')\n"
            "    time.sleep(0.01)\nprint(me)\n")
    results: dict[int, object] = {}

    def one(n: int) -> None:
        results[n] = channel.run([*python(code), str(tmp_path), str(n)], wait_timeout=60)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    for n in range(4):
        result = results[n]
        assert result.returncode == 0, result  # type: ignore[attr-defined]
        assert result.stdout == f"{n}\n".encode()  # type: ignore[attr-defined]


# -- exits, background processes, timeouts, signals --------------------------------------
def test_exit_codes_and_signals(channel: Channel) -> None:
    assert channel.run(["sh", "-c", "exit 42"], wait_timeout=60).returncode == 42
    killed = channel.run(["sh", "-c", "kill -TERM $$"], wait_timeout=60)
    assert (killed.returncode, killed.signal) == (128 + signal.SIGTERM, signal.SIGTERM)


def test_a_command_leaving_sleep_in_the_background_returns_and_it_is_killed(
        channel: Channel) -> None:
    result = channel.run(["sh", "-c", "sleep 1000 & echo $!"], wait_timeout=30)
    pid = int(result.stdout)
    assert result.returncode == 0
    assert result.background == (pid,) and result.background_killed
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid)


def test_keep_background_leaves_it_running(channel: Channel) -> None:
    result = channel.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"],
                         keep_background=True, wait_timeout=30)
    pid = int(result.stdout)
    try:
        assert result.background == (pid,) and not result.background_killed
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_a_timeout_kills_the_group_and_the_next_command_runs(channel: Channel) -> None:
    result = channel.run(["sh", "-c", "sleep 1000 & echo $!; wait"], timeout=0.5,
                         wait_timeout=30)
    assert result.timed_out and result.returncode == 128 + signal.SIGKILL
    pid = int(result.stdout)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(pid)  # the background sleep went with its group
    after = channel.run(["echo", "alive"], wait_timeout=30)
    assert (after.returncode, after.stdout, after.timed_out) == (0, b"alive\n", False)


def test_kill_sends_a_signal_to_the_command(channel: Channel) -> None:
    execution = channel.exec(python("import time\nprint('up', flush=True)\ntime.sleep(1000)"))
    assert next(iter(execution)) == ("stdout", b"up\n")
    execution.kill(signal.SIGTERM)
    assert execution.wait(30).returncode == 128 + signal.SIGTERM
    with pytest.raises(ValueError):
        execution.kill(0)


def test_wait_collects_at_most_max_output(channel: Channel) -> None:
    execution = channel.exec(["cat", "/dev/zero"])
    with pytest.raises(InitkitError, match="more than 1000000 bytes"):
        execution.wait(60, max_output=1_000_000)
    assert channel.run(["true"], wait_timeout=30).returncode == 0


# -- how commands are started ------------------------------------------------------------
def test_env_cwd_and_path_search(channel: Channel, tmp_path: Path) -> None:
    result = channel.run(["sh", "-c", 'printf "%s|%s|%s|%s" "$HOME" "$TERM" "$X" "$(pwd)"'],
                         env={"X": b"\xff y"}, cwd=tmp_path, wait_timeout=30)
    assert result.stdout == b"/|dumb|\xff y|" + os.fsencode(tmp_path)
    alone = channel.run(["/usr/bin/env"], env={"ONLY": "1"}, replace_env=True,
                        wait_timeout=30)
    assert alone.stdout == b"ONLY=1\n"


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["no-such-program-anywhere"], 127, "not found in PATH"),
    (["/no/such/file"], 127, "ENOENT"),
    (["{tmp}/not-executable"], 126, "EACCES"),
    (["{tmp}/not-a-program"], 126, "ENOEXEC"),
    (["{tmp}"], 126, "EACCES"),
])
def test_programs_that_cannot_start(channel: Channel, tmp_path: Path, argv: list[str],
                                    code: int, message: str) -> None:
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    (tmp_path / "not-executable").chmod(0o644)
    (tmp_path / "not-a-program").write_bytes(b"\x7fELF garbage")
    (tmp_path / "not-a-program").chmod(0o755)
    result = channel.run([arg.format(tmp=tmp_path) for arg in argv], wait_timeout=30)
    assert result.returncode == code and result.error is not None and message in result.error


def test_a_missing_interpreter_is_named(channel: Channel, tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    result = channel.run([script], wait_timeout=30)
    assert result.returncode == 127 and "interpreter is missing" in (result.error or "")


def test_a_bad_cwd_is_125(channel: Channel, tmp_path: Path) -> None:
    result = channel.run(["true"], cwd=tmp_path / "missing", wait_timeout=30)
    assert result.returncode == 125 and "cannot change to directory" in (result.error or "")


def test_requests_refused_on_the_host(channel: Channel) -> None:
    with pytest.raises(InitkitError, match="NUL"):
        channel.exec(["echo", b"a\0b"])
    with pytest.raises(InitkitError, match="empty"):
        channel.exec([])
    with pytest.raises(InitkitError, match="'='"):
        channel.exec(["true"], env={"A=B": "c"})
    with pytest.raises(InitkitError, match="over the"):
        channel.exec(["echo", b"y" * (5 << 20)])
    assert channel.run(["true"], wait_timeout=30).returncode == 0


def test_the_agent_refuses_bad_requests_and_keeps_serving(channel: Channel) -> None:
    """What the client never sends, sent anyway: each answered by an error."""
    bad: list[dict[str, Any]] = [
        {"argv": []},
        {"argv": [b"echo", b"a\0b"]},
        {"argv": [b"true"], "env": [(b"A=B", b"c")]},
        {"argv": [b"true"], "cwd": b"/\0"},
        {"argv": [b"true"], "stdin": 7},
    ]
    for fields in bad:
        request = channel._open(ExecStream, "raw", wire.EXEC, fields)
        kind, answer = request.wait_final(30)
        assert kind == wire.ERROR and answer["message"]
    assert channel.run(["echo", "ok"], wait_timeout=30).stdout == b"ok\n"


# -- files ---------------------------------------------------------------------------------
def test_file_round_trip_keeps_bytes_and_mode(channel: Channel, tmp_path: Path) -> None:
    source = tmp_path / "source"
    data = os.urandom(3 << 20)
    source.write_bytes(data)
    source.chmod(0o751)
    guest = tmp_path / "guest" / "deep" / "copy"
    channel.put_file(source, guest)
    assert guest.read_bytes() == data and stat.S_IMODE(guest.stat().st_mode) == 0o751
    back = tmp_path / "back"
    channel.get_file(guest, back)
    assert back.read_bytes() == data and stat.S_IMODE(back.stat().st_mode) == 0o751
    channel.put_bytes(b"", tmp_path / "empty", mode=0o600)
    assert channel.get_bytes(tmp_path / "empty") == b""
    assert not [p for p in tmp_path.rglob("*initkit*")]  # no temporary files left


def _tree(root: Path) -> dict[str, tuple[str, object, int]]:
    found: dict[str, tuple[str, object, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = os.fsdecode(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            found[rel] = ("link", os.readlink(path), 0)
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", None, stat.S_IMODE(st.st_mode))
        else:
            found[rel] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode))
    return found


def test_directory_round_trip(channel: Channel, tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "sub" / "deeper").mkdir(parents=True)
    (source / "empty").mkdir()
    (source / "sub" / "data.bin").write_bytes(os.urandom(200_000))
    (source / "sub" / "deeper" / "script").write_text("#!/bin/sh\n")
    (source / "sub" / "deeper" / "script").chmod(0o755)
    (source / os.fsdecode(b"name \xff with\nnewline")).write_bytes(b"odd name")
    (source / ("long-" + "n" * 200)).write_bytes(b"pax path")
    (source / "link").symlink_to("sub/data.bin")
    (source / "sub" / "up").symlink_to("../empty")
    os.link(source / "sub" / "data.bin", source / "hard")
    (source / "sub").chmod(0o750)
    guest = tmp_path / "in-guest"
    channel.put_dir(source, guest)
    assert _tree(guest) == _tree(source)
    back = tmp_path / "back"
    unpacked = channel.get_dir(guest, back)
    assert _tree(back) == _tree(source)
    assert os.stat(back / "hard").st_ino == os.stat(back / "sub" / "data.bin").st_ino
    assert unpacked.entries == len(_tree(source)) + 1  # and "." itself


def test_transfer_errors_leave_the_channel_usable(channel: Channel, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(GuestError, match="ENOENT"):
        channel.get_bytes(tmp_path / "missing")
    with pytest.raises(GuestError, match="is a directory"):
        channel.get_bytes(tmp_path)
    with pytest.raises(GuestError, match="ENOTDIR"):
        channel.put_bytes(b"x", tmp_path / "file" / "below")
    with pytest.raises(GuestError, match="Not a directory"):
        channel.get_dir(tmp_path / "file", tmp_path / "out")
    with pytest.raises(GuestError, match="No such file"):
        channel.get_dir(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "big").write_bytes(b"b" * 100)
    with pytest.raises(InitkitError, match="more than 10 bytes"):
        channel.get_bytes(tmp_path / "big", max_bytes=10)
    assert channel.run(["true"], wait_timeout=30).returncode == 0


# -- the channel's own failures -----------------------------------------------------------
def test_an_agent_that_dies_fails_every_pending_call_with_the_detail() -> None:
    with served(describe_failure=lambda: "console: the last lines") as (chan, proc):
        running = [chan.exec(["sh", "-c", "echo $$; exec sleep 1000"]) for _ in range(3)]
        # Started: each holds whatever it inherited. Nobody kills them once the agent
        # is gone (in a VM, PID 1 ends everything before it powers off).
        orphans = [int(next(iter(execution))[1]) for execution in running]
        try:
            proc.kill()
            for execution in running:
                with pytest.raises(ChannelError, match="closed the control channel") as info:
                    execution.wait(30)
                assert "console: the last lines" in str(info.value)
                assert info.value.detail == "console: the last lines"
            with pytest.raises(ChannelError):
                chan.exec(["true"])
        finally:
            for pid in orphans:
                os.kill(pid, signal.SIGKILL)


def test_shutdown_ends_the_agent_and_its_commands(tmp_path: Path) -> None:
    with served() as (chan, proc):
        execution = chan.exec(["sh", "-c", "echo $$; exec sleep 1000"])
        pid = int(next(iter(execution))[1])
        chan.shutdown()
        assert proc.wait(30) == 0
        assert not alive(pid)
        with pytest.raises(ChannelError, match=r"shut down|closed"):
            execution.wait(5)


def test_ping_round_trips(channel: Channel) -> None:
    assert channel.ping(b"payload \xff") > 0


def test_commands_do_not_inherit_the_channel(channel: Channel) -> None:
    """Else a command outliving the agent would hold the channel open."""
    result = channel.run(["sh", "-c", "ls -l /proc/$$/fd"], wait_timeout=30)
    assert b"socket:" not in result.stdout, result.stdout
