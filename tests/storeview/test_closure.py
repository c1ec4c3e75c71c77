"""The closure: from the Nix database, from narinfo references, from the reference scan."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from nar_writer import nar, regular, write_cache_entry
from nixbuild import NixOutputs

from hostrun.storeview import refscan
from hostrun.storeview.closure import resolve_closure, store_name_of
from initkit.errors import InitkitError

NIX_STORE = Path("/nix/store")


def requisites(path: str) -> list[str]:
    out = subprocess.run(["nix-store", "--query", "--requisites", path], capture_output=True,
                         text=True, check=True).stdout
    return sorted(os.path.basename(line) for line in out.split())


def test_from_the_nix_database(nix_outputs: NixOutputs) -> None:
    view = resolve_closure([nix_outputs.hello], NIX_STORE)
    assert view.how == "nix database"
    assert view.names == requisites(nix_outputs.hello)
    assert os.path.basename(nix_outputs.glibc) in view.names
    assert os.path.basename(nix_outputs.secret) not in view.names
    assert all(e.source == NIX_STORE / e.name for e in view.entries)


def test_paths_inside_and_links_to_store_paths(nix_outputs: NixOutputs, tmp_path: Path) -> None:
    (tmp_path / "result").symlink_to(nix_outputs.hello)
    (tmp_path / "again").symlink_to("result")
    name = os.path.basename(nix_outputs.hello)
    for given in (nix_outputs.hello, f"{nix_outputs.hello}/bin/hello", str(tmp_path / "again")):
        assert store_name_of(given, NIX_STORE) == name
    with pytest.raises(InitkitError, match="--closure /etc/passwd: not a store path"):
        store_name_of("/etc/passwd", NIX_STORE)


def _copy_store(names: list[str], into: Path) -> Path:
    into.mkdir()
    for name in names:
        subprocess.run(["cp", "-a", f"/nix/store/{name}", str(into)], check=True)
    return into


def test_reference_scan_finds_what_the_database_knows(nix_outputs: NixOutputs,
                                                      tmp_path: Path) -> None:
    """A plain directory holding copies of store paths (no database, no narinfo): the
    scanner finds the same closure Nix registered, and not the unrelated secret."""
    closure = requisites(nix_outputs.hello)
    store = _copy_store([*closure, os.path.basename(nix_outputs.secret)], tmp_path / "store")
    view = resolve_closure([nix_outputs.hello], store)
    assert view.how == "reference scan"
    assert view.names == closure
    assert all(e.source == store / e.name for e in view.entries)


def test_scan_finds_hashes_glued_to_others_and_across_chunks(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    wanted = b"0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8"
    glued = b"1b9p07z77phvv2hf6gm9f28syp39f1ag"
    candidates = {wanted, glued, b"5xyxwzjzbdgrcx1q8x2n64jwxdy7hlb0"}
    monkeypatch.setattr(refscan, "READ_SIZE", 7)  # every hash straddles a chunk boundary
    (tmp_path / "f").write_bytes(b"x" * 5 + b"/nix/store/" + wanted + b"-a\n" + b"abc" + glued)
    assert refscan.scan_references(tmp_path / "f", candidates) == {wanted, glued}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "link").symlink_to(f"/nix/store/{glued.decode()}-b/lib")
    assert refscan.scan_references(tmp_path / "d", candidates) == {glued}


def test_host_store_first_then_substituters(nix_outputs: NixOutputs, tmp_path: Path) -> None:
    """hello is on a plain host store, glibc only in a cache: the cache has no narinfo of
    hello, so its references come from the scan, which knows glibc by its narinfo."""
    glibc = os.path.basename(nix_outputs.glibc)
    hello = os.path.basename(nix_outputs.hello)
    source = [n for n in requisites(nix_outputs.hello) if n.endswith("-hello.c")]
    store = _copy_store([hello, *source], tmp_path / "store")
    cache = tmp_path / "cache"
    write_cache_entry(cache, glibc, nar(regular(b"a stand-in glibc")))
    view = resolve_closure([nix_outputs.hello], store, [f"file://{cache}"])
    assert view.names == requisites(nix_outputs.hello)
    origins = {e.name: e.origin for e in view.entries}
    assert origins[hello] == f"--store {store}"
    assert origins[glibc] == f"--substituter file://{cache}"
    assert view.how == "narinfo references, reference scan"


def test_not_found_anywhere(tmp_path: Path) -> None:
    missing = "/nix/store/0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-nowhere"
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(InitkitError, match=(
            f"{missing}: not found; looked in --store {store}; add a --substituter that "
            "has it")):
        resolve_closure([missing], store)
    store.rmdir()
    with pytest.raises(InitkitError, match=r"looked in --store .* \(no such directory\)"):
        resolve_closure([missing], store)
