"""Writing where the machine says no, as a user meets it: the real `initbuilder` and
`hostrun` commands against /proc, missing and non-directory parents, names too long,
read-only and full filesystems (a small tmpfs in a private mount namespace), a
directory they may not write, too many open files. Each is one line naming the path
and the fix, exit 2 (the path is wrong) or 120 (the machine ran short), no traceback,
nothing half-written left."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from realparts import missing_part

from initbuilder.kernels.fetch import FetchedKernel
from initkit.errors import (
    ENVIRONMENT_EXIT,
    USER_ERROR_EXIT,
    EnvironmentFault,
    WriteSite,
    write_error,
)

ROOT = Path(__file__).resolve().parents[2]
INITBUILDER = [sys.executable, "-m", "initbuilder"]
HOSTRUN = [sys.executable, "-m", "hostrun"]
LEFT = "--- left:"


def run(argv: list[str], *, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, cwd=cwd,
                          timeout=300, stdin=subprocess.DEVNULL)


def one_line(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The one error line, after checking the exit code and that nothing else was said."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert proc.returncode == code, proc.stderr
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def in_small_tmpfs(mount: Path, argv: list[str], *, size: str = "256k", fill: bool = False,
                   readonly: bool = False, env: dict[str, str] | None = None
                   ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run argv with a small tmpfs on ``mount`` (a private mount namespace: nobody else
    sees it); returns the process and what the tmpfs holds afterwards."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a small tmpfs needs root and unshare(1) (a private mount namespace)")
    mount.mkdir(exist_ok=True)
    script = (f'mount -t tmpfs -o size={size},mode=0700 tmpfs "$0" || exit 99; '
              + ('dd if=/dev/zero of="$0/fill" bs=4k 2>/dev/null; ' if fill else "")
              + ('mount -o remount,ro "$0" || exit 99; ' if readonly else "")
              + f'"$@"; code=$?; echo "{LEFT}" >&2; ls -A "$0" >&2; exit $code')
    proc = run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                str(mount), *argv], env=env)
    if proc.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    stderr, _, left = proc.stderr.partition(LEFT + "\n")
    proc.stderr = stderr
    return proc, [name for name in left.split() if name != "fill"]


@pytest.fixture(scope="module")
def bzimage(debian_kernel: FetchedKernel) -> Path:
    return debian_kernel.bzimage


# -- the examples of issue 15 -------------------------------------------------------
def test_output_on_proc() -> None:
    proc = run([*INITBUILDER, "build", "-o", "/proc/nope.cpio", "--busybox"])
    one_line(proc, USER_ERROR_EXIT, "cannot write the initrd /proc/nope.cpio",
             "/proc (proc) takes no new files")


def test_vmlinux_into_a_missing_directory(tmp_path: Path, bzimage: Path) -> None:
    proc = run([*INITBUILDER, "kernel", "vmlinux", str(bzimage), "-o", "missing-dir/v"],
               cwd=tmp_path)
    one_line(proc, USER_ERROR_EXIT,
             "cannot write the vmlinux missing-dir/v: directory missing-dir does not exist")
    assert list(tmp_path.iterdir()) == []


def test_hostrun_with_its_cache_on_proc(bzimage: Path) -> None:
    proc = run([*HOSTRUN, "--kernel", str(bzimage), "--exec", "/bin/true"],
               env={"INITKIT_CACHE": "/proc/x"})
    one_line(proc, USER_ERROR_EXIT, "hostrun: error: cannot create the cache directory "
             "/proc/x", "set $INITKIT_CACHE to a directory elsewhere")


def test_a_full_disk_says_so(tmp_path: Path) -> None:
    out = tmp_path / "full" / "initrd.cpio"
    proc, left = in_small_tmpfs(out.parent, [*INITBUILDER, "build", "-o", str(out),
                                             "--busybox", "--no-init"])
    one_line(proc, ENVIRONMENT_EXIT, f"cannot write the initrd {out}: no space left on "
             f"{out.parent} (tmpfs); free some space there")
    assert left == []  # no half initrd, no temp file


def test_a_full_cache_says_so_and_keeps_no_half_entry(tmp_path: Path, bzimage: Path) -> None:
    cache = tmp_path / "cache"
    proc, left = in_small_tmpfs(cache, [*INITBUILDER, "kernel", "vmlinux", str(bzimage)],
                                env={"INITKIT_CACHE": str(cache)})
    one_line(proc, ENVIRONMENT_EXIT, f"cannot write the cache entry {cache}/vmlinux/",
             f"no space left on {cache} (tmpfs)",
             "or set $INITKIT_CACHE to a directory elsewhere")
    assert left == ["vmlinux"]  # the directory, empty: its listing is not recursive


def test_hostrun_with_a_full_cache(tmp_path: Path, bzimage: Path) -> None:
    cache = tmp_path / "cache"
    store = tmp_path / "store"  # not the default /nix/store, which a machine may lack
    store.mkdir()
    proc, _ = in_small_tmpfs(cache, [*HOSTRUN, "--kernel", str(bzimage), "--vmm", "qemu",
                                     "--store", str(store), "--exec", "/bin/true"],
                             env={"INITKIT_CACHE": str(cache), "HOSTRUN_ACCEL": "tcg"})
    one_line(proc, ENVIRONMENT_EXIT, "hostrun: error: cannot write ",
             f"no space left on {cache} (tmpfs)", "set $INITKIT_CACHE to a directory elsewhere")


# -- the other ways a write is refused ----------------------------------------------
def test_a_read_only_filesystem(tmp_path: Path) -> None:
    out = tmp_path / "ro" / "initrd.cpio"
    proc, left = in_small_tmpfs(out.parent, [*INITBUILDER, "build", "-o", str(out),
                                             "--no-busybox", "--no-init"], readonly=True)
    one_line(proc, USER_ERROR_EXIT, f"{out.parent} (tmpfs) is mounted read-only",
             "write somewhere writable")
    assert left == []


def test_a_file_where_a_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    proc = run([*INITBUILDER, "build", "-o", str(tmp_path / "file" / "initrd.cpio"),
                "--no-busybox", "--no-init"])
    one_line(proc, USER_ERROR_EXIT, f"{tmp_path / 'file'} is not a directory")


def test_a_directory_where_the_output_should_be(tmp_path: Path) -> None:
    proc = run([*INITBUILDER, "build", "-o", str(tmp_path), "--no-busybox", "--no-init"])
    one_line(proc, USER_ERROR_EXIT, f"cannot write the initrd {tmp_path}: it is a directory")
    assert list(tmp_path.iterdir()) == []


def test_a_name_too_long(tmp_path: Path) -> None:
    out = tmp_path / ("n" * 300)
    proc = run([*INITBUILDER, "build", "-o", str(out), "--no-busybox", "--no-init"])
    one_line(proc, USER_ERROR_EXIT, "the name is too long", "choose a shorter path")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_the_user_may_not_write(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    caps = "-dac_override,-dac_read_search"
    proc = run([setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", *INITBUILDER,
                "build", "-o", str(locked / "initrd.cpio"), "--no-busybox", "--no-init"])
    one_line(proc, USER_ERROR_EXIT, f"directory {locked} is not writable for you",
             "choose a directory you may write, or fix its permissions")
    assert list(locked.iterdir()) == []


def test_too_many_open_files_is_the_machine(tmp_path: Path) -> None:
    code = """
import os, resource, sys
from initkit.errors import EnvironmentFault
from initkit.files import write_atomically
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
try:
    write_atomically(sys.argv[1], b"x", what="the note")
except EnvironmentFault as exc:
    print(exc.exit_code, exc)
"""
    proc = run([sys.executable, "-c", code, str(tmp_path / "note")])
    assert proc.stdout.startswith(f"{ENVIRONMENT_EXIT} cannot write the note "
                                  f"{tmp_path / 'note'}: too many open files"), proc
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("code", "cause", "environment"), [
    (errno.EDQUOT, "disk quota exceeded on", True),
    (errno.EIO, "input/output error on", True),
    (errno.ENOMEM, "out of memory", True),
    (errno.ELOOP, "too many levels of symbolic links", False),
    (errno.EBUSY, "Device or resource busy", False),
])
def test_faults_hard_to_cause_here_are_named_too(tmp_path: Path, code: int, cause: str,
                                                 environment: bool) -> None:
    """A quota, a dying disk, no memory: not reproducible on demand, so the OSError the
    kernel would give is handed in; the message and the kind are what a user gets."""
    exc = write_error(OSError(code, os.strerror(code)), tmp_path / "f", "write the note")
    assert str(exc).startswith(f"cannot write the note {tmp_path / 'f'}: {cause}")
    assert isinstance(exc, EnvironmentFault) == environment
    assert exc.exit_code == (ENVIRONMENT_EXIT if environment else USER_ERROR_EXIT)


def test_a_program_stopped_by_the_machine_is_told_as_the_machine(tmp_path: Path) -> None:
    """dpkg-deb's and tar's last lines hide the cause ("tar subprocess returned error
    exit status 2"): their output naming it, in the C locale's words, is enough."""
    site = WriteSite(tmp_path / "entry", "unpack the kernel package into",
                     "set $INITKIT_CACHE to a directory elsewhere")
    said = ("dpkg-deb (subprocess): cannot copy extracted data for './boot/vmlinuz': "
            "failed to write (No space left on device)\n"
            "dpkg-deb: error: tar subprocess returned error exit status 2")
    fault = site.fault(said)
    assert isinstance(fault, EnvironmentFault)
    assert str(fault).startswith(f"cannot unpack the kernel package into {tmp_path / 'entry'}"
                                 ": no space left on ")
    assert str(fault).endswith("; free some space there, or set $INITKIT_CACHE to a "
                               "directory elsewhere")
    files = site.fault("make: *** Too many open files in system")
    assert files is not None and "the system's limit" in str(files)
    assert site.fault("tar: Unexpected EOF in archive") is None  # a bad input: its own words


def test_a_failed_program_on_a_full_filesystem_says_so(tmp_path: Path) -> None:
    code = """
import subprocess, sys
from initkit import process
from initkit.errors import InitkitError, WriteSite
try:
    process.run(["sh", "-c", "exec 2>/dev/null; dd if=/dev/zero of=$0/big bs=64k count=8; exit 1",
                 sys.argv[1]], writes=WriteSite(sys.argv[1], "fill", inside=True))
except InitkitError as exc:
    print(exc.exit_code, exc)
"""
    proc, _ = in_small_tmpfs(tmp_path / "full", [sys.executable, "-c", code,
                                                 str(tmp_path / "full")], size="64k")
    assert proc.stdout.strip() == (f"{ENVIRONMENT_EXIT} cannot fill {tmp_path / 'full'}: no "
                                   f"space left on {tmp_path / 'full'} (tmpfs); free some "
                                   "space there"), proc


def test_reading_below_a_file_names_the_file(tmp_path: Path) -> None:
    from initkit.errors import InitkitError, reading

    (tmp_path / "file").write_text("x")
    with pytest.raises(InitkitError) as caught, reading(tmp_path / "file" / "x.cpio", "initrd"):
        (tmp_path / "file" / "x.cpio").read_bytes()
    assert str(caught.value) == (f"initrd {tmp_path / 'file' / 'x.cpio'}: {tmp_path / 'file'} "
                                 "is not a directory")


def test_kernel_build_cached_output_on_a_full_disk_leaves_nothing(tmp_path: Path) -> None:
    """`kernel build --cached -o DIR`: the bzImage fits, the vmlinux does not; neither
    stays, nor the directories the run made for them."""
    found = run([*INITBUILDER, "kernel", "build", "--cached", "--print", "bzimage"])
    if found.returncode != 0:
        if os.environ.get("INITKIT_TEST_MINIMAL_KERNEL"):  # built on the host, not here
            pytest.skip("initkit's minimal kernel is built outside this root")
        missing_part("initkit's minimal kernel is not built (initbuilder kernel build)")
    assert Path(found.stdout.strip()).stat().st_size < 3 << 20  # so that it fits
    mount = tmp_path / "out"
    proc, left = in_small_tmpfs(mount, [*INITBUILDER, "kernel", "build", "--cached",
                                        "-o", str(mount / "a" / "kernel")], size="3m")
    one_line(proc, ENVIRONMENT_EXIT, "no space left on", "vmlinux")
    assert left == []
