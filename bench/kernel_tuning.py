"""Kernel tuning under TCG: `hostrun --exec` wall time for kernels and command-line words.

Run: python bench/kernel_tuning.py --case NAME=KERNEL[@EXTRA CMDLINE] ... [--runs N]

Each case is a kernel (a path, or `minimal`) and the words added with `--cmdline`; every
case boots hostrun's default initrd for its kernel and runs a static hello from a store
shared over virtiofs, as bench/boot.py does. Cases are interleaved run by run after one
warm-up round, so drift hits them alike; the first case is the baseline of the ratios.
With --timestamps each case is also booted once more with -v to show when the kernel ran
/init and powered off (kernel clock, seconds).

Example (docs/kernel.md, "Tuning the boot"):
  python bench/kernel_tuning.py --runs 9 --case base=minimal \
      --case acpi=off=minimal@acpi=off --case debian=$(initbuilder kernel fetch --print bzimage)
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot import HOSTRUN, ensure_bytecode, make_store


def parse_case(text: str) -> tuple[str, str, str]:
    """"NAME=KERNEL[@WORDS]" -> (name, kernel, words); the name may itself hold "="."""
    head, _, words = text.partition("@")
    name, _, kernel = head.rpartition("=")
    if not name or not kernel:
        raise SystemExit(f"--case {text!r}: write NAME=KERNEL or NAME=KERNEL@WORDS")
    return name, kernel, words


def boot(kernel: str, words: str, store: Path, program: str,
         verbose: bool = False) -> tuple[float, str]:
    argv = [HOSTRUN, "--kernel", kernel, "--store", str(store), "--vmm", "qemu",
            "--accel", "tcg", "--timeout", "120"]
    if words:
        argv += ["--cmdline", words]
    if verbose:
        argv.append("-v")
    start = time.perf_counter()
    proc = subprocess.run([*argv, "--exec", program], stdin=subprocess.DEVNULL,
                          capture_output=True, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0 or b"Hello, world!" not in proc.stdout:
        raise SystemExit(f"{kernel} {words!r} failed ({proc.returncode}): {proc.stdout[-300:]!r} "
                         f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return took, (proc.stdout + proc.stderr).decode(errors="replace")


def kernel_times(log: str) -> str:
    """When the kernel ran /init and when it powered off, from -v's kernel lines."""
    found = []
    for label, pattern in (("/init", r"\[\s*([\d.]+)\] Run /init"),
                           ("off", r"\[\s*([\d.]+)\] reboot: Power down")):
        match = re.search(pattern, log)
        found.append(f"{label} {match.group(1) if match else '?'}")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", required=True, metavar="NAME=KERNEL[@W]")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--timestamps", action="store_true")
    args = parser.parse_args()
    cases = [parse_case(c) for c in args.case]
    ensure_bytecode()
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        program = make_store(store)
        for _, kernel, words in cases:
            boot(kernel, words, store, program)  # warm up, build the initrds
        for _ in range(args.runs):
            for name, kernel, words in cases:
                times[name].append(boot(kernel, words, store, program)[0])
        stamps = {name: kernel_times(boot(kernel, words, store, program, verbose=True)[1])
                  for name, kernel, words in cases} if args.timestamps else {}
    base = statistics.median(times[cases[0][0]])
    print(f"{args.runs} runs each, interleaved; ratio to {cases[0][0]!r}")
    for name, _, _ in cases:
        median = statistics.median(times[name])
        print(f"{name:24} {median * 1000:7.0f}ms  min {min(times[name]) * 1000:5.0f}  "
              f"max {max(times[name]) * 1000:5.0f}  {median / base:5.2f}  "
              f"{stamps.get(name, '')}")


if __name__ == "__main__":
    main()
