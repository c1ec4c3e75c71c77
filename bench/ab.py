"""Before and after: this checkout against an earlier commit, interleaved in one run.

    python3 bench/ab.py --base REV [--runs N]

REV is checked out into a temporary git worktree; both trees get their bytecode compiled
(as installed packages have it), and each command runs from each tree in turn with
PYTHONPATH pointing at it, under this interpreter and its installed dependencies. Rows:

- `initbuilder build` of bench/build.py's tree (busybox and a copy of the standard
  library, zstd);
- `hostrun --exec` of a static hello from a store, Debian's kernel, hostrun's default
  initrd each (the first round builds them and is not counted); for this checkout also
  with `--initrd` of its default initrd, which keeps the console path where a default
  one-shot goes over the control channel.

It prints medians, minima, maxima and the ratio to REV's row. Compare ratios, not
absolute times across runs or machines.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot import make_store
from bench.build import stage

HERE = Path(__file__).resolve().parents[1]
PACKAGES = ("initkit", "initbuilder", "guest", "hostrun")


def compiled(root: Path) -> None:
    for package in PACKAGES:
        if (root / package).is_dir():
            compileall.compile_dir(root / package, quiet=1)


def timed(argv: list[str], root: Path, *, check: Callable[[subprocess.CompletedProcess[bytes]],
                                                          bool]) -> float:
    env = {**os.environ, "PYTHONPATH": str(root), "HOSTRUN_ACCEL": "tcg"}
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd="/", capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if not check(proc):
        raise SystemExit(f"{argv} from {root} failed ({proc.returncode}):\n"
                         f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def report(title: str, rows: dict[str, list[float]], base: str) -> None:
    print(f"\n{title}")
    reference = statistics.median(rows[base])
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"  {name:28} median {median * 1000:6.0f} ms  min {min(times) * 1000:6.0f}  "
              f"max {max(times) * 1000:6.0f}  ratio {median / reference:.3f}")


def default_initrd(root: Path) -> str:
    code = ("from hostrun.initrd import default_initrd\n"
            "from initbuilder.kernels.fetch import fetch_debian_kernel\n"
            "print(default_initrd(fetch_debian_kernel().bzimage))")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ,
                          "PYTHONPATH": str(root)}, capture_output=True, check=True, cwd="/")
    return proc.stdout.decode().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    known = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--verify", "--quiet",
                            f"{args.base}^{{commit}}"], capture_output=True, check=False)
    if known.returncode != 0:
        parser.error(f"--base {args.base}: no such commit in {HERE} (see git log)")
    with tempfile.TemporaryDirectory(prefix="initkit-ab-") as tmp:
        work = Path(tmp)
        old = work / "base"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "-q", "--detach",
                        str(old), args.base], check=True)
        try:
            run(old, HERE, work, args.runs, args.base)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force",
                            str(old)], check=False)


def run(old: Path, new: Path, work: Path, runs: int, base: str) -> None:
    compiled(old)
    compiled(new)
    trees = {base: old, "this checkout": new}

    tree = work / "tree"
    tree.mkdir()
    stage(tree)
    build: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(runs):
        for name, root in trees.items():
            out = work / f"build-{len(build[name])}.zst"
            build[name].append(timed(
                [sys.executable, "-m", "initbuilder", "build", "-o", str(out), "--no-init",
                 "--no-busybox", "--file", f"{tree / 'usr'}:/usr",
                 "--file", f"{tree / 'bin'}:/bin"], root,
                check=lambda p: p.returncode == 0))
            out.unlink()
    report(f"initbuilder build, {runs} runs each, interleaved", build, base)

    store = work / "store"
    hello = make_store(store)
    argv = [sys.executable, "-m", "hostrun", "--vmm", "qemu", "--store", str(store)]
    console = f"this checkout, --initrd {Path(default_initrd(new)).name}"
    cases = {base: (old, []), "this checkout": (new, []),
             console: (new, ["--initrd", default_initrd(new)])}
    boots: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(runs + 1):
        for name, (root, extra) in cases.items():
            elapsed = timed([*argv, *extra, "--exec", hello], root,
                            check=lambda p: p.returncode == 0 and p.stdout == b"Hello, world!\n")
            if round_:  # the first round builds each tree's default initrd
                boots[name].append(elapsed)
    report(f"hostrun --exec HELLO, Debian's kernel, {runs} runs each after a warm-up round, "
           "interleaved", boots, base)


if __name__ == "__main__":
    main()
