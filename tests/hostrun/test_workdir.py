"""hostrun's private directories: marked with their owner, removed by a later hostrun
only when that owner is gone (real processes killed with SIGKILL), and nothing that is
not recognisably hostrun's is ever touched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hostrun.workdir import MARKER, PREFIX, private_dir, reap_abandoned
from initkit.errors import ENVIRONMENT_EXIT
from initkit.owner import Owner

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, tempfile, time
tempfile.tempdir = sys.argv[1]
from hostrun.workdir import private_dir
print(private_dir(), flush=True)
time.sleep(600)
"""


def _holder(base: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """A real process that made a private dir the way hostrun does and keeps running."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(base)], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    path = Path(proc.stdout.readline().decode().strip())
    assert path.parent == base and (path / MARKER).is_file()
    return proc, path


def test_a_killed_owners_dir_goes_and_a_live_owners_stays(tmp_path: Path) -> None:
    killed, killed_dir = _holder(tmp_path)
    alive, alive_dir = _holder(tmp_path)
    try:
        (killed_dir / "virtiofs.sock").write_bytes(b"")  # what a run leaves: socket, logs
        (killed_dir / "store" / "ro").mkdir(parents=True)
        (killed_dir / "store" / "ro").chmod(0o500)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_dir.exists()  # SIGKILL: no teardown ran
        assert reap_abandoned(str(tmp_path)) == [killed_dir]
        assert not killed_dir.exists() and alive_dir.exists()
        assert reap_abandoned(str(tmp_path)) == []
    finally:
        alive.kill()
        alive.wait()
    assert reap_abandoned(str(tmp_path)) == [alive_dir]  # now its owner is gone too


def _dead_marker(directory: Path) -> None:
    directory.mkdir(mode=0o700)
    (directory / MARKER).write_text(f"{Owner(4194305, 1)}\n")  # above pid_max: gone


def test_only_what_is_recognisably_hostruns_is_touched(tmp_path: Path) -> None:
    base = tmp_path / "tmp"
    base.mkdir()
    outside = tmp_path / "outside"
    _dead_marker(outside)
    (outside / "precious").write_text("keep")
    (base / f"{PREFIX}link").symlink_to(outside)  # a link: never followed
    unmarked = base / f"{PREFIX}unmarked"  # being made right now, or someone else's
    unmarked.mkdir(mode=0o700)
    other_name = base / "not-hostrun"
    _dead_marker(other_name)
    open_mode = base / f"{PREFIX}open"
    _dead_marker(open_mode)
    open_mode.chmod(0o755)  # hostrun's are 0700
    linked_marker = base / f"{PREFIX}linked-marker"
    linked_marker.mkdir(mode=0o700)
    (linked_marker / MARKER).symlink_to(outside / MARKER)
    garbage = base / f"{PREFIX}garbage"
    garbage.mkdir(mode=0o700)
    (garbage / MARKER).write_text("not an owner")
    kept = sorted(p.name for p in base.iterdir())
    dead = base / f"{PREFIX}dead"
    _dead_marker(dead)
    assert reap_abandoned(str(base)) == [dead]
    assert sorted(p.name for p in base.iterdir()) == kept
    assert (outside / "precious").read_text() == "keep"


def test_a_dir_of_another_user_is_left_alone(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    theirs = tmp_path / f"{PREFIX}theirs"
    _dead_marker(theirs)
    os.chown(theirs, 65534, 65534)
    assert reap_abandoned(str(tmp_path)) == []
    assert theirs.exists()


def test_a_private_dir_that_cannot_be_made_is_one_line() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a full tmpfs needs root and unshare(1) (a private mount namespace)")
    # A short path: under one too long for the socket (pytest-xdist's) hostrun takes /tmp.
    full = Path(tempfile.mkdtemp(prefix="ikw-", dir="/tmp"))
    try:
        code = ("import sys, tempfile; tempfile.tempdir = sys.argv[1]\n"
                "from hostrun.workdir import private_dir\n"
                "from initkit.errors import InitkitError\n"
                "try:\n    private_dir()\nexcept InitkitError as exc:\n"
                "    print(exc.exit_code, exc)\n")
        script = ('mount -t tmpfs -o size=64k,mode=0700 tmpfs "$0" || exit 99; '
                  'dd if=/dev/zero of="$0/fill" bs=4k 2>/dev/null; "$@"; ls -A "$0"')
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                               str(full), sys.executable, "-c", code, str(full)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode == 99:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        first, *left = proc.stdout.splitlines()
        assert first.startswith(f"{ENVIRONMENT_EXIT} cannot "), proc
        assert f"no space left on {full} (tmpfs)" in first
        assert first.endswith("free some space there, or set $TMPDIR to another directory")
        assert left == ["fill"]  # the half-made private dir is gone again
    finally:
        full.rmdir()  # the tmpfs was the namespace's only


def test_the_marker_names_this_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = private_dir()
    assert made.name.startswith(PREFIX) and made.stat().st_mode & 0o777 == 0o700
    assert Owner.parse((made / MARKER).read_text()) == Owner.current()
    assert reap_abandoned(str(tmp_path)) == [] and made.exists()  # alive: kept


def test_a_tmpdir_too_long_for_the_socket_gives_tmp_unless_it_is_bad(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from hostrun.workdir import base_dir
    from initkit.errors import InitkitError

    long = tmp_path / ("d" * 100)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", str(long))
    assert base_dir() == "/tmp"  # the socket's path would not fit under it
    monkeypatch.setenv("TMPDIR", str(long / "missing"))
    assert base_dir() == str(long / "missing")
    with pytest.raises(InitkitError, match=f"directory {long / 'missing'} does not exist"):
        private_dir()
