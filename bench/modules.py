"""How long resolving kernel module closures takes on Debian 12's kernel tree, which ships
no modules.dep: every figure reads the .ko files' own .modinfo. Also: taking the vmlinux
out of the bzImage, with and without the cache.

Run: python bench/modules.py [--runs N]
Each run uses a fresh ModuleTree (no in-process caches); the files are in the page cache
after the first run, as they are for repeated builds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from initbuilder.image import Image
from initbuilder.kernels.fetch import fetch_debian_kernel
from initbuilder.kernels.formats import extract_vmlinux, vmlinux_from_bzimage
from initbuilder.kernels.modules import DEFAULT_MODULES, ModuleTree, add_modules, resolve


def median_ms(runs: int, func: Callable[[], object]) -> tuple[float, float]:
    """Median and minimum wall time of ``func`` over ``runs`` calls, in milliseconds."""
    func()  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    kernel = fetch_debian_kernel()
    tree_dir = kernel.modules_dir
    count = sum(1 for _ in tree_dir.rglob("*.ko*"))
    print(f"kernel {kernel.version} ({kernel.package}={kernel.package_version}), "
          f"{count} module files, modules.dep present: {(tree_dir / 'modules.dep').exists()}")

    def closure() -> list[str]:
        return [m.name for m in resolve(ModuleTree(tree_dir), DEFAULT_MODULES).load_order]

    print(f"virtiofs closure: {' '.join(closure())}")
    rows = [
        ("index the tree (walk, no modules.dep)", lambda: ModuleTree(tree_dir).files),
        (f"resolve {'+'.join(DEFAULT_MODULES)} (index + .modinfo)", closure),
        ("add_modules into an Image (default set)",
         lambda: add_modules(Image(), modules_dir=tree_dir)),
        ("resolve by alias fs-virtiofs (scan every .ko)",
         lambda: resolve(ModuleTree(tree_dir), ["fs-virtiofs"])),
        ("vmlinux from the bzImage, decompressing (xz)",
         lambda: vmlinux_from_bzimage(kernel.bzimage.read_bytes())),
        ("vmlinux from the bzImage, cached (hash + lookup)",
         lambda: extract_vmlinux(kernel.bzimage)),
    ]
    for label, func in rows:
        slow = "alias" in label or "decompressing" in label
        runs = max(3, args.runs // 5) if slow else args.runs
        median, best = median_ms(runs, func)
        print(f"{label:58} median {median:8.1f} ms  min {best:8.1f} ms  ({runs} runs)")


if __name__ == "__main__":
    main()
