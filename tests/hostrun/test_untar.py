"""hostrun.untar: a tar stream from an untrusted guest never writes outside its target."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from tarbuild import end, header, member, pax, snapshot

from hostrun.untar import UnsafeArchive, extract
from initkit.errors import InitkitError

LIMITS = {"max_bytes": 1 << 26, "max_entries": 1000}


def unpack(data: bytes, target: Path, **limits: int) -> None:
    extract(io.BytesIO(data).read, target, **{**LIMITS, **limits})


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, Path]:
    """(target, outside): an extraction target and a directory beside it with a file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    return tmp_path / "target", outside


def refused(data: bytes, place: tuple[Path, Path], match: str) -> None:
    target = place[0]
    before = snapshot(target.parent, skip=target)
    with pytest.raises(UnsafeArchive, match=match):
        unpack(data, target)
    assert snapshot(target.parent, skip=target) == before


def test_a_normal_archive_from_tarfile(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    (source / "d" / "f").write_bytes(b"data" * 1000)
    (source / "link").symlink_to("d/f")
    os.link(source / "d" / "f", source / "hard")
    (source / ("p" * 150)).write_bytes(b"long name")  # a PAX path record
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(source, arcname=".")
    done = extract(io.BytesIO(buffer.getvalue()).read, tmp_path / "out", **LIMITS)
    out = tmp_path / "out"
    assert (out / "d" / "f").read_bytes() == b"data" * 1000
    assert os.readlink(out / "link") == "d/f"
    assert (out / "hard").stat().st_ino == (out / "d" / "f").stat().st_ino
    assert (out / ("p" * 150)).read_bytes() == b"long name"
    assert done.entries == 6 and done.data_bytes == 4000 + 9


def test_gnu_long_names(tmp_path: Path) -> None:
    long = b"g" * 200 + b"/" + b"h" * 200
    data = member(b"././@LongLink", b"L", long + b"\0") + member(b"short", data=b"x") + end()
    unpack(data, tmp_path / "out")
    assert (tmp_path / "out" / os.fsdecode(long)).read_bytes() == b"x"


@pytest.mark.parametrize("name", [b"../escape", b"a/../../escape", b"a/../b", b".."])
def test_dotdot_names_are_refused(name: bytes, place: tuple[Path, Path]) -> None:
    refused(member(name, data=b"evil") + end(), place, "climbs out")


def test_dotdot_in_a_pax_path_is_refused(place: tuple[Path, Path]) -> None:
    refused(pax({b"path": b"../outside/precious"}) + member(b"innocent", data=b"evil")
            + end(), place, "climbs out")


def test_absolute_names_are_refused(place: tuple[Path, Path]) -> None:
    outside = place[1]
    refused(member(os.fsencode(outside / "new"), data=b"evil") + end(), place, "absolute")
    assert not (outside / "new").exists()


@pytest.mark.parametrize(("name", "link"), [
    (b"l", b"../outside"), (b"a/l", b"../../outside"), (b"a/l", b"a/../../x"),
    (b"a/l", b"/etc"), (b"l", b".."), (b"a/l", b"b/../../x"), (b"a/l", b"x/../y"),
    (b"a/l", b""),
])
def test_symlinks_that_may_lead_out_are_refused(name: bytes, link: bytes,
                                                place: tuple[Path, Path]) -> None:
    refused(member(b"a/", b"5") + member(name, b"2", link=link) + end(), place,
            "outside|empty")


@pytest.mark.parametrize(("name", "link"), [(b"a/l", b"../b"), (b"l", b"a/b/c"),
                                            (b"a/b/l", b"../../c"), (b"l", b"./a/./b"),
                                            (b"a/l", b"..")])
def test_symlinks_that_stay_inside_are_kept(name: bytes, link: bytes, tmp_path: Path) -> None:
    unpack(member(name, b"2", link=link) + end(), tmp_path / "out")
    assert os.readlink(tmp_path / "out" / os.fsdecode(name)) == os.fsdecode(link)


def test_the_chained_link_escape_is_refused(place: tuple[Path, Path]) -> None:
    """a/s -> .. is inside; a/l -> s/.. would be inside by its text and outside for the
    kernel (a/s/.. is the target's parent): no '..' after another component."""
    refused(member(b"a/", b"5") + member(b"a/s", b"2", link=b"..")
            + member(b"a/l", b"2", link=b"s/..") + end(), place, "may lead outside")


def test_a_symlink_in_the_archive_is_never_followed(place: tuple[Path, Path]) -> None:
    target, _ = place
    refused(member(b"sub/", b"5") + member(b"d", b"2", link=b"sub")
            + member(b"d/file", data=b"through the link") + end(), place,
            "passes through 'd'")
    assert not (target / "sub" / "file").exists()


def test_a_symlink_already_in_the_target_is_never_followed(place: tuple[Path, Path]) -> None:
    target, outside = place
    target.mkdir()
    (target / "pre").symlink_to(outside)
    refused(member(b"pre/precious", data=b"overwritten") + end(), place,
            "passes through 'pre'")
    # A member at the link's own path replaces the link, not what it points to.
    unpack(member(b"pre", data=b"a file now") + end(), target)
    assert (target / "pre").read_bytes() == b"a file now"
    assert (outside / "precious").read_text() == "keep me"


@pytest.mark.parametrize("link", [b"/etc/passwd", b"../outside/precious", b"never-unpacked"])
def test_hard_links_out_or_to_unknown_files_are_refused(link: bytes,
                                                        place: tuple[Path, Path]) -> None:
    refused(member(b"h", b"1", link=link) + end(), place, "absolute|climbs|not a file")


def test_a_hard_link_to_a_file_replaced_by_a_symlink_is_refused(place: tuple[Path, Path]
                                                                 ) -> None:
    refused(member(b"f", data=b"x") + member(b"f", b"2", link=b"g") + member(b"h", b"1",
                                                                            link=b"f")
            + end(), place, "not a file unpacked")


@pytest.mark.parametrize(("kind", "what"), [(b"3", "character device"),
                                            (b"4", "block device"), (b"6", "fifo"),
                                            (b"S", "tar type"), (b"V", "tar type")])
def test_special_members_are_refused(kind: bytes, what: str, place: tuple[Path, Path]) -> None:
    target, _ = place
    refused(header(b"node", kind, major=1, minor=3) + end(), place, what)
    assert not (target / "node").exists()


def test_declared_sizes_past_the_limit_are_refused_before_reading(tmp_path: Path) -> None:
    reads: list[int] = []
    stream = io.BytesIO(header(b"big", size=1 << 40))

    def read(size: int) -> bytes:
        reads.append(size)
        return stream.read(size)

    with pytest.raises(UnsafeArchive, match="larger than the limit"):
        extract(read, tmp_path / "out", max_bytes=1 << 20, max_entries=10)
    assert sum(reads) == 512  # only the header was read


def test_oversized_extension_headers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="extension header"):
        unpack(header(b"././@PaxHeader", b"x", size=1 << 30), tmp_path / "out")


def test_too_many_members(tmp_path: Path) -> None:
    data = b"".join(member(f"f{n}".encode(), data=b"") for n in range(11)) + end()
    with pytest.raises(UnsafeArchive, match="more than 10 members"):
        unpack(data, tmp_path / "out", max_entries=10)


@pytest.mark.parametrize(("data", "match"), [
    (header(b"f", checksum=1) + end(), "checksum"),
    (b"not a tar stream at all" * 30, "checksum"),
    (header(b"f", size=100) + b"short", "ends inside"),
    (b"", "ends inside a header"),
    (pax({b"size": b"x12"}) + end(), "not a number"),
    (member(b"././@PaxHeader", b"x", b"garbage\n") + end(), "malformed PAX"),
])
def test_damaged_streams(data: bytes, match: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match=match):
        unpack(data, tmp_path / "out")


def test_modes_lose_set_id_bits_and_owners_are_ours(tmp_path: Path) -> None:
    unpack(member(b"d/", b"5", mode=0o3755) + member(b"d/s", data=b"x", mode=0o6755)
           + end(), tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out" / "d" / "s").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "d").stat().st_mode) == 0o755
    assert (tmp_path / "out" / "d" / "s").stat().st_uid == os.getuid()


def test_a_file_over_a_directory_is_an_error_not_a_merge(tmp_path: Path) -> None:
    (tmp_path / "out" / "d").mkdir(parents=True)
    with pytest.raises(InitkitError, match="cannot be put in place"):
        unpack(member(b"d", data=b"x") + end(), tmp_path / "out")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".initkit")]
