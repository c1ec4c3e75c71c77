"""Unpacking the kernel source is refused at once when the cache's filesystem has less
room than the tarball's xz index says it unpacks to (tar would go on for seconds)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from realparts import need

from initbuilder.kernels import source
from initkit.errors import EnvironmentFault, WriteSite


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    need("tar", "xz")
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_bytes(bytes(300_000))
    out = tmp_path / "linux-source.tar.xz"
    subprocess.run(["tar", "-cJf", out, "-C", tmp_path, "linux"], check=True)
    return out


def test_the_xz_index_gives_the_unpacked_size(tarball: Path) -> None:
    size = source._unpacked_size(tarball)
    assert size is not None and 300_000 < size < 320_000  # the file and tar's headers


def test_too_little_room_is_refused_before_tar_starts(
        tarball: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("initbuilder.kernels.source.os.statvfs",
                        lambda _path: SimpleNamespace(f_bavail=10, f_frsize=4096))
    site = WriteSite(tmp_path / "final", "unpack the kernel source into", "set X")
    with pytest.raises(EnvironmentFault, match=r"\(0\.0 GB; 0 MB free\) into .*final: "
                                               r"no space left on .*; .*set X"):
        source._check_room(tarball, tmp_path, site)


def test_enough_room_or_an_unknown_size_goes_ahead(
        tarball: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = WriteSite(tmp_path / "final", "unpack the kernel source into")
    source._check_room(tarball, tmp_path, site)  # this filesystem has room for 300 kB
    plain = tmp_path / "linux.tar"
    plain.write_bytes(b"")
    monkeypatch.setattr("initbuilder.kernels.source.os.statvfs",
                        lambda _path: SimpleNamespace(f_bavail=0, f_frsize=4096))
    source._check_room(plain, tmp_path, site)  # not xz: no index to ask, tar will tell
