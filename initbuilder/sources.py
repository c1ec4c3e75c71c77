"""The simple sources of an initrd's entries: the base skeleton, base archives, user
files, busybox."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from guest import contract
from initbuilder.hostfiles import HostFiles
from initbuilder.image import Entry, Image, Kind
from initbuilder.reader import ArchiveMember, read_initrd
from initkit.errors import InitkitError
from initkit.process import run

log = logging.getLogger("initkit.sources")

# What an init needs before it has mounted anything, even when built without root:
# the device nodes exist only as cpio records, no mknod needed.
SKELETON_DIRS = {
    "bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o555, "sys": 0o555,
    "tmp": 0o1777, "run": 0o755, "usr": 0o755, "usr/bin": 0o755, "lib": 0o755,
}
SKELETON_NODES = {
    "dev/console": (5, 1, 0o600),
    "dev/null": (1, 3, 0o666),
    "dev/tty": (5, 0, 0o666),
    "dev/urandom": (1, 9, 0o666),
}


def add_skeleton(image: Image) -> None:
    """Add the base directories and device nodes, as defaults other inputs may replace."""
    for path, mode in SKELETON_DIRS.items():
        image.add_directory(path, mode, source="skeleton", weak=True)
    for path, (major, minor, mode) in SKELETON_NODES.items():
        image.add_device(path, Kind.CHAR, major, minor, mode, source="skeleton", weak=True)


def add_initrd(image: Image, path: str | os.PathLike[str]) -> int:
    """Merge an existing initrd into ``image`` (the --base option); return the number of
    entries taken. Entries with absolute or '..' paths are refused."""
    src = Path(path)
    count = 0
    links: list[ArchiveMember] = []
    for rec in read_initrd(src, with_data=True):
        name = rec.path
        if name in (".", "./", ""):
            continue
        if name.startswith("/") or ".." in name.split("/"):
            raise InitkitError(
                f"{src}: refusing entry {name!r}: absolute and '..' paths could write "
                "outside the initrd root; rebuild the base archive with relative paths"
            )
        label = f"{src}:{name}"
        if rec.kind is Kind.HARDLINK:
            links.append(rec)
            continue
        if rec.kind is Kind.FILE:
            image.add_file(name, data=rec.data or b"", mode=rec.mode, uid=rec.uid, gid=rec.gid,
                           source=label)
        else:
            image.add(name, Entry(rec.kind, rec.mode, rec.uid, rec.gid, target=rec.target,
                                  major=rec.major, minor=rec.minor, source=label))
        count += 1
    for rec in links:
        assert rec.target is not None
        image.add_hardlink(rec.path, rec.target, source=f"{src}:{rec.path}")
        count += 1
    return count


def parse_file_spec(spec: str) -> tuple[Path, str]:
    """``HOST[:GUEST]`` -> (host path, guest path); without GUEST the host path is used."""
    if not spec:
        raise InitkitError("--file needs HOST[:GUEST], got an empty value")
    host, sep, guest = spec.partition(":")
    if not host:
        raise InitkitError(f"--file {spec!r}: the HOST part before ':' is empty")
    if sep and not guest:
        raise InitkitError(f"--file {spec!r}: the GUEST part after ':' is empty; "
                           "drop the ':' to use the host path")
    host_path = Path(host)
    if not os.path.lexists(host_path):
        raise InitkitError(f"--file {spec!r}: {host} does not exist")
    return host_path, guest or os.path.abspath(host_path)


def add_files(image: Image, specs: list[str]) -> None:
    """Add each ``--file HOST[:GUEST]``: files, symlinks as symlinks, directories recursively."""
    files = HostFiles(image)
    for spec in specs:
        host, guest = parse_file_spec(spec)
        rel = files.copy(host, guest, source=f"--file {spec}")
        log.info("added /%s from %s", rel, host)


def find_busybox(path: str | None) -> Path:
    """The busybox to pack: ``path`` as given, else the first on $PATH."""
    if path:
        found = Path(path)
        if not found.exists():
            raise InitkitError(f"--busybox {path}: no such file")
        return found
    on_path = busybox_on_path()
    if on_path is None:
        raise InitkitError("--busybox: no busybox on $PATH; install busybox-static "
                           "(apt-get install busybox-static) or pass --busybox PATH")
    return on_path


def busybox_on_path() -> Path | None:
    """The first busybox on $PATH, if there is one."""
    which = shutil.which("busybox")
    return None if which is None else Path(which)


def busybox_applets(busybox: Path) -> list[str]:
    """The applets this busybox reports, as root-relative install paths ("bin/ls")."""
    proc = run([busybox, "--list-full"], check=False)
    if proc.returncode == 0 and proc.stdout.strip():
        return sorted({line.strip().lstrip("/") for line in proc.stdout.decode().splitlines()
                       if line.strip()})
    proc = run([busybox, "--list"], hint=f"is {busybox} really busybox?")
    return sorted({"bin/" + name.strip() for name in proc.stdout.decode().split() if name.strip()})


def add_busybox(image: Image, busybox: Path, *, links_at_boot: bool = False) -> list[str]:
    """Install busybox as /bin/busybox plus one symlink per applet (like u-root's bbin).

    Applet links are defaults: a program added explicitly at the same path wins.
    ``links_at_boot`` (for initrds with initkit's init): only /bin/sh is an archive
    entry; the other applet paths are listed in /etc/initkit/applets and the init links
    them before anything runs, leaving alone any path the initrd has (the same rule).
    The kernel's unpacker spends ~0.2 ms on each archive entry under TCG, 55 ms for
    busybox's 272 links; the init makes them all in ~4 ms (docs/benchmarks.md).
    Returns the applet paths, linked or listed.
    """
    installed = contract.BUSYBOX.lstrip("/")  # where the init links the applets to
    image.add_file(installed, host=busybox, mode=0o755, source=f"--busybox {busybox}")
    linked = []
    for applet in busybox_applets(busybox):
        if applet in (installed, ""):
            continue
        existing = image.get(applet)
        if existing is not None and existing.kind is not Kind.DIR:
            continue  # an explicit program of that name was added before us
        linked.append(applet)
        if links_at_boot and applet != "bin/sh":
            parent = applet.rpartition("/")[0]
            if parent:
                image.add_directory(parent, source="busybox applet", weak=True)
            continue
        link = Entry(Kind.SYMLINK, 0o777, target=contract.BUSYBOX, source="busybox applet",
                     weak=True)
        image.add(applet, link)
    if links_at_boot:
        listed = "".join(f"/{applet}\n" for applet in linked if applet != "bin/sh")
        image.add_file(contract.APPLET_LIST, data=listed.encode(), mode=0o644,
                       source=f"busybox applets of {busybox}, linked at boot")
    log.info("added busybox from %s with %d applets", busybox, len(linked))
    return linked

