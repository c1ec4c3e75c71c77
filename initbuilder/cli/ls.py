"""`initbuilder ls`: list what an initrd holds, like lsinitramfs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import click

from initbuilder.image import Kind
from initbuilder.reader import ArchiveMember, read_initrd
from initkit.cli import Command

_TYPE_BITS = {
    Kind.DIR: stat.S_IFDIR, Kind.FILE: stat.S_IFREG, Kind.HARDLINK: stat.S_IFREG,
    Kind.SYMLINK: stat.S_IFLNK, Kind.CHAR: stat.S_IFCHR, Kind.BLOCK: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
}


def _as_json(member: ArchiveMember) -> dict[str, object]:
    record: dict[str, object] = {
        "path": member.path,
        "type": member.kind.value,
        "mode": f"{member.mode:04o}",
        "uid": member.uid,
        "gid": member.gid,
        "size": member.size,
        "archive": member.archive,
    }
    if member.kind in (Kind.SYMLINK, Kind.HARDLINK):
        record["target"] = member.target
    if member.kind in (Kind.CHAR, Kind.BLOCK):
        record["major"], record["minor"] = member.major, member.minor
    return record


def _as_line(member: ArchiveMember) -> str:
    mode = stat.filemode(_TYPE_BITS[member.kind] | member.mode)
    size = f"{member.major},{member.minor}" if member.kind in (Kind.CHAR, Kind.BLOCK) else str(
        member.size)
    line = f"{mode} {member.uid:>5}/{member.gid:<5} {size:>10} {member.path}"
    if member.kind is Kind.SYMLINK:
        line += f" -> {member.target}"
    elif member.kind is Kind.HARDLINK:
        line += f" -> {member.target} (hard link)"
    return line


@click.command(cls=Command)
@click.argument("initrd", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of entries.")
def ls(initrd: Path, as_json: bool) -> None:
    """List every entry of INITRD: type and mode, uid/gid, size, path, link target.

    Reads compressed initrds (gzip, bzip2, lzma, xz, lz4, zstd) and several archives
    concatenated (an early microcode cpio followed by the main one), like lsinitramfs.
    Entries of later archives are marked with the archive's index in --json.
    """
    members = read_initrd(initrd)
    if as_json:
        click.echo(json.dumps([_as_json(m) for m in members], indent=1))
        return
    archive = 0
    for member in members:
        if member.archive != archive:
            archive = member.archive
            click.echo(f"# archive {archive}")
        click.echo(_as_line(member))
