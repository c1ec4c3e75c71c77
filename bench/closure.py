"""How fast ELF closures resolve: every ELF in /usr/bin, in one process each, side by
side with lddtree (pax-utils, also pyelftools) and glibc's ldd over the same files.

Run: python bench/closure.py [--runs N] [--dir /usr/bin]
Each run of each tool is a fresh process (startup included); the runs interleave so the
three tools see the same page cache and machine load. One warm-up round is not counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from initbuilder.loader.elf import is_elf_file

_OURS = ("import sys; from initbuilder.cli.closure import closure; "
         "closure(['--json', '--allow-missing', *sys.argv[1:]])")


def elf_files(directory: str) -> list[str]:
    """Every entry of ``directory`` that is (or links to) an ELF file, sorted."""
    paths = (os.path.join(directory, name) for name in sorted(os.listdir(directory)))
    return [path for path in paths if is_elf_file(path)]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/usr/bin")
    args = parser.parse_args()
    files = elf_files(args.dir)
    tools = {"initkit": [sys.executable, "-c", _OURS, *files]}
    for name in ("lddtree", "ldd"):
        found = shutil.which(name)
        if found is None:
            print(f"{name}: not installed, left out")
        else:
            tools[name] = [found, *files]
    print(f"{len(files)} ELF files in {args.dir}; {args.runs} runs per tool "
          f"(+1 warm-up), interleaved; python {sys.version.split()[0]}")
    times: dict[str, list[float]] = {name: [] for name in tools}
    for run in range(args.runs + 1):
        for name, argv in tools.items():
            took = timed(argv)
            if run:
                times[name].append(took)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:8} median {medians[name]:7.3f} s   "
              f"min {min(values):7.3f} s   max {max(values):7.3f} s")
    for name in tools:
        if name != "initkit":
            print(f"{name}/initkit: {medians[name] / medians['initkit']:.1f}x")


if __name__ == "__main__":
    main()
