"""$TMPDIR as initkit takes it: as the user gave it (a bad one is one line naming it,
never a quiet /tmp: the programs initkit runs use it as given), and shown to take a file
before those programs start."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from initkit.errors import ENVIRONMENT_EXIT, InitkitError
from initkit.files import check_temp_base, private_scratch, temp_base

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_tempdir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", None)  # as in a fresh process


def test_tmpdir_is_taken_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  no_tempdir: None) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    assert temp_base() == str(tmp_path / "missing")  # tempfile would have taken /tmp
    with pytest.raises(InitkitError) as caught, private_scratch("x-"):
        pass
    assert str(caught.value) == (
        f"cannot make a temporary directory in {tmp_path / 'missing'}: directory "
        f"{tmp_path / 'missing'} does not exist; create it first, or set $TMPDIR to "
        "another directory")


def test_a_file_as_tmpdir_is_named_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          no_tempdir: None) -> None:
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "file"))
    with pytest.raises(InitkitError, match=f"{tmp_path / 'file'} is not a directory"):
        check_temp_base()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_the_program_s_own_choice_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", "/nonexistent")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert temp_base() == str(tmp_path)
    assert check_temp_base() == str(tmp_path) and list(tmp_path.iterdir()) == []


def test_no_usable_temp_dir_at_all_is_one_line(tmp_path: Path) -> None:
    """tempfile raises FileNotFoundError when none of its candidates takes a file."""
    code = ("import tempfile, sys\n"
            "def none(): raise FileNotFoundError(2, 'No usable temporary directory')\n"
            "tempfile.gettempdir = none\n"
            "from initkit.files import temp_base\n"
            "from initkit.errors import InitkitError\n"
            "try: temp_base()\n"
            "except InitkitError as exc: print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.stdout.startswith("no usable temporary directory: none of /tmp"), out


def test_a_full_tmpdir_is_found_before_a_program_fills_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a full tmpfs needs root (a private mount namespace)")
    mount = tmp_path / "full"
    mount.mkdir()
    code = ("from initkit.files import check_temp_base\n"
            "from initkit.errors import InitkitError\n"
            "try: check_temp_base()\n"
            "except InitkitError as exc: print(exc.exit_code, exc)\n")
    script = ('mount -t tmpfs -o size=64k tmpfs "$0" || exit 99; '
              'dd if=/dev/zero of="$0/fill" bs=4k 2>/dev/null; "$@"; ls -A "$0"')
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                          str(mount), sys.executable, "-c", code], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                         "TMPDIR": str(mount)}, timeout=60)
    if out.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    first, *rest = out.stdout.splitlines()
    assert first == (f"{ENVIRONMENT_EXIT} cannot make a temporary file in {mount}: no space "
                     f"left on {mount} (tmpfs); free some space there, or set $TMPDIR to "
                     "another directory"), out
    assert rest == ["fill"]  # the probe is gone
