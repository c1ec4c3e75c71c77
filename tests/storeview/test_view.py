"""The view directory: bind mounts in a child's private mount namespace, or links."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from realparts import missing_part

from hostrun.procs import child_setup
from hostrun.storeview.view import StoreView, ViewEntry, build_view
from initbuilder.errors import InitkitError

NAMES = ("0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-dir", "1b9p07z77phvv2hf6gm9f28syp39f1ag-file",
         "5xyxwzjzbdgrcx1q8x2n64jwxdy7hlb0-link")


def sources(tmp_path: Path) -> StoreView:
    src = tmp_path / "src"
    (src / NAMES[0] / "bin").mkdir(parents=True)
    (src / NAMES[0] / "bin" / "tool").write_text("tool\n")
    (src / NAMES[0] / "lib").symlink_to("bin")
    (src / NAMES[1]).write_text("a file path\n")
    (src / NAMES[2]).symlink_to(f"/nix/store/{NAMES[0]}/bin")
    return StoreView(tuple(ViewEntry(n, src / n, "test") for n in NAMES), "test")


def test_mounts_are_seen_by_the_child_only_and_read_only(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing_part("bind mounts need root")
    view = sources(tmp_path)
    built = build_view(view, tmp_path / "view", mounts=True)
    assert [t.name for _, t in built.binds] == list(NAMES[:2])  # the symlink is recreated
    # By path, not cwd: a cwd set before the mounts would still be the directory below.
    script = (f"cd {built.root} && cat {NAMES[0]}/bin/tool {NAMES[0]}/lib/tool {NAMES[1]}; "
              f"readlink {NAMES[2]}; touch {NAMES[0]}/new 2>&1; touch new 2>&1; true")
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True,
                          text=True, check=True, timeout=30,
                          preexec_fn=child_setup(readonly=built.root, binds=built.binds))
    lines = proc.stdout.splitlines()
    assert lines[:4] == ["tool", "tool", "a file path", f"/nix/store/{NAMES[0]}/bin"]
    assert proc.stdout.count("Read-only file system") == 2, proc.stdout
    # hostrun's own namespace sees empty mount points: removing them touches no source.
    assert list((built.root / NAMES[0]).iterdir()) == []
    assert (built.root / NAMES[1]).read_text() == ""
    shutil.rmtree(built.root)
    assert (tmp_path / "src" / NAMES[0] / "bin" / "tool").read_text() == "tool\n"


def test_a_failing_bind_ends_the_child_with_a_message(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing_part("bind mounts need root")
    (tmp_path / "view").mkdir()
    target = tmp_path / "view" / "x"
    target.mkdir()
    proc = subprocess.run(["/bin/true"], capture_output=True, timeout=30,
                          preexec_fn=child_setup(readonly=tmp_path / "view",
                                                 binds=((tmp_path / "gone", target),)))
    assert proc.returncode == 126
    assert f"hostrun: cannot bind {tmp_path}/gone on {target}: No such file".encode() \
        in proc.stderr


def test_links_share_inodes_with_the_sources(tmp_path: Path) -> None:
    view = sources(tmp_path)
    built = build_view(view, tmp_path / "view", mounts=False)
    assert built.binds == () and built.copied_files == 0 and built.linked_files == 2
    tool = built.root / NAMES[0] / "bin" / "tool"
    assert tool.stat().st_ino == (tmp_path / "src" / NAMES[0] / "bin" / "tool").stat().st_ino
    assert os.readlink(built.root / NAMES[0] / "lib") == "bin"
    assert os.readlink(built.root / NAMES[2]) == f"/nix/store/{NAMES[0]}/bin"


def test_links_become_copies_across_file_systems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        missing_part("no second file system (/dev/shm) to copy across")
    view = sources(tmp_path)
    root = shm / f"initkit-view-test-{os.getpid()}"
    try:
        built = build_view(view, root, mounts=False)
        assert built.linked_files == 0 and built.copied_files == 2
        assert (root / NAMES[0] / "bin" / "tool").read_text() == "tool\n"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_store_path_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / NAMES[0])
    view = StoreView((ViewEntry(NAMES[0], tmp_path / NAMES[0], "--store x"),), "test")
    with pytest.raises(InitkitError, match="neither a file, a directory nor a symlink"):
        build_view(view, tmp_path / "view")
