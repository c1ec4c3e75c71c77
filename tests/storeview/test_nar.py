"""The NAR unpacker: real NARs from nix-store --dump, and hostile ones made by hand."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from nar_writer import directory, nar, nar_of_tree, nar_string, nar_tokens, regular, symlink
from realparts import missing_part

from hostrun.storeview.nar import MAX_DEPTH, NarError, unpack_nar

NAME = b"0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs"


def sample_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "share" / "empty").mkdir(parents=True)
    (root / "share" / "data").write_bytes(bytes(range(256)) * 4099)  # not a multiple of 8
    (root / "share" / "zero-length").write_bytes(b"")
    (root / "lib").symlink_to("share")
    (root / "dangling").symlink_to("/nix/store/nowhere/at/all")
    return root


def tree_listing(root: Path) -> list[tuple[str, str, bytes | str]]:
    found: list[tuple[str, str, bytes | str]] = []
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            found.append((rel, "link", os.readlink(path)))
        elif stat.S_ISDIR(st.st_mode):
            found.append((rel, "dir", ""))
        else:
            kind = "exec" if st.st_mode & 0o100 else "file"
            found.append((rel, kind, path.read_bytes()))
    return found


def test_nix_store_dump_unpacks_to_the_same_tree(tmp_path: Path) -> None:
    if shutil.which("nix-store") is None:
        missing_part("nix-store is not installed (apt-get install nix-bin)")
    tree = sample_tree(tmp_path / "tree")
    dumped = subprocess.run(["nix-store", "--dump", str(tree)], capture_output=True,
                            check=True).stdout
    assert dumped == nar_of_tree(tree)  # the tests' writer agrees with Nix
    stats = unpack_nar(io.BytesIO(dumped), tmp_path / "out", what="test NAR")
    assert tree_listing(tmp_path / "out") == tree_listing(tree)
    assert (stats.files, stats.symlinks, stats.directories) == (3, 2, 4)
    modes = {p.name: stat.S_IMODE(os.lstat(p).st_mode) for p in (tmp_path / "out").rglob("*")}
    assert modes["tool"] == 0o555 and modes["data"] == 0o444 and modes["bin"] == 0o555


@pytest.mark.parametrize("top", [regular(b"just a file", executable=True),
                                 symlink(b"/nix/store/elsewhere")])
def test_a_store_path_can_be_a_file_or_a_symlink(tmp_path: Path, top: bytes) -> None:
    unpack_nar(io.BytesIO(nar(top)), tmp_path / "out", what="test NAR")
    out = tmp_path / "out"
    assert out.is_symlink() or out.read_bytes() == b"just a file"


HOSTILE = {
    "dot-dot": (directory((b"..", regular(b"escaped"))), "an entry named '..'"),
    "dot": (directory((b".", regular(b"x"))), "an entry named '.'"),
    "empty name": (directory((b"", regular(b"x"))), "an entry named ''"),
    "slash": (directory((b"a/../../etc", regular(b"x"))), "an entry named 'a/../../etc'"),
    "nested dot-dot": (directory((b"sub", directory((b"..", directory((b"..", regular(b"x"))))))),
                       "sub: an entry named '..'"),
    "NUL": (directory((b"a\0b", regular(b"x"))), "an entry named"),
    "out of order": (directory((b"b", regular(b"")), (b"a", regular(b""))),
                     "entries out of order or repeated"),
    "repeated": (directory((b"a", regular(b"")), (b"a", symlink(b"/etc/passwd"))),
                 "entries out of order or repeated"),
    "device node": (nar_tokens(b"(", b"type", b"chardevice", b")"), "node type 'chardevice'"),
    "long name": (directory((b"n" * 300, regular(b""))), "a file name of 300 bytes"),
    "empty target": (symlink(b""), "empty symlink target"),
    "bad padding": (nar_tokens(b"(", b"type", b"regular", b"contents")
                    + (3).to_bytes(8, "little") + b"abc\0\0\0\0\1" + nar_tokens(b")"),
                    "non-zero padding"),
    "truncated": (regular(b"0123456789" * 100)[:-40], "ends early|ends inside"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_nars_are_refused_and_write_nothing_outside(tmp_path: Path, case: str) -> None:
    node, message = HOSTILE[case]
    unpack_root = tmp_path / "unpack"
    unpack_root.mkdir()
    with pytest.raises(NarError, match=f"evil.nar: .*({message}).*refused"):
        unpack_nar(io.BytesIO(nar(node)), unpack_root / "out", what="evil.nar")
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(unpack_root)]
    assert outside == [], outside


def test_wrong_magic_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NarError, match="expected 'nix-archive-1'"):
        unpack_nar(io.BytesIO(nar_string(b"nix-archive-2") + regular(b"")), tmp_path / "o",
                   what="x")


def test_nesting_is_capped(tmp_path: Path) -> None:
    node = regular(b"")
    for _ in range(MAX_DEPTH + 2):
        node = directory((b"d", node))
    with pytest.raises(NarError, match="nested deeper"):
        unpack_nar(io.BytesIO(nar(node)), tmp_path / "o", what="deep.nar")


def test_a_symlink_in_the_nar_is_never_written_through(tmp_path: Path) -> None:
    """An entry cannot be made through an earlier symlink: names are one component, and
    a second entry of the same name is refused before anything is opened."""
    victim = tmp_path / "victim"
    victim.mkdir()
    node = directory((b"a", symlink(os.fsencode(victim))),
                     (b"b", directory((b"c", regular(b"x")))))
    unpack_nar(io.BytesIO(nar(node)), tmp_path / "o", what="x")
    assert list(victim.iterdir()) == []
    assert (tmp_path / "o" / "b" / "c").read_bytes() == b"x"


def test_memory_stays_bounded_for_a_big_file(tmp_path: Path) -> None:
    """256 MiB of file data through the unpacker from a generated stream: the peak RSS
    (VmHWM) of the process stays far below the file's size."""
    script = textwrap.dedent("""
        import sys
        from hostrun.storeview.nar import unpack_nar
        sys.path.insert(0, sys.argv[2])
        from nar_writer import nar_string, nar_tokens
        SIZE = 256 << 20
        head = nar_string(b"nix-archive-1") + nar_tokens(b"(", b"type", b"regular",
                                                         b"contents")
        head += SIZE.to_bytes(8, "little")
        tail = nar_tokens(b")")
        class Stream:  # at most n bytes a read, as a file would give them
            def __init__(self):
                self.pending = head
                self.left = SIZE
            def read(self, n):
                if not self.pending and self.left:
                    k = min(self.left, 1 << 16)
                    self.left -= k
                    self.pending = b"\\xab" * k + (b"" if self.left else tail)
                data, self.pending = self.pending[:n], self.pending[n:]
                return data
        unpack_nar(Stream(), sys.argv[1], what="big")
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                print(int(line.split()[1]))
    """)
    out = tmp_path / "big"
    proc = subprocess.run([sys.executable, "-c", script, str(out),
                           str(Path(__file__).parents[1])], capture_output=True, text=True,
                          check=True, timeout=300)
    assert out.stat().st_size == 256 << 20
    peak_kib = int(proc.stdout.split()[-1])
    assert peak_kib < 80 * 1024, f"peak RSS {peak_kib} KiB for a 256 MiB file"
