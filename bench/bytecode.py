"""hostrun's boot with and without the checkout's bytecode, alternating in one run.

    python3 bench/bytecode.py [--runs N] [--kernel BZIMAGE]

Each round boots `CH_CMDLINE=tvix.exec=... hostrun` (the console path) of a static hello
once after `compileall` of initkit's packages and once with every `__pycache__` of the
checkout removed, as an editable install under $PYTHONDONTWRITEBYTECODE is (why
scripts/setup.sh compiles it). The bytecode is compiled again at the end.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("guest", "hostrun", "initbuilder", "initkit")
HOSTRUN = str(Path(sys.executable).with_name("hostrun"))


def compiled(on: bool) -> None:
    for package in PACKAGES:
        if on:
            compileall.compile_dir(ROOT / package, quiet=1)
        else:
            for cache in (ROOT / package).rglob("__pycache__"):
                shutil.rmtree(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--kernel", default="minimal")
    args = parser.parse_args()
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        hello = Path(tmp) / "store" / "hello"
        hello.parent.mkdir()
        source = Path(tmp) / "hello.c"
        source.write_text('#include <unistd.h>\nint main(void){write(1,"hi\\n",3);return 0;}\n')
        subprocess.run([cc, "-static", "-O2", "-o", str(hello), str(source)], check=True)
        env = dict(os.environ, CH_CMDLINE="tvix.exec=/nix/store/hello")
        times: dict[str, list[float]] = {"bytecode": [], "no bytecode": []}
        try:
            for _ in range(args.runs):
                for case in times:
                    compiled(case == "bytecode")
                    start = time.perf_counter()
                    out = subprocess.run([HOSTRUN, "--kernel", args.kernel, "--store",
                                          str(hello.parent)], env=env, capture_output=True)
                    times[case].append(time.perf_counter() - start)
                    if out.returncode != 0 or out.stdout.strip() != b"hi":
                        raise SystemExit(f"boot failed ({out.returncode}):\n"
                                         f"{out.stderr.decode(errors='replace')}")
        finally:
            compiled(True)
    for case, values in times.items():
        print(f"{case:12} median {statistics.median(values) * 1000:5.0f} ms  "
              f"min {min(values) * 1000:5.0f} ms  ({args.runs} runs)")


if __name__ == "__main__":
    main()
