"""add_binaries: programs with their closures in an Image, run from an unpacked initrd."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from elf_fixtures import Builder, host_is_x86_64_glibc, host_libc_tree
from realparts import missing_part, unpack_with_cpio

from initbuilder.cpio import write_initrd
from initbuilder.image import Image, Kind
from initbuilder.loader.binaries import BinaryAdder, add_binaries
from initbuilder.loader.closure import Resolver
from initbuilder.loader.elf import read_elf
from initbuilder.loader.nixstore import StoreRelocation
from initbuilder.loader.sysroot import Sysroot
from initbuilder.sources import add_skeleton
from initkit.errors import InitkitError

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unpack(image: Image, where: Path) -> Path:
    """Write ``image`` as a real initrd and unpack it with cpio, as the kernel would."""
    initrd = where / "initrd.cpio"
    write_initrd(image, initrd, compression="none")
    return unpack_with_cpio(initrd, where / "unpacked")


def run_inside(tree: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` from the unpacked tree: chrooted as root, else through the packed
    loader with only the tree's directories to search."""
    if os.geteuid() == 0:
        return subprocess.run(argv, preexec_fn=lambda: os.chroot(tree), cwd="/",
                              env={"PATH": SYSTEM_PATH}, capture_output=True, text=True,
                              timeout=60)
    inside = Sysroot(tree)
    loader = inside.host("/lib64/ld-linux-x86-64.so.2")
    dirs = ":".join(inside.host(d) for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"))
    return subprocess.run([loader, "--inhibit-cache", "--library-path", dirs,
                           inside.host(argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def system_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Look names up on the system PATH (not a developer's shims)."""
    host_is_x86_64_glibc()
    monkeypatch.setenv("PATH", SYSTEM_PATH)


def test_python3_and_busybox_run_from_the_unpacked_initrd(system_path: None,
                                                          tmp_path: Path) -> None:
    if not shutil.which("python3") or not shutil.which("busybox"):
        missing_part("python3 and busybox must be installed")
    image = Image()
    add_skeleton(image)
    invoked = add_binaries(image, ["python3", "busybox"])
    assert invoked == [shutil.which("python3"), shutil.which("busybox")]
    tree = unpack(image, tmp_path)
    python = run_inside(tree, [invoked[0], "--version"])
    assert python.returncode == 0, python.stderr
    assert python.stdout.startswith("Python 3.")
    box = run_inside(tree, [invoked[1], "echo", "packed"])
    assert (box.returncode, box.stdout) == (0, "packed\n"), box.stderr
    if os.geteuid() == 0:
        listing = run_inside(tree, ["/lib64/ld-linux-x86-64.so.2", "--list", invoked[0]])
        assert listing.returncode == 0 and "not found" not in listing.stdout


def test_symlinks_on_the_way_are_kept(system_path: None) -> None:
    image = Image()
    add_binaries(image, ["/usr/bin/python3"])
    python = image.get("usr/bin/python3")
    assert python is not None and python.kind is Kind.SYMLINK
    assert python.target == os.readlink("/usr/bin/python3")
    for link in ("/lib64", "/usr/lib64/ld-linux-x86-64.so.2", "/lib"):
        if os.path.islink(link):
            entry = image.get(link)
            assert entry is not None and entry.kind is Kind.SYMLINK
            assert entry.target == os.readlink(link)
    real = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    entry = image.get(image.resolve(real))
    assert entry is not None and entry.kind is Kind.FILE and entry.host == Path(real)


def test_a_shared_object_brings_its_closure(system_path: None) -> None:
    gconv = "/usr/lib/x86_64-linux-gnu/gconv/EUC-KR.so"
    if not os.path.exists(gconv):
        missing_part(f"{gconv} (libc6's gconv modules) is missing")
    image = Image()
    assert add_binaries(image, [gconv]) == [gconv]
    for path in (gconv, "/usr/lib/x86_64-linux-gnu/gconv/libKSC.so",
                 os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")):
        entry = image.get(image.resolve(path))
        assert entry is not None and entry.kind is Kind.FILE, path


def test_shebang_scripts_bring_their_interpreters(system_path: None, tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/usr/bin/env -S python3 -u\nprint('hi')\n")
    script.chmod(0o755)
    shell = tmp_path / "job"
    shell.write_text("#!/bin/sh -e\necho hi\n")
    shell.chmod(0o755)
    image = Image()
    assert add_binaries(image, [str(script), str(shell)]) == [str(script), str(shell)]
    for path in (str(script), "/usr/bin/env", os.path.realpath(shutil.which("python3") or ""),
                 os.path.realpath("/bin/sh")):
        entry = image.get(image.resolve(path))
        assert entry is not None and entry.kind is Kind.FILE, path


def test_name_lookup_and_errors(build: Builder, monkeypatch: pytest.MonkeyPatch,
                                caplog: pytest.LogCaptureFixture) -> None:
    root = build.root
    build.lib("lib/libmid.so", needed=["libnothere.so.3"])
    build.exe("bin/prog", needed=["libmid.so"], runpath=f"{root}/lib")
    monkeypatch.setenv("PATH", f"relative:{root}/bin:/usr/bin")
    with pytest.raises(InitkitError, match=rf"libnothere.so.3: not found \(needed by "
                                           rf"{root}/bin/prog -> libmid.so -> "
                                           r"libnothere.so.3\); .*--allow-missing"):
        add_binaries(Image(), ["prog"])
    caplog.set_level(logging.INFO, logger="initkit")
    image = Image()
    assert add_binaries(image, ["prog"], allow_missing=True) == [f"{root}/bin/prog"]
    assert "continuing without it" in caplog.text
    assert f"added {root}/lib/libmid.so" in caplog.text
    with pytest.raises(InitkitError, match="not found on PATH"):
        add_binaries(Image(), ["no-such-program-anywhere"])
    (root / "data.txt").write_text("plain text\n")
    with pytest.raises(InitkitError, match="neither an ELF file nor a #! script"):
        add_binaries(Image(), [str(root / "data.txt")])


def test_library_path_finds_get_a_link_in_the_default_directory(build: Builder) -> None:
    """The initrd has no LD_LIBRARY_PATH (nor ld.so.cache): what only they found must
    still be found by the guest loader's default search."""
    build.lib("extra/libextra.so.2")
    exe = build.exe("bin/prog", needed=["libextra.so.2"])
    image = Image()
    add_binaries(image, [str(exe)], library_path=[f"{build.root}/extra"])
    link = image.get(image.resolve("/lib/x86_64-linux-gnu/libextra.so.2"))
    assert link is not None and link.kind is Kind.SYMLINK
    assert link.target == f"{build.root}/extra/libextra.so.2"
    libc = image.get(image.resolve(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6")))
    assert libc is not None and libc.kind is Kind.FILE  # in a default directory: no link


@pytest.fixture
def fake_store() -> Iterator[Path]:
    """A short store directory standing in for /nix/store (which tests must not touch)."""
    path = Path(tempfile.mkdtemp(prefix="ik", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_store_files_are_relocated_and_still_load(build: Builder, fake_store: Path,
                                                  tmp_path: Path) -> None:
    glibc = fake_store / ("a" * 32 + "-glibc-2.36")
    hello = fake_store / ("b" * 32 + "-hello-1.0")
    foo = fake_store / ("c" * 32 + "-foo-1.0")
    profile = fake_store / ("d" * 32 + "-profile")
    (glibc / "lib").mkdir(parents=True)
    for name in ("ld-linux-x86-64.so.2", "libc.so.6"):
        shutil.copy2(os.path.realpath(f"/lib/x86_64-linux-gnu/{name}"), glibc / "lib" / name)
    loader = glibc / "lib/ld-linux-x86-64.so.2"
    build.root = fake_store  # build straight into the store
    build.lib(f"{foo.name}/lib/libfoo.so")
    build.exe(f"{hello.name}/bin/hello", needed=["libfoo.so"],
              runpath=f"{glibc}/lib:{foo}/lib", flags=[f"-Wl,--dynamic-linker={loader}"],
              source='#include <stdio.h>\nint main(void) { puts("hello from the store"); }\n')
    (profile / "bin").mkdir(parents=True)
    os.symlink(f"{hello}/bin/hello", profile / "bin/hello")
    script = hello / "bin/greet"
    script.write_text(f"#!{profile}/bin/hello\n")
    script.chmod(0o755)

    image = Image()
    relocation = StoreRelocation(store=str(fake_store), target="/usr/lib/initkit/store")
    adder = BinaryAdder(image, Resolver(), relocation=relocation)
    invoked = adder.add(str(profile / "bin/hello"))
    greet = adder.add(str(script))
    moved = relocation.relocate(str(profile / "bin/hello"))
    assert invoked == moved and moved.startswith("/usr/lib/initkit/store/")
    assert len(moved) == len(str(profile / "bin/hello"))
    assert not [p for p, _ in image.items() if p.startswith(str(fake_store).lstrip("/"))]
    packed = image.get(image.resolve(relocation.relocate(f"{hello}/bin/hello")))
    assert packed is not None and packed.host is not None
    info = read_elf(str(packed.host))
    assert info.interpreter == relocation.relocate(str(loader))
    assert info.runpath == f"{relocation.relocate(str(glibc))}/lib:" \
                           f"{relocation.relocate(str(foo))}/lib"
    link = image.get(image.resolve(relocation.relocate(str(profile / "bin"))) + "/hello")
    assert link is not None and link.target == relocation.relocate(f"{hello}/bin/hello")

    if os.geteuid() != 0:
        pytest.skip("running the relocated program needs chroot (root)")
    tree = unpack(image, tmp_path)
    for argv in ([invoked], [greet]):
        proc = run_inside(tree, argv)
        assert (proc.returncode, proc.stdout) == (0, "hello from the store\n"), proc.stderr


def test_root_packs_the_trees_files(build: Builder, tmp_path: Path) -> None:
    root = host_libc_tree(tmp_path / "tree")
    libdir = root / "usr/lib/x86_64-linux-gnu"
    (root / "etc").mkdir()
    (root / "etc/ld.so.conf").write_text("/opt/lib\n")
    build.lib("tree/opt/lib/libtree.so.1", soname="libtree.so.1")
    build.exe("tree/usr/bin/prog", needed=["libtree.so.1"])
    image = Image()
    assert add_binaries(image, ["/usr/bin/prog"], root=root) == ["/usr/bin/prog"]
    ld = image.get("usr/lib64/ld-linux-x86-64.so.2")
    assert ld is not None and ld.target == "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    libc = image.get("usr/lib/x86_64-linux-gnu/libc.so.6")
    assert libc is not None and libc.host == libdir / "libc.so.6"
    # Found through the tree's ld.so.conf: the initrd has no cache, so a link in $LIB.
    tree_link = image.get("usr/lib/x86_64-linux-gnu/libtree.so.1")
    assert tree_link is not None and tree_link.target == "/opt/lib/libtree.so.1"
    if os.geteuid() == 0:
        unpacked = unpack(image, tmp_path)
        proc = run_inside(unpacked, ["/usr/bin/prog"])
        assert proc.returncode == 0, proc.stderr
