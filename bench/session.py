"""Commands in one Machine session against one hostrun boot per command.

Run: python bench/session.py [--runs 200] [--commands 100] [--boots N] [--accel tcg|kvm]
     [--kernel PATH]

Rows:
  round trip      the median (and 90th percentile) of ``vm.run(["true"])``: request,
                  fork+exec in the guest, exit, answer; ``--runs`` of them in one session
  N commands      wall time of ``--commands`` runs of the store's hello in one session
                  (the boot not counted: it is paid once)
  N boots         ``--commands`` hostrun boots doing the same, each `hostrun --exec`,
                  extrapolated from ``--boots`` of them (default 10: a boot is seconds)
  throughput      64 MiB of stdout from `head -c` through the channel, MB/s
Debian's kernel and hostrun's default initrd unless --kernel is given.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot import HOSTRUN, ensure_bytecode, make_store
from hostrun import Machine
from initbuilder.kernels.fetch import fetch_debian_kernel

THROUGHPUT_BYTES = 64 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--boots", type=int, default=10)
    parser.add_argument("--accel", default="tcg")
    parser.add_argument("--kernel", type=Path, default=None)
    args = parser.parse_args()
    ensure_bytecode()
    kernel = args.kernel or fetch_debian_kernel().bzimage
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        hello = make_store(store)
        started = time.perf_counter()
        with Machine(store=store, kernel=kernel, accel=args.accel, vmm="qemu") as vm:
            booted = time.perf_counter() - started
            for _ in range(10):  # warm-up: the guest's page cache, the agent's imports
                vm.succeed(["true"])
            trips = []
            for _ in range(args.runs):
                t = time.perf_counter()
                vm.run(["true"])
                trips.append(time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(args.commands):
                vm.succeed([hello])
            in_session = time.perf_counter() - t
            t = time.perf_counter()
            got = 0
            for _, chunk in vm.stream(["/bin/busybox", "head", "-c", str(THROUGHPUT_BYTES),
                                       "/dev/zero"]):
                got += len(chunk)
            throughput = got / (time.perf_counter() - t) / 1e6
            assert got == THROUGHPUT_BYTES, got
        boots = []
        for _ in range(args.boots):
            t = time.perf_counter()
            proc = subprocess.run([HOSTRUN, "--kernel", str(kernel), "--store", str(store),
                                   "--vmm", "qemu", "--accel", args.accel, "--timeout",
                                   "120", "--exec", hello], stdin=subprocess.DEVNULL,
                                  capture_output=True, check=False)
            boots.append(time.perf_counter() - t)
            if proc.returncode != 0:
                raise SystemExit(f"hostrun failed: {proc.stderr.decode(errors='replace')}")
    per_boot = statistics.median(boots)
    all_boots = per_boot * args.commands
    trips.sort()
    p90 = trips[int(len(trips) * 0.9)]
    print(f"boot of the session                 {booted * 1000:8.0f} ms")
    print(f"round trip of run(['true'])         {statistics.median(trips) * 1000:8.1f} ms "
          f"median, {p90 * 1000:.1f} ms p90 ({args.runs} runs)")
    print(f"{args.commands} commands in one session        {in_session * 1000:8.0f} ms")
    print(f"{args.commands} hostrun boots (median {per_boot * 1000:.0f} ms x {args.commands}) "
          f"{all_boots * 1000:8.0f} ms")
    print(f"ratio                               {all_boots / in_session:8.1f} x")
    print(f"stdout throughput                   {throughput:8.1f} MB/s")


if __name__ == "__main__":
    main()
