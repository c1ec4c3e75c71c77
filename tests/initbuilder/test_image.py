"""The Image model: normalisation, implied parents, conflicts, symlinks on the way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from initbuilder.image import Image, Kind, normalize
from initkit.errors import InitkitError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/usr/bin/env", "usr/bin/env"), ("usr//bin/./env", "usr/bin/env"),
     ("a/b/../c", "a/c"), ("./x", "x"), ("/a/", "a")],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize("raw", ["..", "../etc/passwd", "/a/../../b", "a/../..", "/", "", "a\0b"])
def test_normalize_refuses_escape_root_and_nul(raw: str) -> None:
    with pytest.raises(InitkitError):
        normalize(raw)


def test_parents_are_implied_0755_and_explicit_mode_wins() -> None:
    image = Image()
    image.add_file("/a/b/c", data=b"x")
    assert image.get("a").kind is Kind.DIR and image.get("a").mode == 0o755
    image.add_directory("a/b", 0o700)
    assert image.get("a/b").mode == 0o700
    assert [p for p in image] == ["a", "a/b", "a/b/c"]


def test_identical_entry_twice_is_fine_different_is_an_error_naming_both(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_bytes(b"same")
    two.write_bytes(b"different")
    image = Image()
    image.add_file("x", host=one, mode=0o644, source="first input")
    image.add_file("x", host=one, mode=0o644, source="again")
    with pytest.raises(InitkitError) as err:
        image.add_file("x", host=two, mode=0o644, source="second input")
    assert "first input" in str(err.value) and "second input" in str(err.value)


def test_same_content_from_another_host_path_is_identical(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"lib")
    (tmp_path / "b").write_bytes(b"lib")
    image = Image()
    image.add_file("lib/x.so", host=tmp_path / "a", mode=0o755)
    image.add_file("lib/x.so", host=tmp_path / "b", mode=0o755)
    assert image.get("lib/x.so").host == tmp_path / "a"


def test_weak_defaults_yield_to_explicit_entries() -> None:
    image = Image()
    image.add_directory("tmp", 0o1777, weak=True)
    image.add_directory("tmp", 0o755)
    assert image.get("tmp").mode == 0o755
    image.add_directory("tmp", 0o700, weak=True)  # a default never overrides
    assert image.get("tmp").mode == 0o755


def test_file_under_a_file_is_an_error() -> None:
    image = Image()
    image.add_file("etc", data=b"")
    with pytest.raises(InitkitError, match="not a directory"):
        image.add_file("etc/passwd", data=b"")


def test_paths_through_an_image_symlink_land_at_its_target() -> None:
    image = Image()
    image.add_symlink("lib64", "usr/lib64")
    stored = image.add_file("/lib64/ld.so", data=b"ld")
    assert stored == "usr/lib64/ld.so"
    image.add_symlink("usr/lib/abs", "/opt")
    assert image.add_file("usr/lib/abs/f", data=b"") == "opt/f"


def test_symlink_over_a_populated_directory_is_an_error() -> None:
    image = Image()
    image.add_file("lib/x", data=b"")
    with pytest.raises(InitkitError, match="conflicting"):
        image.add_symlink("lib", "usr/lib")


def test_hardlink_needs_a_regular_file() -> None:
    image = Image()
    image.add_directory("d")
    with pytest.raises(InitkitError):
        image.add_hardlink("l", "d")
    with pytest.raises(InitkitError):
        image.add_hardlink("l", "missing")
    image.add_file("f", data=b"x", mode=0o640)
    image.add_hardlink("l", "/f")
    assert image.get("l").target == "f" and image.get("l").mode == 0o640


def test_add_host_path_recurses_and_keeps_symlinks(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_text("hi")
    os.chmod(tree / "sub" / "f", 0o600)
    (tree / "link").symlink_to("sub/f")
    image = Image()
    image.add_host_path(tree, "/opt/t")
    assert image.get("opt/t/link").kind is Kind.SYMLINK
    assert image.get("opt/t/link").target == "sub/f"
    assert image.get("opt/t/sub/f").mode == 0o600
    with pytest.raises(InitkitError, match="no such file"):
        image.add_host_path(tmp_path / "missing", "x")


def test_add_host_file_keeping_links_recreates_each_link(tmp_path: Path) -> None:
    real = tmp_path / "usr" / "lib"
    real.mkdir(parents=True)
    (real / "libz.so.1.2").write_bytes(b"z")
    (real / "libz.so.1").symlink_to("libz.so.1.2")
    (tmp_path / "lib").symlink_to("usr/lib")
    image = Image()
    final = image.add_host_file_keeping_links(tmp_path / "lib" / "libz.so.1")
    root = str(tmp_path).lstrip("/")
    assert final == f"{root}/usr/lib/libz.so.1.2"
    assert image.get(f"{root}/lib").target == "usr/lib"
    assert image.get(f"{root}/usr/lib/libz.so.1").target == "libz.so.1.2"
    # The same file again (through the same links) is not a conflict.
    image.add_host_file_keeping_links(tmp_path / "lib" / "libz.so.1")


def test_a_real_directory_in_the_image_is_kept_where_the_host_has_a_link(
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
    stored = image.add_host_file_keeping_links(tmp_path / "lib" / "libc.so.6")
    assert stored == f"{root}/lib/libc.so.6"
    assert image.get(f"{root}/lib").kind is Kind.DIR
