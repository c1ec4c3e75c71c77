"""guest.system, guest.libc and guest.osfuncs for real on the host: the libc bindings
(the lean one through _ctypes, which every boot uses, and the ctypes package it falls
back to), the stand-ins for os functions, and link_all."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guest import libc, osfuncs, system


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="getppid is 110 on x86-64")
@pytest.mark.parametrize("lean", [True, False], ids=["_ctypes", "ctypes"])
def test_bindings_call_libc_and_keep_errno(lean: bool, tmp_path: Path) -> None:
    functions = libc.bind(lean)
    assert set(functions) == {*libc.SIGNATURES, "get_errno"}
    assert functions["syscall"](110, 0, None, 0) == os.getppid()  # x86-64 getppid
    missing = os.fsencode(tmp_path / "missing")
    assert functions["mount"](b"none", missing, b"tmpfs", 0, None) == -1
    assert functions["get_errno"]() in (errno.ENOENT, errno.EPERM)  # EPERM when not root
    assert functions["umount2"](missing, 0) == -1
    assert functions["get_errno"]() in (errno.ENOENT, errno.EPERM)


def test_the_init_imports_neither_os_nor_the_ctypes_package() -> None:
    """Imports cost every boot under TCG (os ~14 ms, ctypes ~25 ms): the guest uses
    posix and _ctypes, reads files without io objects, imports errno only for errors;
    its typed interface (and typing) are for mypy alone."""
    root = str(Path(system.__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {root!r}); import guest.__main__; "
            "from guest import system; s = system.System(); s.read_text('/proc/cmdline'); "
            "print(sorted(m for m in sys.modules if m in ('os', 'stat', 'posixpath', "
            "'_collections_abc', 'termios', 'errno', 'typing', 'guest.interface') "
            "or 'ctypes' in m))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True)
    assert out.stdout == "['_ctypes']\n"


def test_read_text_keeps_undecodable_bytes(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"caf\xc3\xa9 \xff\n" * 10000)  # more than one read
    text = system.System.read_text(str(tmp_path / "f"))
    assert text is not None and text.encode("utf-8", "surrogateescape") == (
        b"caf\xc3\xa9 \xff\n" * 10000)
    assert system.System.read_text(str(tmp_path / "missing")) is None


def test_make_dirs_and_lexists(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    osfuncs.make_dirs(str(target))
    osfuncs.make_dirs(str(target))  # exists: fine, as with exist_ok=True
    assert target.is_dir() and osfuncs.lexists(str(target))
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        osfuncs.make_dirs(str(tmp_path / "file"))
    os.symlink("nowhere", tmp_path / "dangling")
    assert osfuncs.lexists(str(tmp_path / "dangling"))
    assert not osfuncs.lexists(str(tmp_path / "missing"))


def test_execvpe_errors_like_os(tmp_path: Path) -> None:
    """No exec succeeds here: what is raised when none can (the success path runs in
    every boot and in test_guest_pid1)."""
    empty, denied = tmp_path / "empty", tmp_path / "denied"
    empty.mkdir()
    denied.mkdir()
    (denied / "prog").write_text("#!/bin/sh\n")  # not executable: EACCES
    with pytest.raises(FileNotFoundError):
        osfuncs.execvpe("prog", ["prog"], {"PATH": f"{empty}:{tmp_path}/missing"})
    path = {"PATH": f"{empty}:{denied}:{tmp_path}/missing"}
    with pytest.raises(PermissionError):  # EACCES beats the ENOENTs around it, even for root
        osfuncs.execvpe("prog", ["prog"], path)
    with pytest.raises(FileNotFoundError):
        osfuncs.execvpe(str(empty / "prog"), ["prog"], path)  # a slash: no search


def test_fallback_to_ctypes_when_the_core_interface_differs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def changed() -> dict[str, object]:
        raise AttributeError("module '_ctypes' has no attribute 'CFuncPtr'")

    monkeypatch.setattr(libc, "bind_with_ctypes_core", changed)
    sys_ = system.System()
    with pytest.raises(OSError) as info:
        sys_.umount("/nonexistent-initkit-test")
    assert info.value.errno in (errno.ENOENT, errno.EPERM, errno.EINVAL)
    assert info.value.filename == "/nonexistent-initkit-test"


def test_link_all_leaves_existing_paths_and_reports_failures(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ls").write_text("a real ls")
    paths = tuple(str(tmp_path / p) for p in ("bin/ls", "bin/cat", "bin/sh"))
    system.System.link_all(paths, "/bin/busybox")
    assert (tmp_path / "bin" / "ls").read_text() == "a real ls"
    assert os.readlink(tmp_path / "bin" / "cat") == "/bin/busybox"
    system.System.link_all(paths, "/bin/busybox")  # again: everything exists, no error
    missing = (str(tmp_path / "nodir/a"), str(tmp_path / "bin/true"), str(tmp_path / "nodir/b"))
    with pytest.raises(OSError) as info:
        system.System.link_all(missing, "/bin/busybox")
    assert info.value.errno == errno.ENOENT and info.value.filename == missing[0]
    assert "2 of 3 paths failed" in str(info.value)
    assert os.readlink(tmp_path / "bin" / "true") == "/bin/busybox"  # the others still made


def test_drain_waits_on_a_tty_and_refuses_other_files(tmp_path: Path) -> None:
    real = system.System()
    leader, follower = os.openpty()
    try:
        os.write(follower, b"status record\n")
        assert real.drain(follower) == 0  # the right TCSBRK: a tty accepts it
        assert os.read(leader, 100) == b"status record\r\n"
    finally:
        os.close(leader)
        os.close(follower)
    with open(tmp_path / "file", "wb") as plain:
        assert real.drain(plain.fileno()) == -1  # ENOTTY: power_off goes on regardless
