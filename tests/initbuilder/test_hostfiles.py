"""HostFiles: the one walker from a host tree (the host, or --root) into an Image."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from initbuilder.hostfiles import HostFiles
from initbuilder.image import Image, Kind
from initbuilder.loader.nixstore import StoreRelocation
from initbuilder.loader.sysroot import Sysroot
from initkit.errors import InitkitError


def test_copy_recurses_and_keeps_symlinks_and_fifos(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("hi")
    os.chmod(tree / "sub" / "f", 0o600)
    (tree / "link").symlink_to("sub/f")
    os.mkfifo(tree / "pipe", 0o640)
    image = Image()
    files = HostFiles(image)
    assert files.copy(tree, "/opt/t") == "opt/t"
    assert image["opt/t/link"].kind is Kind.SYMLINK
    assert image["opt/t/link"].target == "sub/f"
    assert image["opt/t/sub/f"].mode == 0o600
    assert image["opt/t/pipe"].kind is Kind.FIFO and image["opt/t/pipe"].mode == 0o640
    with pytest.raises(InitkitError, match="no such file"):
        files.copy(tmp_path / "missing", "x")


def test_copy_refuses_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(InitkitError, match="socket"):
            HostFiles(Image()).copy(path, "s")


def test_add_recreates_each_link_on_the_way(tmp_path: Path) -> None:
    real = tmp_path / "usr" / "lib"
    real.mkdir(parents=True)
    (real / "libz.so.1.2").write_bytes(b"z")
    (real / "libz.so.1").symlink_to("libz.so.1.2")
    (tmp_path / "lib").symlink_to("usr/lib")
    image = Image()
    files = HostFiles(image)
    final = files.add(str(tmp_path / "lib" / "libz.so.1"))
    root = str(tmp_path)
    assert final == f"{root}/usr/lib/libz.so.1.2"
    assert image[f"{root}/lib"].target == "usr/lib"
    assert image[f"{root}/usr/lib/libz.so.1"].target == "libz.so.1.2"
    assert image[final].host == real / "libz.so.1.2"
    # The same file again, by another walker too, is not a conflict.
    HostFiles(image).add(str(tmp_path / "lib" / "libz.so.1"))


def test_a_real_directory_in_the_image_is_kept_where_the_tree_has_a_link(
    tmp_path: Path,
) -> None:
    # Kernel modules made /lib a real directory before libraries reached through the
    # host's lib -> usr/lib link: the library goes through the directory.
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libc.so.6").write_bytes(b"libc")
    (tmp_path / "lib").symlink_to("usr/lib")
    root = str(tmp_path).lstrip("/")
    image = Image()
    image.add_file(f"{root}/lib/modules/fuse.ko", data=b"ko")
    stored = HostFiles(image).add(str(tmp_path / "lib" / "libc.so.6"))
    assert stored == f"/{root}/lib/libc.so.6"
    assert image[f"{root}/lib"].kind is Kind.DIR
    # An implied directory with nothing in it is only a default: the link replaces it.
    image = Image()
    image.add_directory(f"{root}/lib", weak=True)
    HostFiles(image).add(str(tmp_path / "lib" / "libc.so.6"))
    assert image[f"{root}/lib"].kind is Kind.SYMLINK


def test_inside_a_root_links_resolve_in_the_tree_and_dotdot_after_them(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (tree / "usr/lib/x86_64-linux-gnu/ld.so").write_bytes(b"ld")
    (tree / "usr/share").mkdir()
    (tree / "usr/share/data").write_bytes(b"d")
    (tree / "lib64").mkdir()
    # Absolute: on the host this would name the host's own /usr.
    (tree / "lib64/ld.so").symlink_to("/usr/lib/x86_64-linux-gnu/ld.so")
    (tree / "arch").symlink_to("usr/lib/x86_64-linux-gnu")
    image = Image()
    files = HostFiles(image, Sysroot(tree))
    assert files.add("/lib64/ld.so") == "/usr/lib/x86_64-linux-gnu/ld.so"
    assert image["lib64/ld.so"].target == "/usr/lib/x86_64-linux-gnu/ld.so"
    assert image["usr/lib/x86_64-linux-gnu/ld.so"].host == \
        tree / "usr/lib/x86_64-linux-gnu/ld.so"
    # arch/../share is usr/lib/share's sibling, as the kernel resolves it: ".." after the link.
    with pytest.raises(InitkitError, match="cannot add it"):
        files.add("/arch/../share/data")
    (tree / "usr/lib/share").symlink_to("../share")
    assert files.add("/arch/../share/data") == "/usr/share/data"
    assert image["usr/lib/share"].target == "../share"


def test_a_link_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(InitkitError, match="too many levels of symbolic links"):
        HostFiles(Image(), Sysroot(tmp_path)).add("/a")


@pytest.fixture
def short_store() -> Iterator[Path]:
    """A store directory no longer than the private one, so its paths can move."""
    path = Path(tempfile.mkdtemp(prefix="ik", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_store_files_move_with_their_links_and_shebang(short_store: Path) -> None:
    store = short_store
    tool = store / ("a" * 32 + "-tool")
    profile = store / ("b" * 32 + "-profile")
    (tool / "bin").mkdir(parents=True)
    (tool / "bin/run").write_text(f"#!{tool}/bin/sh -e\necho {tool}\n")
    (profile / "bin").mkdir(parents=True)
    (profile / "bin/run").symlink_to(tool / "bin/run")
    relocation = StoreRelocation(store=str(store), target="/usr/lib/initkit/store")
    image = Image()
    files = HostFiles(image, relocation=relocation)
    final = files.add(str(profile / "bin/run"), "test")
    assert final == relocation.relocate(str(tool / "bin/run"))
    assert not [p for p, _ in image.items() if p.startswith(str(store).lstrip("/"))]
    link = image.get(relocation.relocate(str(profile / "bin/run")))
    assert link is not None and link.target == final
    packed = image.get(final)
    assert packed is not None and packed.host is not None and "relocated" in packed.source
    # Only the #! line names the new place; the body still names the store (mounted there).
    assert packed.host.read_text() == f"#!{relocation.relocate(str(tool))}/bin/sh -e\n" \
                                      f"echo {tool}\n"
    assert packed.mode == (tool / "bin/run").stat().st_mode & 0o7777
