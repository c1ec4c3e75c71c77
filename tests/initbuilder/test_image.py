"""The Image model: normalisation, implied parents, conflicts, symlinks on the way."""

from __future__ import annotations

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


def test_indexing_is_get_that_raises_for_a_missing_path() -> None:
    image = Image()
    image.add_file("/a/b", data=b"x")
    assert image["/a/b"] is image.get("a/b") is image["a/b"]
    assert image.get("a/c") is None
    with pytest.raises(KeyError):
        image["a/c"]


def test_parents_are_implied_0755_and_explicit_mode_wins() -> None:
    image = Image()
    image.add_file("/a/b/c", data=b"x")
    assert image["a"].kind is Kind.DIR and image["a"].mode == 0o755
    image.add_directory("a/b", 0o700)
    assert image["a/b"].mode == 0o700
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
    assert image["lib/x.so"].host == tmp_path / "a"


def test_weak_defaults_yield_to_explicit_entries() -> None:
    image = Image()
    image.add_directory("tmp", 0o1777, weak=True)
    image.add_directory("tmp", 0o755)
    assert image["tmp"].mode == 0o755
    image.add_directory("tmp", 0o700, weak=True)  # a default never overrides
    assert image["tmp"].mode == 0o755


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
    assert image["l"].target == "f" and image["l"].mode == 0o640


def test_has_children_sees_entries_below_a_path_only() -> None:
    image = Image()
    image.add_file("usr/lib/libz.so.1", data=b"z")
    image.add_directory("opt")
    assert image.has_children("usr") and image.has_children("/usr/lib")
    assert not image.has_children("usr/lib/libz.so.1") and not image.has_children("opt")
    assert not image.has_children("us")  # a name prefix is not a parent


def test_a_populated_weak_directory_is_not_replaced_by_a_file() -> None:
    image = Image()
    image.add_file("lib/modules/fuse.ko", data=b"ko")  # "lib" is an implied, weak directory
    with pytest.raises(InitkitError, match="conflicting entries for /lib"):
        image.add_symlink("lib", "usr/lib")
    image.add_directory("empty", weak=True)
    image.add_symlink("empty", "usr/lib")  # an empty default yields
    assert image["empty"].kind is Kind.SYMLINK


def test_device_kinds_are_the_enum_and_a_wrong_one_is_a_bug() -> None:
    image = Image()
    image.add_device("dev/vda", Kind.BLOCK, 254, 0)
    assert image["dev/vda"].kind is Kind.BLOCK
    for wrong in ("c", "char", Kind.FIFO):
        with pytest.raises(ValueError, match=r"Kind\.CHAR or Kind\.BLOCK"):
            image.add_device("dev/x", wrong, 1, 1)  # type: ignore[arg-type]
