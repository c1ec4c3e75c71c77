"""The newc writer and reader, checked against libarchive, GNU cpio and bsdtar."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import libarchive
import pytest
from realparts import need, unpack_with_cpio

from initbuilder.cpio import COMPRESSIONS, write_initrd
from initbuilder.image import Image, Kind
from initbuilder.reader import read_initrd
from initbuilder.sources import add_initrd, add_skeleton
from initkit.errors import InitkitError


def sample_image(tmp_path: Path) -> Image:
    host = tmp_path / "host.bin"
    host.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    image = Image()
    add_skeleton(image)
    image.add_file("bin/prog", host=host, mode=0o755)
    image.add_hardlink("bin/prog-alias", "bin/prog")
    image.add_hardlink("sbin/prog2", "bin/prog")
    image.add_file("etc/motd", data=b"hello\n", mode=0o644, uid=1000, gid=100)
    image.add_file("etc/empty", data=b"")
    image.add_symlink("bin/sh", "/bin/prog")
    image.add_device("dev/vda", Kind.BLOCK, 254, 0, 0o660)
    image.add_fifo("run/fifo", 0o600)
    return image


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_every_compression_reads_back_with_libarchive_and_ours(
    tmp_path: Path, compression: str
) -> None:
    if compression == "lz4":
        need("lz4")
    if compression == "xz":
        need("xz")
    image = sample_image(tmp_path)
    out = tmp_path / "initrd"
    write_initrd(image, out, compression=compression)
    ours = {m.path: m for m in read_initrd(out)}
    assert set(ours) == set(image)
    assert ours["etc/motd"].size == 6 and ours["etc/motd"].uid == 1000
    theirs = {}
    with libarchive.file_reader(str(out)) as archive:
        for entry in archive:
            theirs[entry.pathname] = (entry.isdir, entry.issym, b"".join(entry.get_blocks()))
    assert set(theirs) == set(image)
    assert theirs["etc/motd"][2] == b"hello\n"
    assert theirs["bin/sh"][1]


def test_kernel_compatible_framing(tmp_path: Path) -> None:
    need("lz4")
    need("xz")
    image = sample_image(tmp_path)
    write_initrd(image, tmp_path / "i.lz4")
    write_initrd(image, tmp_path / "i.xz")
    # The kernel reads only legacy lz4 frames and xz streams checked with CRC32.
    assert (tmp_path / "i.lz4").read_bytes()[:4] == b"\x02\x21\x4c\x18"
    flags = (tmp_path / "i.xz").read_bytes()[6:8]
    assert flags == b"\x00\x01"  # stream flags: check type 1 = CRC32


def test_gnu_cpio_and_bsdtar_agree(tmp_path: Path) -> None:
    cpio = need("cpio")
    bsdtar = need("bsdtar")
    image = sample_image(tmp_path)
    out = tmp_path / "initrd.cpio"
    write_initrd(image, out)
    listing = subprocess.run([cpio, "-itv", "--quiet"], stdin=out.open("rb"),
                             capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] if "->" not in line else line.split()[-3]
             for line in listing.splitlines()]
    assert names == list(image)
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line
             for line in listing.splitlines()}
    assert lines["dev/console"].startswith("crw-------") and "5,   1" in lines["dev/console"]
    assert lines["dev/vda"].startswith("brw-rw----") and "254,   0" in lines["dev/vda"]
    assert lines["tmp"].startswith("drwxrwxrwt")
    assert lines["run/fifo"].startswith("prw-------")
    tar = subprocess.run([bsdtar, "-tf", str(out)], capture_output=True, text=True, check=True)
    assert tar.stdout.split() == list(image)


def test_hardlinks_survive_extraction(tmp_path: Path) -> None:
    image = sample_image(tmp_path)
    out = tmp_path / "initrd.cpio"
    write_initrd(image, out)
    root = unpack_with_cpio(out, tmp_path / "x")
    names = [root / "bin/prog", root / "bin/prog-alias", root / "sbin/prog2"]
    inodes = {p.stat().st_ino for p in names}
    assert len(inodes) == 1 and names[0].stat().st_nlink == 3
    assert names[1].read_bytes() == (tmp_path / "host.bin").read_bytes()
    ours = {m.path: m for m in read_initrd(out, with_data=True)}
    assert ours["bin/prog-alias"].kind is Kind.HARDLINK
    assert ours["bin/prog-alias"].target == "bin/prog"
    assert ours["sbin/prog2"].data == (tmp_path / "host.bin").read_bytes()


@pytest.mark.parametrize("compression", ["none", "gzip", "xz", "zstd", "lz4"])
def test_same_inputs_same_bytes(tmp_path: Path, compression: str) -> None:
    first, second = tmp_path / "1", tmp_path / "2"
    write_initrd(sample_image(tmp_path), first, compression=compression)
    os.utime(tmp_path / "host.bin", (1, 1))  # host mtimes must not leak in
    write_initrd(sample_image(tmp_path), second, compression=compression)
    assert first.read_bytes() == second.read_bytes()
    if compression == "gzip":  # no build time in the gzip header either
        assert first.read_bytes()[4:8] == b"\0\0\0\0"


def test_mtime_is_the_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = sample_image(tmp_path)
    write_initrd(image, tmp_path / "a")
    assert {m.mtime for m in read_initrd(tmp_path / "a")} == {0}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    write_initrd(image, tmp_path / "b")
    assert {m.mtime for m in read_initrd(tmp_path / "b")} == {1700000000}
    write_initrd(image, tmp_path / "c", mtime=42)
    assert {m.mtime for m in read_initrd(tmp_path / "c")} == {42}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(InitkitError, match="SOURCE_DATE_EPOCH"):
        write_initrd(image, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_inodes_are_numbered_in_archive_order(tmp_path: Path) -> None:
    write_initrd(sample_image(tmp_path), tmp_path / "i")
    members = read_initrd(tmp_path / "i")
    distinct = []
    for m in members:
        if m.ino not in distinct:
            distinct.append(m.ino)
    assert distinct == list(range(1, len(distinct) + 1))


def test_concatenated_archives_are_all_read(tmp_path: Path) -> None:
    early = Image()
    early.add_file("kernel/x86/microcode/GenuineIntel.bin", data=b"ucode")
    main = sample_image(tmp_path)
    write_initrd(early, tmp_path / "early.cpio")
    write_initrd(main, tmp_path / "main.zst")
    both = tmp_path / "both.img"
    both.write_bytes((tmp_path / "early.cpio").read_bytes() + b"\0" * 512
                     + (tmp_path / "main.zst").read_bytes())
    members = read_initrd(both)
    assert {m.archive for m in members} == {0, 1}
    assert members[-1].archive == 1
    paths = [m.path for m in members]
    assert "kernel/x86/microcode/GenuineIntel.bin" in paths and "etc/motd" in paths


def _raw_newc(name: str, data: bytes = b"x", mode: int = 0o100644) -> bytes:
    def record(path: str, payload: bytes, mode: int) -> bytes:
        fields = [1, mode, 0, 0, 1, 0, len(payload), 0, 0, 0, 0, len(path) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        blob = header + path.encode() + b"\0"
        blob += b"\0" * (-len(blob) % 4)
        return blob + payload + b"\0" * (-len(payload) % 4)

    return record(name, data, mode) + record("TRAILER!!!", b"", 0)


@pytest.mark.parametrize("evil", ["../etc/shadow", "/etc/passwd", "a/../../x"])
def test_base_archive_path_traversal_is_refused(tmp_path: Path, evil: str) -> None:
    base = tmp_path / "evil.cpio"
    base.write_bytes(_raw_newc(evil))
    with pytest.raises(InitkitError, match="refusing entry"):
        add_initrd(Image(), base)


def test_base_archive_merges_and_conflicts_name_both(tmp_path: Path) -> None:
    base = tmp_path / "base.gz"
    write_initrd(sample_image(tmp_path), base)
    image = Image()
    add_skeleton(image)
    add_initrd(image, base)
    assert image["bin/prog-alias"].kind is Kind.HARDLINK
    assert image["dev/vda"].major == 254
    with pytest.raises(InitkitError) as err:
        image.add_file("etc/motd", data=b"other\n", source="--file motd")
    assert "base.gz:etc/motd" in str(err.value) and "--file motd" in str(err.value)


@pytest.mark.parametrize("garbage", [b"", b"not an initrd at all", b"070701zzzz", b"\x1f\x8bjunk"])
def test_corrupt_archives_are_clear_errors(tmp_path: Path, garbage: bytes) -> None:
    bad = tmp_path / "bad.img"
    bad.write_bytes(garbage)
    with pytest.raises(InitkitError, match=r"bad\.img"):
        read_initrd(bad)


def test_truncated_archive_is_an_error(tmp_path: Path) -> None:
    write_initrd(sample_image(tmp_path), tmp_path / "i")
    cut = tmp_path / "cut"
    cut.write_bytes((tmp_path / "i").read_bytes()[:700])
    with pytest.raises(InitkitError, match=r"truncated|corrupt"):
        read_initrd(cut)


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    host = tmp_path / "vanishing"
    host.write_bytes(b"data")
    image = Image()
    image.add_file("f", host=host)
    host.unlink()  # it disappears between planning and writing
    out = tmp_path / "out" / "initrd.zst"
    out.parent.mkdir()
    with pytest.raises(InitkitError, match="vanishing"):
        write_initrd(image, out)
    assert list(out.parent.iterdir()) == []


def test_existing_output_is_kept_when_a_rebuild_fails(tmp_path: Path) -> None:
    out = tmp_path / "initrd.cpio"
    write_initrd(sample_image(tmp_path), out)
    before = out.read_bytes()
    broken = Image()
    broken.add_file("f", host=tmp_path / "host.bin")
    (tmp_path / "host.bin").unlink()
    with pytest.raises(InitkitError):
        write_initrd(broken, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["initrd.cpio"]


def test_memory_stays_flat_for_a_512_mib_file(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as fh:
        fh.truncate(1 << 29)  # sparse: 512 MiB to stream (4x the limit below), none on disk
    script = f"""
from initbuilder.image import Image
from initbuilder.cpio import write_initrd
image = Image()
image.add_file("big", host={str(big)!r})
write_initrd(image, {str(tmp_path / 'out.zst')!r})
# VmHWM, not ru_maxrss: the latter keeps the parent's peak from before exec().
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""
    peak_kib = int(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                  text=True, check=True).stdout)
    assert peak_kib < 128 * 1024, f"peak RSS {peak_kib} KiB while streaming 512 MiB"
    assert [m.size for m in read_initrd(tmp_path / "out.zst") if m.path == "big"] == [1 << 29]


def test_zstd_output_does_not_depend_on_the_number_of_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import random

    from initbuilder import cpio

    chunk = random.Random(0).randbytes(1 << 20)
    image = Image()
    for i in range(24):  # 24 MiB: several zstd jobs
        image.add_file(f"data/{i}", data=chunk[i:] + chunk[:i])
    digests = set()
    for workers in (1, 2, 4):
        monkeypatch.setattr(cpio, "_zstd_workers", lambda w=workers: w)
        write_initrd(image, tmp_path / f"{workers}.zst")
        digests.add((tmp_path / f"{workers}.zst").read_bytes())
    assert len(digests) == 1
