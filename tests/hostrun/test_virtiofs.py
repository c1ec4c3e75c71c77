"""Daemon supervision: a real virtiofsd, and fake daemons that die, hang or fork."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hostrun.virtiofs import (
    CustomDaemon,
    CVirtiofsd,
    DaemonFailed,
    RustVirtiofsd,
    TvixStore,
    _is_listening,
    choose_daemon,
    classify_virtiofsd,
)
from initkit.errors import InitkitError

# A stand-in daemon: optionally records its environment, forks a child, then listens.
FAKE_DAEMON = textwrap.dedent("""\
    import os, socket, sys, time
    sock_path = sys.argv[1]
    if os.environ.get("FAKE_ENV_OUT"):
        with open(os.environ["FAKE_ENV_OUT"], "w") as f:
            f.write(os.environ.get("BLOB_SERVICE_ADDR", "") + "\\n")
    if os.environ.get("FAKE_FORK"):
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
    print("fake daemon starting", flush=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock_path)
    s.listen(1)
    time.sleep(600)
""")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "w"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    (path / "abc-docs").mkdir(parents=True)
    return path


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Path:
    script = tmp_path / "fake_daemon.py"
    script.write_text(FAKE_DAEMON)
    return script


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_real_virtiofsd_serves_on_an_inherited_socket(real_virtiofsd: str, root_only: None,
                                                      store: Path, workdir: Path) -> None:
    daemon = choose_daemon(real_virtiofsd, store)
    assert isinstance(daemon, CVirtiofsd | RustVirtiofsd)
    assert daemon.passes_fd()
    daemon.start(workdir)
    try:
        daemon.wait_ready(timeout=5)
        assert daemon.alive()
        assert daemon.socket_path is not None and _is_listening(daemon.socket_path)
        # The VMM can connect at once: the kernel queues it until the daemon accepts.
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(daemon.socket_path))
        client.close()
    finally:
        daemon.stop()
    assert not daemon.alive()
    assert not (workdir / "virtiofs.sock").exists()


def test_real_virtiofsd_sees_the_store_read_only(real_virtiofsd: str, root_only: None,
                                                 store: Path, workdir: Path) -> None:
    daemon = choose_daemon(real_virtiofsd, store)
    daemon.start(workdir)
    try:
        daemon.wait_ready(timeout=5)
        assert daemon.process is not None
        if isinstance(daemon, RustVirtiofsd) and "--readonly" in daemon.help_text:
            assert "--readonly" in daemon.argv(workdir / "s", 3)
        else:
            mounts = Path(f"/proc/{daemon.process.pid}/mountinfo").read_text().splitlines()
            entry = [m for m in mounts if m.split()[4] == str(store)]
            assert entry and "ro" in entry[0].split()[5].split(","), entry
    finally:
        daemon.stop()


def test_real_c_virtiofsd_that_fails_at_start_reports_its_log(root_only: None, workdir: Path,
                                                               tmp_path: Path) -> None:
    binary = "/usr/lib/qemu/virtiofsd"
    if not os.access(binary, os.X_OK):
        pytest.skip("QEMU's C virtiofsd is not installed")
    daemon = CVirtiofsd(tmp_path / "no-such-store", binary)
    daemon.start(workdir)
    assert daemon.process is not None
    daemon.process.wait(timeout=10)
    with pytest.raises(DaemonFailed) as info:
        daemon.wait_ready(timeout=5)
    message = str(info.value)
    assert "exited with status" in message
    assert "no-such-store" in message  # its own complaint, from its log
    daemon.stop()


def test_daemon_that_exits_at_start(workdir: Path, store: Path) -> None:
    daemon = CustomDaemon(store, "sh -c 'echo cannot open {store} >&2; exit 3' {socket}")
    daemon.start(workdir)
    with pytest.raises(DaemonFailed) as info:
        daemon.wait_ready(timeout=10)
    assert "exited with status 3" in str(info.value)
    assert f"cannot open {store}" in str(info.value)
    daemon.stop()


def test_daemon_that_never_listens_times_out(workdir: Path, store: Path) -> None:
    # A plain file at the socket path is not a listening socket.
    daemon = CustomDaemon(store, "sh -c 'touch {socket}; exec sleep 60'")
    daemon.start(workdir)
    started = time.monotonic()
    with pytest.raises(DaemonFailed) as info:
        daemon.wait_ready(timeout=0.5)
    assert time.monotonic() - started < 5
    assert "did not create its socket" in str(info.value)
    assert daemon.alive()
    daemon.stop()
    assert not daemon.alive()


def test_path_daemon_ready_once_listening(workdir: Path, store: Path,
                                          fake_daemon: Path) -> None:
    daemon = CustomDaemon(store, f"{sys.executable} {fake_daemon} {{socket}}")
    assert not daemon.passes_fd()
    daemon.start(workdir)
    try:
        daemon.wait_ready(timeout=10)
        assert daemon.socket_path is not None and _is_listening(daemon.socket_path)
    finally:
        daemon.stop()
    assert "fake daemon starting" in daemon.log_text()


def test_stop_ends_what_the_daemon_forked(workdir: Path, store: Path, fake_daemon: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_FORK", "1")
    daemon = CustomDaemon(store, f"{sys.executable} {fake_daemon} {{socket}}")
    daemon.start(workdir)
    daemon.wait_ready(timeout=10)
    assert daemon.process is not None
    group = daemon.process.pid
    members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == group]
    assert len(members) == 2
    daemon.stop()
    time.sleep(0.1)
    assert not any(pid_alive(p) for p in members)


def _pgid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().split(")")[-1].split()[2])
    except (OSError, ValueError):
        return None


def test_daemon_dies_with_hostrun(tmp_path: Path, store: Path, fake_daemon: Path) -> None:
    """Even SIGKILL of hostrun leaves no daemon behind (PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "pid"
    program = textwrap.dedent(f"""\
        import sys, time
        from pathlib import Path
        from hostrun.virtiofs import CustomDaemon
        w = Path({str(tmp_path / "w2")!r}); w.mkdir()
        d = CustomDaemon(Path({str(store)!r}), {sys.executable!r} + " {fake_daemon} {{socket}}")
        d.start(w); d.wait_ready(10)
        Path({str(pidfile)!r}).write_text(str(d.process.pid))
        time.sleep(600)
    """)
    runner = subprocess.Popen([sys.executable, "-c", program])
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon_pid = int(pidfile.read_text())
        assert pid_alive(daemon_pid)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    deadline = time.monotonic() + 5
    while pid_alive(daemon_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(daemon_pid)


def test_tvix_store_runs_as_the_seed_does(tmp_path: Path, workdir: Path, store: Path,
                                          fake_daemon: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """tvix-store cannot run here: a stand-in checks the argv and the environment."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    argv_out = tmp_path / "argv"
    fake = bindir / "tvix-store"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {argv_out}\nshift 2\n"
                    f"exec {sys.executable} {fake_daemon} \"$1\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("BLOB_SERVICE_ADDR", "sled:///tmp/blobs.sled")
    monkeypatch.setenv("FAKE_ENV_OUT", str(tmp_path / "env"))
    daemon = choose_daemon("tvix-store", store)
    assert isinstance(daemon, TvixStore) and not daemon.uses_store
    daemon.start(workdir)
    try:
        daemon.wait_ready(timeout=10)
    finally:
        daemon.stop()
    assert argv_out.read_text().split() == ["virtiofs", "-l", str(workdir / "virtiofs.sock")]
    assert (tmp_path / "env").read_text().strip() == "sled:///tmp/blobs.sled"


def test_custom_daemon_with_fd_gets_a_listening_socket(workdir: Path, store: Path) -> None:
    daemon = CustomDaemon(store, "sh -c 'ls -l /proc/$$/fd/{fd}; exec sleep 60'")
    assert daemon.passes_fd()
    daemon.start(workdir)
    try:
        daemon.wait_ready(timeout=5)
        time.sleep(0.2)
        assert "socket:" in daemon.log_text()
    finally:
        daemon.stop()


@pytest.mark.parametrize("template", ["virtiofsd --shared-dir {store}", "", "x {nope} {socket}"])
def test_custom_daemon_rejects_bad_templates(template: str, store: Path,
                                             workdir: Path) -> None:
    with pytest.raises(InitkitError):
        CustomDaemon(store, template).argv(workdir / "s", None)


def test_classify_by_help_text(tmp_path: Path, store: Path) -> None:
    rust = tmp_path / "virtiofsd"
    rust.write_text("#!/bin/sh\necho 'Usage: virtiofsd [OPTIONS] --shared-dir <SHARED_DIR>'\n"
                    "echo '      --fd <FD>'\necho '      --readonly'\n"
                    "echo '      --sandbox <SANDBOX>'\n")
    rust.chmod(0o755)
    daemon = classify_virtiofsd(str(rust), store)
    assert isinstance(daemon, RustVirtiofsd)
    argv = daemon.argv(tmp_path / "s", 5)
    assert argv[:4] == [str(rust), "--fd=5", "--shared-dir", str(store)]
    assert "--readonly" in argv
    unknown = tmp_path / "other"
    unknown.write_text("#!/bin/sh\necho hello\n")
    unknown.chmod(0o755)
    assert classify_virtiofsd(str(unknown), store) is None
    with pytest.raises(InitkitError):
        choose_daemon(str(unknown), store)


def test_c_virtiofsd_argv(store: Path) -> None:
    argv = CVirtiofsd(store).argv(Path("/x/s"), 7)
    assert argv[:4] == ["/usr/lib/qemu/virtiofsd", "--fd=7", "-o", f"source={store}"]


def test_unknown_daemon_name(store: Path) -> None:
    with pytest.raises(InitkitError, match="--daemon"):
        choose_daemon("nfsd", store)
