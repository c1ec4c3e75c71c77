"""The view: made in a child's private mount namespace, or a tree of links."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from realparts import missing_part

from hostrun.procs import child_setup
from hostrun.storeview.mounts import ViewMounts
from hostrun.storeview.view import StoreView, ViewEntry, build_view
from initkit.errors import InitkitError

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


def test_the_view_is_made_in_the_child_only_and_read_only(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing_part("mounts need root")
    view = sources(tmp_path)
    built = build_view(view, tmp_path / "view", mounts=True)
    assert built.mounts is not None
    assert [name for name, _, _ in built.mounts.binds] == list(NAMES[:2])
    assert built.mounts.symlinks == ((NAMES[2], f"/nix/store/{NAMES[0]}/bin"),)
    script = (f"cd {built.root} && ls; cat {NAMES[0]}/bin/tool {NAMES[0]}/lib/tool "
              f"{NAMES[1]}; readlink {NAMES[2]}; touch {NAMES[0]}/new 2>&1; "
              "touch new 2>&1; true")
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                          check=True, timeout=30, preexec_fn=child_setup(view=built.mounts))
    lines = proc.stdout.splitlines()
    assert lines[:7] == [*NAMES, "tool", "tool", "a file path", f"/nix/store/{NAMES[0]}/bin"]
    assert proc.stdout.count("Read-only file system") == 2, proc.stdout
    # hostrun's own namespace sees an empty directory: removing it touches no source.
    assert list(built.root.iterdir()) == []
    shutil.rmtree(built.root)
    assert (tmp_path / "src" / NAMES[0] / "bin" / "tool").read_text() == "tool\n"
    with open("/proc/self/mountinfo") as f:
        assert str(built.root) not in f.read()


def test_a_failing_bind_stops_the_child_before_exec(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        missing_part("mounts need root")
    (tmp_path / "view").mkdir()
    mounts = ViewMounts(tmp_path / "view", binds=(("x", tmp_path / "gone", True),))
    with (tmp_path / "log").open("wb") as log, pytest.raises(subprocess.SubprocessError):
        subprocess.run(["/bin/true"], stderr=log, timeout=30,
                       preexec_fn=child_setup(view=mounts))
    assert (f"hostrun: cannot bind {tmp_path}/gone on {tmp_path}/view/x: No such file"
            .encode()) in (tmp_path / "log").read_bytes()


def test_links_share_inodes_with_the_sources(tmp_path: Path) -> None:
    view = sources(tmp_path)
    built = build_view(view, tmp_path / "view", mounts=False)
    assert built.mounts is None and built.copied_files == 0 and built.linked_files == 2
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


def test_without_root_the_view_is_links(tmp_path: Path) -> None:
    """The probe says yes as root; a process that may not mount (here: a forked child
    turned into user nobody) gets the hard-link view without being told."""
    if os.geteuid() != 0:
        missing_part("needs root to become another user")
    from hostrun.storeview.mounts import mount_namespaces_work

    assert mount_namespaces_work()
    # pytest's tmp_path is root's alone (0700 parents): use a directory nobody can reach.
    shared = Path(tempfile.mkdtemp(prefix="initkit-view-"))
    try:
        shared.chmod(0o755)
        view = sources(shared)
        (shared / "out").mkdir(mode=0o777)
        (shared / "out").chmod(0o777)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                os.setgid(65534)
                os.setuid(65534)
                mount_namespaces_work.cache_clear()
                built = build_view(view, shared / "out" / "view")
                said = f"{built.mounts} {built.linked_files + built.copied_files}"
            except BaseException as exc:
                said = repr(exc)
            finally:
                os.write(write, said.encode())
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            said = f.read()
        os.waitpid(pid, 0)
        assert said.split() == ["None", "2"], said
    finally:
        shutil.rmtree(shared)


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_store_path_not_readable_is_named_as_read_not_as_writing_the_view(
        what: str) -> None:
    """A user who may not read part of a store path (linking it is refused too:
    protected_hardlinks) is told which file of which path, not that the view could not
    be written; an unreadable directory is never skipped quietly (os.walk would)."""
    if os.geteuid() != 0:
        missing_part("needs root to become another user")
    shared = Path(tempfile.mkdtemp(prefix="initkit-view-"))
    try:
        shared.chmod(0o755)
        view = sources(shared)
        secret = shared / "src" / NAMES[0] / ("secret" if what == "file" else "private")
        if what == "file":
            secret.write_text("root's\n")
            secret.chmod(0o600)
        else:
            secret.mkdir(mode=0o700)
        (shared / "out").mkdir()
        (shared / "out").chmod(0o777)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                os.setgid(65534)
                os.setuid(65534)
                build_view(view, shared / "out" / "view", mounts=False)
                said = "built"
            except BaseException as exc:
                said = f"{type(exc).__name__}: {exc}"
            finally:
                os.write(write, said.encode())
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            said = f.read()
        os.waitpid(pid, 0)
        assert said == (f"InitkitError: /nix/store/{NAMES[0]} (from test): cannot read "
                        f"{secret}: Permission denied; a store path is served whole, so all "
                        "of it must be readable for you"), said
    finally:
        shutil.rmtree(shared)
