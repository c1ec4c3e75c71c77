"""initkit.files: atomic writes under contention, leftovers of killed writers, scratch
directories, removal that never follows a link, file identity (real processes, real
files, SIGKILL)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from initkit.errors import InitkitError
from initkit.files import (
    identity,
    identity_or_missing,
    is_temp_name,
    reap_abandoned,
    remove_tree,
    replacing,
    scratch_beside,
    temp_path,
    write_atomically,
)
from initkit.owner import Owner

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = 256 * 1024  # big enough that writes and renames of different writers interleave


def _python(code: str, *args: str, stdout: int | None = None,
            stderr: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=stdout,
                            stderr=stderr)


HAMMER = """
import sys, threading
from initkit.files import write_atomically
target, tag, rounds, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
errors = []
def writer(n):
    data = f"{tag}.{n}:".encode().ljust(size, b"x")
    try:
        for _ in range(rounds):
            write_atomically(target, data)
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("\\n".join(errors))
sys.exit(1 if errors else 0)
"""


def test_one_entry_hammered_by_threads_and_processes_stays_whole(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    procs = [_python(HAMMER, str(target), f"p{i}", "40", str(PAYLOAD), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE) for i in range(3)]
    errors: list[str] = []

    def in_process(n: int) -> None:  # this process's threads join in, as VmRunner's would
        data = f"t{n}:".encode().ljust(PAYLOAD, b"x")
        try:
            for _ in range(40):
                write_atomically(target, data)
                seen = target.read_bytes()  # a reader at any moment sees one whole write
                assert len(seen) == PAYLOAD and seen.endswith(b"x"), len(seen)
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=in_process, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (out + err).decode()
    assert errors == []
    data = target.read_bytes()
    head = data.split(b":")[0].decode()
    assert len(data) == PAYLOAD and head[0] in "pt" and data == head.encode() + b":" + \
        b"x" * (PAYLOAD - len(head) - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_mode_is_set_before_the_file_appears(tmp_path: Path) -> None:
    write_atomically(tmp_path / "f", b"x", mode=0o640)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


def test_a_target_name_too_long_for_a_temp_suffix_still_works(tmp_path: Path) -> None:
    target = tmp_path / ("n" * 250)
    write_atomically(target, b"data")
    assert target.read_bytes() == b"data"
    assert len(os.fsencode(temp_path(target).name)) <= 255


# A writer that stops inside replacing() until killed: the state SIGKILL leaves.
STUCK_WRITER = """
import sys, time
from initkit.files import replacing, scratch_beside
target = sys.argv[1]
with (scratch_beside if sys.argv[2] == "dir" else replacing)(target) as tmp:
    if sys.argv[2] == "dir":
        (tmp / "part").write_bytes(b"half")
    else:
        tmp.write_bytes(b"half")
    print(tmp, flush=True)
    time.sleep(600)
"""


def _stuck_writer(target: Path, kind: str) -> tuple[subprocess.Popen[bytes], Path]:
    proc = _python(STUCK_WRITER, str(target), kind, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    assert line, "the writer did not start"
    return proc, Path(line)


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_what_a_killed_writer_left_is_removed_by_the_next_writer_only(tmp_path: Path,
                                                                    kind: str) -> None:
    target = tmp_path / "entry"
    other = tmp_path / "other"
    killed, killed_tmp = _stuck_writer(target, kind)
    alive, alive_tmp = _stuck_writer(target, kind)
    of_other, other_tmp = _stuck_writer(other, kind)
    try:
        for proc in (killed, of_other):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert killed_tmp.exists() and alive_tmp.exists() and other_tmp.exists()
        write_atomically(target, b"whole")
        assert target.read_bytes() == b"whole"
        assert not killed_tmp.exists()  # its writer is gone
        assert alive_tmp.exists()  # its writer still runs: never touched
        assert other_tmp.exists()  # another entry's: left to that entry's next writer
        write_atomically(other, b"x")
        assert not other_tmp.exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_leftover_whose_pid_was_reused_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    me = Owner.current()
    reused = tmp_path / f".entry.{Owner(me.pid, me.start + 1)}-0.tmp"  # same pid, other start
    reused.write_bytes(b"half")
    mine = tmp_path / f".entry.{me}-99.tmp"  # a thread of this process writing right now
    mine.write_bytes(b"half")
    assert reap_abandoned(target) == 1
    assert not reused.exists() and mine.exists()


def test_names_that_only_look_like_leftovers_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    keep = [".entry.4194305-1.tmp", ".entry.x-1-0.tmp", ".entry.4194305-1-0.tmp.old",
            "entry.4194305-1-0.tmp", ".entry.1.4194305-1-0.tmp"]
    for name in keep:
        (tmp_path / name).write_bytes(b"")
    assert reap_abandoned(target) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_temp_names_are_told_apart_from_entries(tmp_path: Path) -> None:
    for target in (tmp_path / "vmlinux.elf", tmp_path / ("n" * 250), tmp_path / ".hidden"):
        assert is_temp_name(temp_path(target).name), target
    for name in ("vmlinux.elf", ".vmlinux.elf.tmp", ".x.123.tmp", ".x.1-2-3.tmpl", "x.1-2-3.tmp",
                 "initkit-fetched.json", "tsc-khz-656f2135"):
        assert not is_temp_name(name), name


def test_scratch_dir_is_private_and_goes_away(tmp_path: Path) -> None:
    with scratch_beside(tmp_path / "entry") as scratch:
        assert scratch.parent == tmp_path and scratch.stat().st_mode & 0o777 == 0o700
        (scratch / "ro").mkdir()
        (scratch / "ro" / "f").write_bytes(b"x")
        (scratch / "ro").chmod(0o500)  # an unpacked NAR's directories are read-only
    assert list(tmp_path.iterdir()) == []


def test_remove_tree_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "link").symlink_to(outside)
    (tree / "top-link").symlink_to(outside)
    remove_tree(tree)
    assert not tree.exists() and (outside / "precious").read_bytes() == b"keep"
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(link)  # the link goes, not what it points to
    assert not link.is_symlink() and (outside / "precious").exists()


def test_remove_tree_does_not_empty_a_filesystem_mounted_inside(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a tmpfs in a private namespace")
    code = ("import os, subprocess, sys; from initkit.files import remove_tree;"
            "t = sys.argv[1]; os.makedirs(t + '/m'); open(t + '/f', 'w').close();"
            "subprocess.run(['mount', '-t', 'tmpfs', 'none', t + '/m'], check=True);"
            "open(t + '/m/precious', 'w').close(); remove_tree(t);"
            "print(sorted(os.listdir(t)), os.listdir(t + '/m'))")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                           "-c", code, str(tmp_path / "t")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
    assert proc.stdout.split() == ["['m']", "['precious']"], proc.stderr


def test_identity_names_path_size_mtime_inode_and_device(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"a")
    st = f.stat()
    assert identity(f) == f"{f}:1:{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert identity(f) != f"{f}:1:{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}"
    assert identity_or_missing(tmp_path / "gone") == f"{tmp_path / 'gone'}:missing"
    with pytest.raises(OSError):
        identity(tmp_path / "gone")


def test_a_temp_that_cannot_be_made_is_one_line_naming_the_target(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "entry"
    with pytest.raises(InitkitError) as caught:
        write_atomically(target, b"x", what="the note", instead="set $X elsewhere")
    assert str(caught.value) == (f"cannot write the note {target}: directory "
                                 f"{tmp_path / 'missing'} does not exist; create it first, "
                                 "or set $X elsewhere")


def test_owner_of_a_process_that_exited_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    from initkit.owner import start_time

    start = start_time(proc.pid)
    assert start is not None
    owner = Owner(proc.pid, start)
    assert not owner.gone()
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while not owner.gone() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert owner.gone()
    assert not Owner.current().gone()
    assert Owner.parse(str(owner)) == owner and Owner.parse("12") is None
