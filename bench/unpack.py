"""What the kernel's initramfs unpack costs under TCG, per compression of the same initrd.

Run: python bench/unpack.py [--runs N] [--kernel BZIMAGE]

hostrun's default initrd for initkit's minimal kernel (the guest runtime, busybox) is
written uncompressed and with each compression `initbuilder build` offers; the floor's
busybox-only initrd is the small one to compare with. Each is booted with `hostrun -v`
and `initramfs_async=0`, so the unpack runs alone inside its initcall, and timed from the
kernel's own "Unpacking initramfs..." to "Freeing initrd memory" lines (the clocksource is
the TSC by then, so these stamps are real time). Boots are interleaved run by run after
one warm-up round; medians and the range are printed with each file's size.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot import HOSTRUN, ensure_bytecode, make_store
from bench.floor import build_floor_initrd
from initbuilder.kernels.build import lookup

INITBUILDER = str(Path(sys.executable).with_name("initbuilder"))
SUFFIXES = (".cpio", ".cpio.lz4", ".cpio.zst", ".cpio.gz", ".cpio.xz")
_UNPACK = re.compile(r"\[\s*([\d.]+)\] Unpacking initramfs")
_FREED = re.compile(r"\[\s*([\d.]+)\] Freeing initrd memory")
_INIT = re.compile(r"\[\s*([\d.]+)\] Run /init")


def unpack_time(kernel: Path, initrd: Path, store: Path, program: str) -> tuple[float, float]:
    """Seconds from the unpack's start to its end, and the kernel's clock at /init."""
    proc = subprocess.run([HOSTRUN, "-v", "--kernel", str(kernel), "--initrd", str(initrd),
                           "--store", str(store), "--vmm", "qemu", "--accel", "tcg",
                           "--timeout", "120", "--cmdline", "initramfs_async=0",
                           "--exec", program], capture_output=True, text=True, check=False)
    out = proc.stdout + proc.stderr
    start, end, init = _UNPACK.search(out), _FREED.search(out), _INIT.search(out)
    if proc.returncode != 0 or not (start and end and init):
        raise SystemExit(f"{initrd.name}: boot failed ({proc.returncode}):\n{out[-2000:]}")
    return float(end[1]) - float(start[1]), float(init[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--kernel", type=Path, help="default: the cached minimal kernel")
    args = parser.parse_args()
    ensure_bytecode()
    kernel = args.kernel
    if kernel is None:
        built = lookup()
        if built is None:
            raise SystemExit("no minimal kernel: run `initbuilder kernel build` or --kernel")
        kernel = built.bzimage
    with tempfile.TemporaryDirectory(prefix="bench-unpack-") as tmp:
        work = Path(tmp)
        store = work / "store"
        store.mkdir()
        program = make_store(store)
        initrds = []
        for suffix in SUFFIXES:
            out = work / f"default{suffix}"
            subprocess.run([INITBUILDER, "build", "-o", str(out), "--kernel", str(kernel)],
                           check=True, capture_output=True)
            initrds.append(out)
        initrds.append(build_floor_initrd(work / "floor.cpio", kernel=kernel))
        times: dict[Path, list[tuple[float, float]]] = {i: [] for i in initrds}
        for initrd in initrds:
            unpack_time(kernel, initrd, store, program)  # warm-up
        for _ in range(args.runs):
            for initrd in initrds:
                times[initrd].append(unpack_time(kernel, initrd, store, program))
        sizes = {initrd: initrd.stat().st_size for initrd in initrds}
    print(f"kernel {kernel}; {args.runs} boots each, interleaved; initramfs_async=0")
    print(f"{'initrd':22} {'bytes':>11} {'unpack median':>14} {'min-max':>14} {'/init at':>9}")
    for initrd, found in times.items():
        unpack = [t[0] * 1000 for t in found]
        at_init = statistics.median(t[1] for t in found) * 1000
        print(f"{initrd.name:22} {sizes[initrd]:>11,} "
              f"{statistics.median(unpack):11.1f} ms {min(unpack):6.1f}-{max(unpack):6.1f} "
              f"{at_init:7.0f} ms")


if __name__ == "__main__":
    main()
