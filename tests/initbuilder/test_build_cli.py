"""`initbuilder build` and `initbuilder ls` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from realparts import unpack_with_cpio

from initbuilder.reader import read_initrd

INITBUILDER = [sys.executable, "-m", "initbuilder"]


def initbuilder(*args: str, cwd: Path | None = None,
                no_dac_override: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [*INITBUILDER, *args]
    if no_dac_override:
        # Root reads everything; without these capabilities file modes apply to it too.
        setpriv = shutil.which("setpriv")
        if setpriv is None or os.geteuid() != 0:
            pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
        caps = "-dac_override,-dac_read_search"
        argv = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", *argv]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def busybox() -> str:
    found = shutil.which("busybox")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("busybox is missing in CI")
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    return found


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_build_with_busybox_and_files_then_ls(tmp_path: Path) -> None:
    bb = busybox()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.conf").write_text("a=1\n")
    (tmp_path / "conf" / "link").symlink_to("a.conf")
    out = tmp_path / "initrd.zst"
    proc = initbuilder("build", "-o", str(out), "--no-init", "--busybox", bb,
                       "--file", f"{tmp_path / 'conf'}:/etc/app", "-v")
    assert proc.returncode == 0, proc.stderr
    assert "phase write" in proc.stderr and "added busybox" in proc.stderr
    listing = initbuilder("ls", str(out))
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert any(line.endswith("bin/sh -> /bin/busybox") for line in lines)
    assert any(line.endswith("etc/app/link -> a.conf") for line in lines)
    assert any(line.startswith("crw------- ") and line.endswith(" dev/console") for line in lines)
    entries = json.loads(initbuilder("ls", "--json", str(out)).stdout)
    by_path = {e["path"]: e for e in entries}
    assert by_path["dev/null"] == {"path": "dev/null", "type": "char", "mode": "0666", "uid": 0,
                                   "gid": 0, "size": 0, "archive": 0, "major": 1, "minor": 3}
    assert by_path["tmp"]["mode"] == "1777"
    for skeleton in ("bin", "dev", "etc", "proc", "sys", "run", "usr/bin", "lib", "dev/tty",
                     "dev/urandom"):
        assert skeleton in by_path


def test_busybox_applets_are_linked_and_run(tmp_path: Path) -> None:
    bb = busybox()
    out = tmp_path / "i.cpio"
    assert initbuilder("build", "-o", str(out), "--no-init", "--busybox", bb).returncode == 0
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True).stdout.split()
    members = {m.path: m for m in read_initrd(out)}
    linked = {p.rsplit("/", 1)[-1] for p, m in members.items() if m.target == "/bin/busybox"}
    assert set(applets) - {"busybox"} <= linked
    root = unpack_with_cpio(out, tmp_path / "root")
    if os.geteuid() == 0:
        echoed = subprocess.run(["chroot", str(root), "/bin/sh", "-c", "echo ok from sh"],
                                capture_output=True, text=True)
        assert echoed.stdout == "ok from sh\n"


def test_compress_overrides_suffix(tmp_path: Path) -> None:
    out = tmp_path / "initrd.img"
    assert initbuilder("build", "-o", str(out), "--no-init", "--no-busybox").returncode == 0
    assert out.read_bytes()[:6] == b"070701"
    proc = initbuilder("build", "-o", str(out), "--no-init", "--no-busybox", "--compress", "gzip")
    assert proc.returncode == 0 and out.read_bytes()[:2] == b"\x1f\x8b"
    proc = initbuilder("build", "-o", str(out), "--no-init", "--compress", "brotli")
    assert proc.returncode == 2 and "brotli" in proc.stderr


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    bb = busybox()
    outs = [tmp_path / "a.gz", tmp_path / "b.gz"]
    for out in outs:
        proc = initbuilder("build", "-o", str(out), "--no-init", "--busybox", bb,
                           "--file", f"{bb}:/opt/bb", "--source-date-epoch", "1234")
        assert proc.returncode == 0, proc.stderr
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_base_archives_merge(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    base = tmp_path / "base.xz"
    assert initbuilder("build", "-o", str(base), "--no-init", "--no-busybox",
                       "--file", f"{tmp_path / 'x'}:/etc/x").returncode == 0
    out = tmp_path / "out.cpio"
    proc = initbuilder("build", "-o", str(out), "--no-init", "--no-busybox", "--base", str(base))
    assert proc.returncode == 0, proc.stderr
    assert "etc/x" in {m.path for m in read_initrd(out)}


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--file", "/does/not/exist"], ["/does/not/exist", "does not exist"]),
        (["--file", "/etc/hostname:"], ["GUEST", "empty"]),
        (["--file", ":/x"], ["HOST", "empty"]),
        (["--busybox", "/etc"], ["/etc", "directory"]),
        (["--busybox", "/no/busybox"], ["/no/busybox"]),
    ],
)
def test_user_errors_are_one_line_exit_2_and_no_output(tmp_path: Path, args: list[str],
                                                       needles: list[str]) -> None:
    out = tmp_path / "initrd.zst"
    proc = initbuilder("build", "-o", str(out), "--no-init", *args)
    assert_user_error(proc, *needles)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_base_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.cpio.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    out = tmp_path / "initrd.zst"
    assert_user_error(initbuilder("build", "-o", str(out), "--no-init", "--base", str(bad)),
                      "bad.cpio.gz")
    assert not out.exists()
    assert_user_error(initbuilder("ls", str(bad)), "bad.cpio.gz")
    assert_user_error(initbuilder("ls", str(tmp_path / "missing")), "missing", "no such file")


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    secret.chmod(0o000)
    out = tmp_path / "o.cpio"
    proc = initbuilder("build", "-o", str(out), "--no-init", "--no-busybox", "--file",
                       f"{secret}:/s", no_dac_override=True)
    assert_user_error(proc, str(secret), "not readable")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_help_teaches() -> None:
    proc = initbuilder("build", "--help")
    assert proc.returncode == 0
    for option in ("--file", "--busybox", "--base", "--compress", "--source-date-epoch",
                   "--verbose", "Examples"):
        assert option in proc.stdout


def test_applets_linked_at_boot_are_listed_not_archived() -> None:
    """With initkit's init, only /bin/sh is an archive entry; the other applets are
    listed for the init, minus paths the image already has (they win, as links would)."""
    from guest.contract import APPLET_LIST
    from initbuilder.image import Image, Kind
    from initbuilder.sources import add_busybox, add_skeleton

    bb = busybox()
    image = Image()
    add_skeleton(image)
    image.add_file("bin/cat", data=b"#!/bin/sh\n", mode=0o755, source="explicit")
    applets = add_busybox(image, Path(bb), links_at_boot=True)
    sh = image.get("bin/sh")
    assert sh is not None and sh.kind is Kind.SYMLINK and sh.target == "/bin/busybox"
    links = [p for p, e in image.items() if e.kind is Kind.SYMLINK and e.target == "/bin/busybox"]
    assert links == ["bin/sh"]
    listed = image.get(APPLET_LIST)
    assert listed is not None and listed.data is not None
    lines = listed.data.decode().splitlines()
    assert "/bin/ls" in lines and "/usr/sbin/chroot" in lines
    assert "/bin/cat" not in lines and "/bin/sh" not in lines and "/bin/busybox" not in lines
    assert len(lines) == len(applets) - 1  # all but bin/sh
    for line in lines:  # the init can create each link: its directory is in the image
        parent = line.rsplit("/", 1)[0].lstrip("/")
        entry = image.get(parent) if parent else None  # "/linuxrc" is in the root
        assert not parent or (entry is not None and entry.kind is Kind.DIR), line
