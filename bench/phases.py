"""Where a boot's time goes, phase by phase: the floor against `hostrun --kernel minimal`.

Run: python bench/phases.py [--runs N] [--case NAME=INITRD[@WORDS]]... [--no-floor]
          [--floor-over NAME=INITRD]...

Every case boots initkit's minimal kernel under QEMU/TCG and runs a static hello from a
store shared over virtiofs, as bench/boot.py does; cases are interleaved run by run after
one warm-up round. `hostrun` is the default case (its own default initrd); each --case adds
hostrun with that initrd (`-` for the default) and extra kernel command-line words. The
floor is bench/floor.py's busybox init with one line more (the kernel's "Run /init" record,
from dmesg). No case drops `quiet`: console output costs time under TCG.

How the phases are found, per boot (medians over the runs are printed):
  to QEMU        invocation to QEMU's exec (a wrapper first on PATH notes the time)
  QEMU start     QEMU's exec to the kernel's entry: QEMU's own start, the firmware, the
                 initrd copied into the guest (QEMU's trace of the firmware's last
                 fw_cfg read, the kernel's entry point, on the host's clock)
  kernel to /init  the kernel's entry to its "Run /init", on the host's clock: the kernel
                 log's stamp of that line plus the host time of the log clock's zero,
                 which is when a console line arrived less the kernel time it was printed
                 at (the init's "action starts at" line, moved onto the kernel log's clock
                 by the offset initkit.debug prints; the floor's power-off line). The log
                 clock itself lags the host's by ~0.2 s at that point under TCG (it
                 stands still while the kernel calibrates its APIC timer), so its own
                 figures for the early boot are not real time; after "sched_clock:
                 Marking stable" it is
  interpreter    /init exec to its first line of code (initkit.debug's timing lines)
  imports        importing the guest package
  init steps     the init's mounts, links, plan: up to the action
  action         the action (the hello), from the init's "action starts" to its "action
                 ended" line; for the floor, everything from /init to the power-off
  to power-off   the init's end (reaping, the status record, sync) to the kernel's
                 "reboot: Power down" (read from a console log QEMU writes: `quiet` keeps
                 that line)
  off to exit    power-off to hostrun's (or the floor's QEMU's) exit
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.boot import HOSTRUN, ensure_bytecode, make_store
from bench.floor import INIT_SCRIPT, build_floor_initrd, start_floor
from hostrun.vmm import Qemu
from initbuilder.kernels.build import lookup
from initbuilder.kernels.formats import extract_vmlinux

PHASES = ("to QEMU", "QEMU start", "kernel to /init", "interpreter", "imports",
          "init steps", "action", "to power-off", "off to exit")
# The floor's one extra line: when the kernel ran /init, in its own clock.
FLOOR_STAMP = "busybox dmesg | busybox grep -m1 'Run /init'\n"
QEMU_WRAPPER = r"""#!/bin/sh
# bench/phases.py: note when QEMU is exec'd, and have it log the console to a file.
date +%s.%N > "$PHASES_STAMP"
n=$#
while [ $n -gt 0 ]; do
  a=$1; shift; n=$((n - 1))
  [ "$a" = "stdio,id=con,signal=off" ] && a="$a,logfile=$PHASES_CONSOLE"
  set -- "$@" "$a"
done
exec REAL "$@" $PHASES_TRACE_ARGS
"""
# QEMU's own trace of the firmware's fw_cfg reads: the last one, of the kernel's entry
# point, is when the kernel starts, on the host's clock (gettimeofday, like time.time()).
_TRACE_ARGS = "-msg timestamp=on -trace fw_cfg_select -D {log}"
_ENTRY = re.compile(rb"@([\d.]+):fw_cfg_select .*'kernel_entry'")
_POWER_DOWN = re.compile(rb"\[\s*([\d.]+)\] reboot: Power down")
_RUN_INIT = re.compile(rb"\[\s*([\d.]+)\] Run /init")
_EXEC = re.compile(rb"kernel ran /init at ([\d.]+) s since boot; its code began ([\d.]+) ms")
_IMPORT = re.compile(rb"timing:\s+([\d.]+) ms\s+import the guest package")
_ACTION = re.compile(rb"action starts at ([\d.]+) s since boot")
_AHEAD = re.compile(rb"the kernel log's clock is (-?[\d.]+) ms ahead")
_ENDED = re.compile(rb"action ended at ([\d.]+) s since boot")


@dataclass(frozen=True)
class Case:
    name: str
    initrd: Path | None  # None: the floor
    words: str = ""
    default_initrd: bool = False


def lines_with_times(stream: object) -> list[tuple[float, bytes]]:
    """Each line of a pipe with the host time (time.time()) it arrived at."""
    found = []
    for line in stream:  # type: ignore[attr-defined]
        found.append((time.time(), line))
    return found


def hostrun_boot(case: Case, store: Path, program: str, work: Path) -> dict[str, float]:
    stamp, console, trace = work / "stamp", work / "console.log", work / "qemu-trace.log"
    trace.unlink(missing_ok=True)
    env = dict(os.environ, PATH=f"{work / 'bin'}:{os.environ['PATH']}",
               PHASES_STAMP=str(stamp), PHASES_CONSOLE=str(console),
               PHASES_TRACE_ARGS=_TRACE_ARGS.format(log=trace))
    argv = [HOSTRUN, "--kernel", "minimal", "--store", str(store), "--vmm", "qemu",
            "--accel", "tcg", "--timeout", "120",
            "--cmdline", f"initkit.debug {case.words}".strip()]
    if not case.default_initrd:
        argv += ["--initrd", str(case.initrd)]
    start = time.time()
    proc = subprocess.Popen([*argv, "--exec", program], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    lines = lines_with_times(proc.stdout)
    proc.wait()
    end = time.time()
    out = b"".join(line for _, line in lines)
    if proc.returncode != 0 or b"Hello, world!" not in out:
        raise SystemExit(f"{case.name}: hostrun failed ({proc.returncode}):\n"
                         f"{out.decode(errors='replace')[-3000:]}")
    qemu_exec = float(stamp.read_text())
    off = _POWER_DOWN.search(console.read_bytes())
    exec_match, imported, ahead = _EXEC.search(out), _IMPORT.search(out), _AHEAD.search(out)
    ended = _ENDED.search(out)
    action = next((ts, float(m[1])) for ts, line in lines if (m := _ACTION.search(line)))
    if off is None or exec_match is None or imported is None or ahead is None or not ended:
        raise SystemExit(f"{case.name}: timing lines missing:\n{out.decode(errors='replace')}")
    # Everything on the kernel log's clock, as the floor's figures are; the init's own
    # times are CLOCK_BOOTTIME, which that clock is ``ahead`` of.
    shift = float(ahead[1]) / 1000
    at_action = action[1] + shift
    k0 = action[0] - at_action
    at_init, interpreter = float(exec_match[1]) + shift, float(exec_match[2]) / 1000
    imports = float(imported[1]) / 1000
    at_off = float(off[1])
    entry = kernel_entry(trace)
    return {"wall": end - start, "to QEMU": qemu_exec - start, "QEMU start": entry - qemu_exec,
            "kernel to /init": k0 + at_init - entry, "interpreter": interpreter,
            "imports": imports,
            "init steps": at_action - at_init - interpreter - imports,
            "action": float(ended[1]) + shift - at_action,
            "to power-off": at_off - (float(ended[1]) + shift), "off to exit": end - (k0 + at_off),
            "k-clock off": at_off}


def floor_boot(vmlinux: Path, initrd: Path, store: Path, program: str,
               work: Path) -> dict[str, float]:
    """bench/boot.py's floor boot, with its console read line by line as it comes."""
    path = work / "floor.sock"
    start = time.time()
    daemon, argv = start_floor(vmlinux, initrd, store, program, "tcg", path)
    trace = work / "qemu-trace.log"
    trace.unlink(missing_ok=True)
    argv += _TRACE_ARGS.format(log=trace).split()
    qemu_exec = time.time()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    lines = lines_with_times(proc.stdout)
    proc.wait()
    daemon.wait()
    end = time.time()
    path.unlink()
    out = b"".join(line for _, line in lines)
    off = next(((ts, float(m[1])) for ts, line in lines if (m := _POWER_DOWN.search(line))),
               None)
    at_init = _RUN_INIT.search(out)
    if b"Hello, world!" not in out or off is None or at_init is None:
        raise SystemExit(f"floor boot failed:\n{out.decode(errors='replace')}")
    k0 = off[0] - off[1]
    entry = kernel_entry(trace)
    return {"wall": end - start, "to QEMU": qemu_exec - start, "QEMU start": entry - qemu_exec,
            "kernel to /init": k0 + float(at_init[1]) - entry, "interpreter": 0.0,
            "imports": 0.0,
            "init steps": 0.0, "action": off[1] - float(at_init[1]), "to power-off": 0.0,
            "off to exit": end - off[0], "k-clock off": off[1]}


def kernel_entry(trace: Path) -> float:
    """When the firmware read the kernel's entry point, from QEMU's trace (host clock)."""
    found = _ENTRY.findall(trace.read_bytes())
    if not found:
        raise SystemExit(f"no fw_cfg kernel_entry read in QEMU's trace {trace}")
    return float(found[-1])


def parse_case(text: str) -> Case:
    """"NAME=INITRD[@WORDS]"; INITRD `-` is hostrun's default initrd."""
    head, _, words = text.partition("@")
    name, _, initrd = head.partition("=")
    if not name or not initrd:
        raise SystemExit(f"--case {text!r}: write NAME=INITRD or NAME=INITRD@WORDS")
    if initrd == "-":
        return Case(name, None, words, default_initrd=True)
    return Case(name, Path(initrd).resolve(), words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--case", action="append", default=[], metavar="NAME=INITRD[@W]")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--floor-over", action="append", default=[], metavar="NAME=INITRD",
                        help="also the floor with its initrd appended to INITRD (the "
                             "kernel unpacks both, the floor's /init wins): what that "
                             "initrd's size costs the kernel")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every boot's phases there")
    args = parser.parse_args()
    built = lookup()
    if built is None:
        raise SystemExit("no minimal kernel: run `initbuilder kernel build` first")
    cases = [Case("hostrun", None, default_initrd=True)]
    cases += [parse_case(text) for text in args.case]
    ensure_bytecode()
    with tempfile.TemporaryDirectory(prefix="bench-phases-") as tmp:
        work = Path(tmp)
        (work / "bin").mkdir()
        wrapper = work / "bin" / Qemu.default_binary
        real = subprocess.run(["which", Qemu.default_binary], capture_output=True,
                              text=True, check=True).stdout.strip()
        wrapper.write_text(QEMU_WRAPPER.replace("REAL", real))
        wrapper.chmod(0o755)
        store = work / "store"
        store.mkdir()
        program = make_store(store)
        runners: dict[str, Callable[[], dict[str, float]]] = {}
        if not args.no_floor:
            vmlinux = extract_vmlinux(built.bzimage)
            floor = build_floor_initrd(work / "floor.cpio", kernel=built.bzimage,
                                       init_script=INIT_SCRIPT.replace(
                                           "export PATH=/bin\n",
                                           "export PATH=/bin\n" + FLOOR_STAMP))
            runners["floor"] = lambda: floor_boot(vmlinux, floor, store, program, work)
            for text in args.floor_over:
                name, _, under = text.partition("=")
                over = work / f"floor-over-{len(runners)}.cpio"
                over.write_bytes(Path(under).read_bytes() + floor.read_bytes())
                runners[name] = functools.partial(floor_boot, vmlinux, over, store, program,
                                                  work)
        for case in cases:
            runners[case.name] = functools.partial(hostrun_boot, case, store, program, work)
        rows: dict[str, list[dict[str, float]]] = {}
        for name, runner in runners.items():
            runner()  # warm-up: page cache, the default initrd's build
            rows[name] = []
        for _ in range(args.runs):
            for name, runner in runners.items():
                rows[name].append(runner())
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"minimal kernel {built.bzimage}; {args.runs} runs each, interleaved; "
          f"ms, median (min) per phase; wall: median (min-max)")
    keys = (*PHASES, "k-clock off")
    print(f"{'':12}{'wall':>17}" + "".join(f"{k:>15}" for k in keys))
    for name, found in rows.items():
        walls = [r["wall"] * 1000 for r in found]
        wall = f"{statistics.median(walls):.0f} ({min(walls):.0f}-{max(walls):.0f})"
        print(f"{name:12}{wall:>17}" + "".join(
            f"{statistics.median(r[k] for r in found) * 1000:9.0f}"
            f" ({min(r[k] for r in found) * 1000:3.0f})" for k in keys))
    base = statistics.median(r["wall"] for r in rows[next(iter(rows))])
    for name, found in rows.items():
        print(f"{name}: {statistics.median(r['wall'] for r in found) / base:.3f} of "
              f"{next(iter(rows))}")


if __name__ == "__main__":
    main()
