"""Binary caches written by real `nix copy --to file://`, and caches that lie."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from nar_cache import cache_leftovers
from nar_writer import directory, nar, regular, write_cache_entry
from nixbuild import NixOutputs, nix_copy
from test_nar import tree_listing

from hostrun.storeview import nixbase32
from hostrun.storeview.closure import resolve_closure
from hostrun.storeview.substituter import FileBinaryCache
from hostrun.storeview.view import StoreView
from initkit.errors import InitkitError
from initkit.owner import Owner, start_time

EMPTY_STORE = "empty-store"


def closure_from(cache: Path, tmp_path: Path, *paths: str) -> StoreView:
    """The closure of ``paths`` with an empty host store: everything from ``cache``."""
    store = tmp_path / EMPTY_STORE
    store.mkdir(exist_ok=True)
    return resolve_closure(list(paths), store, [f"file://{cache}"])


@pytest.mark.parametrize("compression", ["xz", "zstd", "bzip2", "none"])
def test_nix_copy_cache_unpacks_to_the_store_paths(nix_outputs: NixOutputs, tmp_path: Path,
                                                   private_cache: Path,
                                                   compression: str) -> None:
    cache = nix_copy([nix_outputs.hello], tmp_path / "cache", compression)
    suffixes = {p.name.split(".nar")[1] for p in (cache / "nar").iterdir()}
    assert suffixes == {{"xz": ".xz", "zstd": ".zst", "bzip2": ".bz2", "none": ""}[compression]}
    view = closure_from(cache, tmp_path, nix_outputs.hello)
    assert view.how == "narinfo references"
    names = {os.path.basename(p) for p in (nix_outputs.hello, nix_outputs.glibc)}
    assert names <= set(view.names)
    for entry in view.entries:
        assert entry.origin == f"--substituter file://{cache}"
        assert entry.source.parent == private_cache / "store" / "nar"
        assert tree_listing(entry.source) == tree_listing(Path("/nix/store", entry.name))


def test_an_unpacked_nar_is_reused(nix_outputs: NixOutputs, tmp_path: Path,
                                   private_cache: Path) -> None:
    cache = nix_copy([nix_outputs.glibc], tmp_path / "cache")
    first = closure_from(cache, tmp_path, nix_outputs.glibc)
    for nar_file in (cache / "nar").iterdir():
        nar_file.unlink()  # a second run must not need the NAR file again
    second = closure_from(cache, tmp_path, nix_outputs.glibc)
    assert first == second
    assert len(cache_leftovers(private_cache)) == 1


def _only_narinfo(cache: Path, store_path: str) -> Path:
    return cache / f"{os.path.basename(store_path)[:32]}.narinfo"


def _nar_file(cache: Path, narinfo: Path) -> Path:
    url = re.search(r"^URL: (.*)$", narinfo.read_text(), re.M)
    assert url is not None
    return cache / url.group(1)


def test_corrupted_nar_is_refused_by_its_file_hash(nix_outputs: NixOutputs, tmp_path: Path,
                                                   private_cache: Path) -> None:
    cache = nix_copy([nix_outputs.glibc], tmp_path / "cache")
    info = _only_narinfo(cache, nix_outputs.glibc)
    nar_file = _nar_file(cache, info)
    data = bytearray(nar_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    nar_file.write_bytes(bytes(data))
    with pytest.raises(InitkitError, match=f"NAR {re.escape(str(nar_file))} .*"
                       f"{re.escape(nix_outputs.glibc)}.*FileHash mismatch.*refused"):
        closure_from(cache, tmp_path, nix_outputs.glibc)
    assert cache_leftovers(private_cache) == []


def test_corrupted_nar_without_file_hash_fails_to_decompress(nix_outputs: NixOutputs,
                                                             tmp_path: Path,
                                                             private_cache: Path) -> None:
    cache = nix_copy([nix_outputs.glibc], tmp_path / "cache")
    info = _only_narinfo(cache, nix_outputs.glibc)
    info.write_text(re.sub(r"^File(Hash|Size): .*\n", "", info.read_text(), flags=re.M))
    nar_file = _nar_file(cache, info)
    data = bytearray(nar_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    nar_file.write_bytes(bytes(data))
    with pytest.raises(InitkitError, match=r"corrupt xz data .*; refused"):
        closure_from(cache, tmp_path, nix_outputs.glibc)
    assert cache_leftovers(private_cache) == []


def test_wrong_nar_hash_is_refused(nix_outputs: NixOutputs, tmp_path: Path,
                                   private_cache: Path) -> None:
    cache = nix_copy([nix_outputs.glibc], tmp_path / "cache")
    info = _only_narinfo(cache, nix_outputs.glibc)
    wrong = nixbase32.encode(hashlib.sha256(b"something else").digest())
    info.write_text(re.sub(r"^NarHash: .*$", f"NarHash: sha256:{wrong}", info.read_text(),
                           flags=re.M))
    with pytest.raises(InitkitError, match=f"{re.escape(nix_outputs.glibc)}.*NarHash "
                       f"mismatch: the narinfo says sha256:{wrong}.*refused"):
        closure_from(cache, tmp_path, nix_outputs.glibc)
    assert cache_leftovers(private_cache) == []


def test_missing_narinfo_names_the_path_and_where_it_looked(nix_outputs: NixOutputs,
                                                            tmp_path: Path,
                                                            private_cache: Path) -> None:
    cache = nix_copy([nix_outputs.hello], tmp_path / "cache")
    _only_narinfo(cache, nix_outputs.glibc).unlink()
    glibc = os.path.basename(nix_outputs.glibc)
    with pytest.raises(InitkitError) as caught:
        closure_from(cache, tmp_path, nix_outputs.hello)
    message = str(caught.value)
    assert message.startswith(f"/nix/store/{glibc} (a reference of /nix/store/"
                              f"{os.path.basename(nix_outputs.hello)}): not found; looked in "
                              f"--store {tmp_path / EMPTY_STORE}, --substituter file://{cache}"
                              f" (no {glibc[:32]}.narinfo)"), message
    assert all(not name.startswith(".") for name in cache_leftovers(private_cache))


def test_nar_with_dot_dot_is_refused_and_nothing_is_kept(tmp_path: Path,
                                                         private_cache: Path) -> None:
    name = "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-evil"
    evil = nar(directory((b"..", directory((b"escaped", regular(b"pwned"))))))
    write_cache_entry(tmp_path / "cache", name, evil)
    with pytest.raises(InitkitError, match=f"/nix/store/{name}.*an entry named '..'.*refused"):
        closure_from(tmp_path / "cache", tmp_path, f"/nix/store/{name}")
    assert cache_leftovers(private_cache) == []
    assert not list(tmp_path.rglob("escaped"))


def test_narinfo_for_another_path_is_refused(tmp_path: Path) -> None:
    name = "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs"
    info = write_cache_entry(tmp_path / "cache", name, nar(regular(b"")))
    info.rename(tmp_path / "cache" / "1b9p07z77phvv2hf6gm9f28syp39f1ag.narinfo")
    with pytest.raises(InitkitError, match=r"its StorePath is /nix/store/0c1ml.*another path"):
        closure_from(tmp_path / "cache", tmp_path,
                     "/nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-x")


@pytest.mark.parametrize(("url", "message"), [
    ("http://localhost:9000", "only file:///DIR binary caches"),
    ("file://relative/dir", "only file:///DIR"),
    ("file:///nonexistent/cache", "is not a directory"),
])
def test_substituter_urls(url: str, message: str) -> None:
    with pytest.raises(InitkitError, match=f"--substituter {re.escape(url)}: .*{message}"):
        FileBinaryCache(url)


def test_cache_for_another_store_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nix-cache-info").write_text("StoreDir: /gnu/store\n")
    with pytest.raises(InitkitError, match="its StoreDir is /gnu/store"):
        FileBinaryCache(f"file://{tmp_path}")


def test_a_nar_longer_than_its_nar_size_is_cut_off(tmp_path: Path, private_cache: Path) -> None:
    """A NAR that expands past its NarSize (here a 64 MiB file where NarSize says 1 KiB)
    is refused once NarSize is passed: what a cache declares bounds the disk it fills."""
    name = "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-big"
    big = nar(regular(b"\0" * (64 << 20)))
    info = write_cache_entry(tmp_path / "cache", name, big, compression="none")
    info.write_text(re.sub(r"^(NarSize|FileSize|FileHash): .*\n", "", info.read_text(),
                           flags=re.M) + "NarSize: 1024\n")
    with pytest.raises(InitkitError, match=r"longer than its NarSize \(1024 bytes\); refused"):
        closure_from(tmp_path / "cache", tmp_path, f"/nix/store/{name}")
    assert cache_leftovers(private_cache) == []


def test_what_a_killed_unpack_left_is_removed_by_the_next(tmp_path: Path,
                                                          private_cache: Path) -> None:
    name = "1b9p07z77phvv2hf6gm9f28syp39f1ag-small"
    small = nar(regular(b"small"))
    entry = nixbase32.encode(hashlib.sha256(small).digest())
    nar_dir = private_cache / "store" / "nar"
    parent = os.getppid()
    gone = Owner(4194305, 1)  # above pid_max: certainly no process
    alive = Owner(parent, start_time(parent) or 0)
    leftovers = {owner: nar_dir / f".{entry}.{owner}-0.tmp" for owner in (gone, alive)}
    other_entry = nar_dir / f".{'0' * 32}.{gone}-0.tmp"  # not this entry's: not looked at
    for leftover in (*leftovers.values(), other_entry):
        (leftover / "root").mkdir(parents=True)
        (leftover / "root").chmod(0o555)
    write_cache_entry(tmp_path / "cache", name, small)
    closure_from(tmp_path / "cache", tmp_path, f"/nix/store/{name}")
    assert not leftovers[gone].exists()
    assert leftovers[alive].exists() and other_entry.exists()


def test_nar_url_encoded_dot_dot_is_refused(tmp_path: Path) -> None:
    name = "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs"
    info = write_cache_entry(tmp_path / "cache", name, nar(regular(b"")))
    info.write_text(re.sub(r"^URL: .*$", "URL: nar/%2e%2e/%2E%2E/etc/passwd",
                           info.read_text(), flags=re.M))
    with pytest.raises(InitkitError, match=r"URL 'nar/%2e%2e/.*leaves the cache directory"):
        closure_from(tmp_path / "cache", tmp_path, f"/nix/store/{name}")


def test_a_nar_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    name = "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs"
    info = write_cache_entry(tmp_path / "cache", name, nar(regular(b"")))
    url = re.search(r"^URL: (.*)$", info.read_text(), re.M)
    assert url is not None
    nar_file = tmp_path / "cache" / url[1]
    nar_file.unlink()
    os.mkfifo(nar_file)  # would block a reader for ever
    with pytest.raises(InitkitError, match="the NAR is not a regular file; refused"):
        closure_from(tmp_path / "cache", tmp_path, f"/nix/store/{name}")


def test_two_runs_unpacking_one_nar_at_once_share_the_entry(nix_outputs: NixOutputs,
                                                            tmp_path: Path,
                                                            private_cache: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cache = nix_copy([nix_outputs.glibc], tmp_path / "cache")
    with ThreadPoolExecutor(max_workers=4) as pool:
        views = list(pool.map(lambda _: closure_from(cache, tmp_path, nix_outputs.glibc),
                              range(4)))
    assert all(v == views[0] for v in views)
    assert len(cache_leftovers(private_cache)) == 1  # one entry, no temporary left


def test_a_narinfo_whose_nar_is_missing(tmp_path: Path, private_cache: Path) -> None:
    name = "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs"
    write_cache_entry(tmp_path / "cache", name, nar(regular(b"")))
    for nar_file in (tmp_path / "cache" / "nar").iterdir():
        nar_file.unlink()
    with pytest.raises(InitkitError, match=f"NAR of /nix/store/{name} \\(from .*{name[:32]}"
                       r"\.narinfo\) .*: no such file"):
        closure_from(tmp_path / "cache", tmp_path, f"/nix/store/{name}")
    assert cache_leftovers(private_cache) == []
