"""Kernel config fragments: parsing, merging over a base .config, and the check that
names every option Kconfig dropped; initkit's own fragment gives each option a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from initbuilder.kernels.config import (
    FRAGMENT,
    NOT_SET,
    check,
    merge,
    mismatches,
    parse_config,
    read_fragment,
)
from initkit.errors import InitkitError

BASE = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_64BIT=y
# CONFIG_FUSE_FS is not set
CONFIG_HZ=250
CONFIG_CMDLINE=""
"""


def test_parse_reads_values_and_not_set_lines() -> None:
    options = parse_config(BASE, "base")
    assert {n: o.value for n, o in options.items()} == {
        "CONFIG_64BIT": "y", "CONFIG_FUSE_FS": NOT_SET, "CONFIG_HZ": "250",
        "CONFIG_CMDLINE": '""'}
    assert options["CONFIG_FUSE_FS"].source == "base:5"


@pytest.mark.parametrize("line", ["FUSE_FS=y", "CONFIG_FUSE_FS=y # fuse", "CONFIG_X="])
def test_a_line_that_is_no_option_is_named(line: str) -> None:
    with pytest.raises(InitkitError, match="frag:2") as info:
        parse_config(f"# comment\n{line}\n", "frag")
    assert repr(line.strip()) in str(info.value)


def test_merge_replaces_and_appends_and_a_later_fragment_wins() -> None:
    wanted = parse_config("CONFIG_FUSE_FS=y\nCONFIG_HZ=100\n# CONFIG_64BIT is not set\n", "a")
    wanted.update(parse_config("CONFIG_VIRTIO_FS=y\nCONFIG_HZ=1000\n", "b"))
    merged = parse_config(merge(BASE, wanted), "merged")
    assert {n: o.value for n, o in merged.items()} == {
        "CONFIG_64BIT": NOT_SET, "CONFIG_FUSE_FS": "y", "CONFIG_HZ": "1000",
        "CONFIG_CMDLINE": '""', "CONFIG_VIRTIO_FS": "y"}
    # Each option once: Kconfig would warn about every reassignment otherwise.
    assert merge(BASE, wanted).count("CONFIG_HZ") == 1


def test_mismatches_name_dropped_and_selected_options() -> None:
    wanted = parse_config('CONFIG_VIRTIO_FS=y\n# CONFIG_THERMAL is not set\nCONFIG_CMDLINE="a b"\n'
                          "CONFIG_FUSE_FS=y\n", "frag")
    final = parse_config('CONFIG_THERMAL=y\nCONFIG_CMDLINE="a b"\nCONFIG_FUSE_FS=m\n', "final")
    assert mismatches(wanted, final) == [
        "CONFIG_VIRTIO_FS=y (from frag:1) is not set",
        "CONFIG_THERMAL=n (from frag:2) became y",
        "CONFIG_FUSE_FS=y (from frag:4) became m",
    ]
    assert mismatches(wanted, parse_config('CONFIG_VIRTIO_FS=y\nCONFIG_CMDLINE="a b"\n'
                                           "CONFIG_FUSE_FS=y\n", "ok")) == []


def test_check_raises_naming_each_lost_option(tmp_path: Path) -> None:
    config = tmp_path / ".config"
    config.write_text("CONFIG_FUSE_FS=y\n")
    wanted = parse_config("CONFIG_FUSE_FS=y\nCONFIG_VIRTIO_FS=y\n", "frag")
    with pytest.raises(InitkitError, match=r"CONFIG_VIRTIO_FS=y \(from frag:2\) is not set"):
        check(wanted, config)


def test_empty_or_missing_fragment_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty.config").write_text("# nothing\n")
    with pytest.raises(InitkitError, match="sets no option"):
        read_fragment(tmp_path / "empty.config")
    with pytest.raises(InitkitError, match="no such file"):
        read_fragment(tmp_path / "missing.config")


def test_initkits_fragment_gives_every_option_a_reason() -> None:
    lines = FRAGMENT.read_text().splitlines()
    options = read_fragment(FRAGMENT)
    assert len(options) >= 40
    for name, option in options.items():
        number = int(option.source.rsplit(":", 1)[1])
        above = lines[number - 2].strip()
        assert above.startswith("# ") and "CONFIG_" not in above.split()[1:2], \
            f"{name} (line {number}) has no reason on the line above it: {above!r}"
        assert len(above) > 6, f"{name}: the reason {above!r} says nothing"
    # One place per option: a later duplicate would silently override the first.
    names = [line.split("=")[0] for line in lines if line.startswith("CONFIG_")]
    assert len(names) == len(set(names))


def test_initkits_fragment_builds_in_what_the_guest_needs() -> None:
    options = read_fragment(FRAGMENT)
    for name in ("CONFIG_VIRTIO_FS", "CONFIG_FUSE_FS", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_PCI",
                 "CONFIG_VIRTIO_CONSOLE", "CONFIG_PVH", "CONFIG_BLK_DEV_INITRD", "CONFIG_DEVTMPFS",
                 "CONFIG_TMPFS", "CONFIG_UNIX98_PTYS", "CONFIG_BINFMT_SCRIPT"):
        assert options[name].value == "y", name
    assert not [o for o in options.values() if o.value == "m"], "built in, not modules"
