#!/usr/bin/env python3
"""Time `initbuilder build` against `find | cpio -o -H newc | zstd` on the same tree.

The tree: busybox with its applet links plus a copy of this Python's standard library
(a few thousand files). Both sides write a zstd-compressed newc archive of it; runs are
interleaved and the medians compared, all in one process run.

    python3 bench/build.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot import ensure_bytecode


def stage(root: Path) -> int:
    """Lay out the tree both tools archive; return its number of entries."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shutil.copytree(stdlib, root / "usr/lib/python3", symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages"))
    busybox = shutil.which("busybox")
    if busybox is None:
        sys.exit("bench/build.py needs busybox (apt-get install busybox-static)")
    (root / "bin").mkdir()
    shutil.copy2(busybox, root / "bin/busybox")
    for name in subprocess.run([busybox, "--list"], capture_output=True, text=True,
                               check=True).stdout.split():
        if name != "busybox":
            (root / "bin" / name).symlink_to("busybox")
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def timed(argv: list[str] | str, *, shell: bool = False, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, shell=shell, cwd=cwd)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    ensure_bytecode()  # as an installed initbuilder has it, not compiled on every run
    with tempfile.TemporaryDirectory(prefix="initkit-bench-") as tmp:
        work = Path(tmp)
        tree = work / "tree"
        tree.mkdir()
        entries = stage(tree)
        ours_cmd = [sys.executable, "-m", "initbuilder", "build", "-o", str(work / "ours.zst"),
                    "--no-init", "--no-busybox", "--file", f"{tree / 'usr'}:/usr",
                    "--file", f"{tree / 'bin'}:/bin"]
        gnu_cmd = f"find . | cpio -o -H newc --quiet | zstd -q -c > {work / 'gnu.zst'}"
        ours, gnu = [], []
        for _ in range(args.runs):
            ours.append(timed(ours_cmd))
            gnu.append(timed(gnu_cmd, shell=True, cwd=tree))
        m_ours, m_gnu = statistics.median(ours), statistics.median(gnu)
        size_ours = (work / "ours.zst").stat().st_size
        size_gnu = (work / "gnu.zst").stat().st_size
        print(f"tree: {entries} entries, {args.runs} runs each, interleaved")
        print(f"initbuilder build (zstd):       median {m_ours * 1000:7.0f} ms, {size_ours} bytes")
        print(f"find | cpio -o -H newc | zstd:  median {m_gnu * 1000:7.0f} ms, {size_gnu} bytes")
        print(f"ratio initbuilder / GNU pipeline: {m_ours / m_gnu:.2f}")


if __name__ == "__main__":
    main()
