"""How long a closure store view takes to set up, and a 50 MB NAR to unpack.

Run: python bench/closure_store.py [--runs N] (as root for the mount figures; needs
nix-store for --dump, xz and zstd to compress the NAR)

- view setup for 1, 100 and 2,000 synthetic store paths (each a directory with a
  file): build_view() plus a child started with the daemon's preexec
  (hostrun/procs.py), which makes the view in its private mount namespace (a tmpfs, a
  mount point and a read-only bind per path), minus the same child without a view;
  and, for comparison, the hard-link fallback (no root), whose cost follows the
  number of files.
- a 50 MB NAR of the host's shared libraries (the first files of /usr/lib/x86_64-linux-gnu
  up to 50 MB; compressed with xz -6, zstd -3, or not): the first fetch (FileHash over
  the file, decompress, NarHash, unpack, rename into the cache) and the cached one (the
  entry exists: a lookup); beside them, `xz -dc FILE | nix-store --restore DIR` (Nix's
  own unpacker, no hash checks) as a yardstick.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hostrun.procs import child_setup
from hostrun.storeview import nixbase32
from hostrun.storeview.nar import make_removable
from hostrun.storeview.narinfo import parse_narinfo
from hostrun.storeview.substituter import cached_entry, fetch_nar
from hostrun.storeview.view import StoreView, ViewEntry, build_view

LIBS = "/usr/lib/x86_64-linux-gnu"
NAR_BYTES = 50_000_000


def timed_ms(runs: int, func: Callable[[], object],
             before: Callable[[], object] = lambda: None) -> tuple[float, float]:
    """Median and minimum of ``func``'s wall time over ``runs`` calls (``before`` runs
    untimed ahead of each), in ms, after one warm-up call."""
    times = []
    for i in range(runs + 1):
        before()
        start = time.perf_counter()
        func()
        if i:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def synthetic_store(root: Path, count: int) -> StoreView:
    root.mkdir(parents=True)
    entries = []
    for i in range(count):
        name = nixbase32.encode(hashlib.sha1(b"%d" % i).digest()) + f"-path{i}"
        (root / name / "bin").mkdir(parents=True)
        (root / name / "bin" / "prog").write_text(f"path {i}\n")
        entries.append(ViewEntry(name, root / name, "bench"))
    return StoreView(tuple(entries), "bench")


def view_figures(runs: int, work: Path) -> None:
    for count in (1, 100, 2000):
        view_figure(runs, synthetic_store(work / f"store{count}", count), work / "view")


def view_figure(runs: int, view: StoreView, target: Path) -> None:
    count = len(view.entries)

    def clear() -> None:
        shutil.rmtree(target, ignore_errors=True)

    def spawn(mounts: bool) -> None:
        built = build_view(view, target, mounts=True) if mounts else None
        subprocess.run(["/bin/true"], check=True,
                       preexec_fn=child_setup(view=built.mounts if built else None))

    if os.geteuid() == 0:
        # Interleaved, so both see the same machine load.
        with_view: list[float] = []
        without: list[float] = []
        for i in range(runs + 1):
            clear()
            for times, mounts in ((with_view, True), (without, False)):
                start = time.perf_counter()
                spawn(mounts)
                if i:
                    times.append((time.perf_counter() - start) * 1000)
        view_ms, bare_ms = statistics.median(with_view), statistics.median(without)
        print(f"{count:5} paths: build_view + daemon child making the view "
              f"{view_ms:7.1f} ms (min {min(with_view):.1f}); the child without a view "
              f"{bare_ms:.1f} ms")
    linked, best = timed_ms(runs, lambda: build_view(view, target, mounts=False), clear)
    print(f"{count:5} paths: view of hard links (no root) {linked:7.1f} ms (min {best:.1f})")
    clear()


def nar_figures(runs: int, work: Path) -> None:
    tree = work / "big"
    (tree / "lib").mkdir(parents=True)
    total = 0
    for path in sorted(Path(LIBS).iterdir()):  # what store paths hold: libraries
        if total >= NAR_BYTES:
            break
        if path.is_file() and not path.is_symlink():
            size = path.stat().st_size
            if size <= NAR_BYTES - total:
                shutil.copyfile(path, tree / "lib" / path.name)
                total += size
    nar_bytes = subprocess.run(["nix-store", "--dump", str(tree)], check=True,
                               capture_output=True).stdout
    print(f"NAR: {len(nar_bytes) / 1e6:.1f} MB, {len(os.listdir(tree / 'lib'))} files")
    for compression in ("xz", "zstd", "none"):
        nar_figure(runs, work, nar_bytes, compression)


COMPRESSORS = {"xz": (["xz", "-T0", "-6", "-c"], ".xz", "xz -dc"),
               "zstd": (["zstd", "-T0", "-3", "-c"], ".zst", "zstd -dc"),
               "none": (None, "", "cat")}


def nar_figure(runs: int, work: Path, nar_bytes: bytes, compression: str) -> None:
    argv, suffix, unpack = COMPRESSORS[compression]
    data = (subprocess.run(argv, input=nar_bytes, check=True, capture_output=True).stdout
            if argv else nar_bytes)
    nar_file = work / f"big.nar{suffix}"
    nar_file.write_bytes(data)
    info = parse_narinfo(
        f"StorePath: /nix/store/{'0' * 32}-big\nURL: {nar_file.name}\n"
        f"Compression: {compression}\n"
        f"FileHash: sha256:{nixbase32.encode(hashlib.sha256(data).digest())}\n"
        f"FileSize: {len(data)}\n"
        f"NarHash: sha256:{nixbase32.encode(hashlib.sha256(nar_bytes).digest())}\n"
        f"NarSize: {len(nar_bytes)}\n", source="bench")
    entry = cached_entry(info)
    first, best = timed_ms(runs, lambda: fetch_nar(nar_file, info), lambda: _remove(entry))
    cached, cbest = timed_ms(runs, lambda: fetch_nar(nar_file, info))
    # Nix's own unpacker on the same file, as a yardstick (it checks no hash).
    restored = work / "restored"
    nix, _ = timed_ms(runs, lambda: subprocess.run(
        ["sh", "-c", f'{unpack} < "$1" | nix-store --restore "$2"', "sh", nar_file,
         restored], check=True), lambda: _remove(restored))
    _remove(restored)
    print(f"NAR, {compression:4} ({len(data) / 1e6:5.1f} MB file): first "
          f"{first:7.1f} ms (min {best:.1f}), cached {cached:.3f} ms (min {cbest:.3f}); "
          f"{unpack} | nix-store --restore {nix:.1f} ms")
    nar_file.unlink()


def _remove(path: Path) -> None:
    if os.path.lexists(path):
        make_removable(path)
        shutil.rmtree(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("view", "nar"), help="one half of the figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="closure-bench-") as tmp:
        work = Path(tmp)
        os.environ["INITKIT_CACHE"] = str(work / "cache")
        if args.only != "nar":
            view_figures(args.runs, work)
        if args.only != "view":
            nar_figures(args.runs, work)
        make_removable(work / "cache")


if __name__ == "__main__":
    main()
