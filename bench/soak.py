"""Fault-injection soak: N hostrun boots in a row, each with one injected fault.

Run: python bench/soak.py [--runs 100] [--seed 1] [--kernel K] [--fault NAME]...

Each boot runs `hostrun --run CMD` on a small store, and one fault drawn from a seeded
list hits it: the virtiofs daemon or QEMU killed, a guest that hangs into --timeout, a
guest kernel panic, SIGINT / SIGTERM / SIGKILL to hostrun at a random moment, the store
removed while the guest reads it. After each boot the script checks hostrun's exit code
against the documented one (docs/hostrun.md) and counts what was left behind:
  procs      QEMU or daemon processes still alive 5 s after hostrun ended
  sockets    sockets left under the run's TMPDIR
  tmpdirs    hostrun temp dirs left under the run's TMPDIR (a SIGKILLed hostrun cannot
             remove its own: a later hostrun must reap it once its VMM has started, so
             such a dir counts as leaked only if it survives the next boot whose guest
             came up)
  cachetmp   writers' temp files left in the cache (initkit.files.is_temp_name)
It prints one table by fault and the totals. Every hostrun here is a real one (the CLI
in a subprocess, as a user runs it), booting a real kernel under QEMU. The runs share a
cache of their own (warmed by two clean boots first), so what other programs write into
the user's cache is not counted; the kernel is hostrun's default, taken from the user's
cache, unless --kernel names one.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from initkit.files import is_temp_name

HOSTRUN = [sys.executable, "-m", "hostrun"]
READY = b"soak-ready"
HANG_TIMEOUT = 20  # --timeout of the hanging guest: longer than any boot here
RUN_LIMIT = 180.0  # a boot that takes longer than this is a hang of hostrun itself



@dataclass(frozen=True)
class Fault:
    name: str
    command: str  # the guest's shell command
    expected: int  # hostrun's documented exit code for this fault
    when: str  # "ready": after the guest printed READY; "random": at a random moment
    inject: Callable[[Run], None]
    extra: tuple[str, ...] = ()


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    store: Path
    tmpdir: Path
    output: bytearray = field(default_factory=bytearray)
    ready: threading.Event = field(default_factory=threading.Event)
    ready_at: float = 0.0  # time.monotonic() when READY came


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children[ppid].append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _kill_child(run: Run, prefix: str) -> None:
    for pid in _descendants(run.proc.pid):
        if _comm(pid).startswith(prefix):
            os.kill(pid, signal.SIGKILL)
            return
    raise RuntimeError(f"no {prefix} process under hostrun {run.proc.pid}")


def _kill_daemon_early(run: Run) -> None:
    """Kill the daemon as soon as it exists, before the guest has booted."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in _descendants(run.proc.pid):
            if _comm(pid).startswith("virtiofsd"):
                os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.005)
    raise RuntimeError("the daemon never appeared")


def _signal_hostrun(signum: int) -> Callable[[Run], None]:
    def inject(run: Run) -> None:
        run.proc.send_signal(signum)
    return inject


def _remove_store(run: Run) -> None:
    shutil.rmtree(run.store)


def _nothing(run: Run) -> None:
    pass


SLEEPER = f"echo {READY.decode()}; sleep 3; echo done"
LAST_MOMENT = 2.5  # s after READY: the latest "random moment", half a second before "done"
FAULTS = [
    Fault("none", SLEEPER, 0, "ready", _nothing),
    Fault("daemon killed before boot", SLEEPER, 121, "start", _kill_daemon_early),
    Fault("daemon killed during run", SLEEPER, 121, "ready",
          lambda run: _kill_child(run, "virtiofsd")),
    Fault("qemu killed", SLEEPER, 122, "ready", lambda run: _kill_child(run, "qemu-system")),
    Fault("guest hangs into --timeout", f"echo {READY.decode()}; sleep 1000", 124, "ready",
          _nothing, ("--timeout", str(HANG_TIMEOUT))),
    Fault("guest kernel panic", f"echo {READY.decode()}; echo c > /proc/sysrq-trigger; sleep 10",
          123, "ready", _nothing),
    Fault("SIGINT to hostrun", SLEEPER, 130, "random", _signal_hostrun(signal.SIGINT)),
    Fault("SIGTERM to hostrun", SLEEPER, 143, "random", _signal_hostrun(signal.SIGTERM)),
    Fault("SIGKILL to hostrun", SLEEPER, -signal.SIGKILL, "random",
          _signal_hostrun(signal.SIGKILL)),
    Fault("store removed mid-run",
          f"echo {READY.decode()}; sleep 2; cat /nix/store/soak-file", 1, "ready", _remove_store),
]


def _pump(run: Run) -> None:
    stream = run.proc.stdout
    assert isinstance(stream, io.BufferedReader)  # a pipe, buffered (Popen's default)
    while chunk := stream.read1(65536):
        run.output += chunk
        if not run.ready.is_set() and READY in run.output:
            run.ready_at = time.monotonic()
            run.ready.set()


def _leftover_procs(root: Path) -> int:
    """Processes whose command line names this soak's dirs (QEMU's socket, the daemon's)."""
    needle = str(root).encode()
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline and b"bench/soak.py" not in cmdline:
            count += 1
    return count


def _sockets(root: Path, names: set[str]) -> int:
    count = 0
    for name in names:
        top = root / name
        count += 1 if top.is_socket() else sum(1 for p in top.rglob("*") if p.is_socket())
    return count


def _cache_temps(cache: Path) -> set[Path]:
    if not cache.is_dir():
        return set()
    return {path for path in cache.rglob("*") if is_temp_name(path.name)}


def _default_kernel() -> str:
    """hostrun's default kernel, from the user's cache (fetched there if missing)."""
    if os.environ.get("HOSTRUN_KERNEL"):
        return os.environ["HOSTRUN_KERNEL"]
    found = subprocess.run([sys.executable, "-m", "initbuilder", "kernel", "fetch", "--print",
                            "bzimage"], capture_output=True, text=True, check=True)
    return found.stdout.strip()


def _exact(code: int, expected: int) -> bool:
    """A signal that kills hostrun before its handlers exist (the interpreter's start-up:
    nothing is started yet) ends it with the signal itself, which a shell reports as
    128+N: the same code."""
    return code == expected or (code < 0 and expected == 128 - code)


def one_boot(fault: Fault, root: Path, kernel: str, rng: random.Random,
             boot_time: float) -> tuple[int, float, bool]:
    """Boot once with ``fault``; returns hostrun's exit code, the run's wall time and
    whether the guest came up (its READY line: the VMM certainly started)."""
    store = root / "store"
    store.mkdir(exist_ok=True)
    (store / "soak-file").write_text("soak\n")
    tmpdir = root / "tmp"
    tmpdir.mkdir(exist_ok=True)
    argv = [*HOSTRUN, "--kernel", kernel, "--store", str(store), *fault.extra,
            "--run", fault.command]
    env = dict(os.environ, TMPDIR=str(tmpdir), INITKIT_CACHE=str(root / "cache"))
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)
    run = Run(proc, store, tmpdir)
    pump = threading.Thread(target=_pump, args=(run,), daemon=True)
    pump.start()
    if fault.when == "start":
        fault.inject(run)
    elif fault.when == "ready":
        if run.ready.wait(RUN_LIMIT):
            fault.inject(run)
    else:
        # Any moment from hostrun's start to shortly before the guest's command ends
        # (boot_time is a whole clean run, its 3 s sleep included). A run faster than
        # the clean one (the machine is shared: boots vary by seconds) would end before
        # a late moment came and the fault would miss it: a moment is never later than
        # LAST_MOMENT after READY, while the guest still sleeps.
        moment = start + rng.uniform(0.0, max(boot_time - 1.5, 0.5))
        while proc.poll() is None:
            now = time.monotonic()
            if now >= moment or (run.ready.is_set() and now >= run.ready_at + LAST_MOMENT):
                fault.inject(run)
                break
            time.sleep(0.005)
    try:
        code = proc.wait(RUN_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        print(f"  hostrun itself hung ({fault.name}); killed", file=sys.stderr)
    pump.join(5)
    elapsed = time.monotonic() - start
    if not _exact(code, fault.expected):
        tail = bytes(run.output[-600:]).decode(errors="replace")
        print(f"  {fault.name}: exit {code}, expected {fault.expected}\n{tail}", file=sys.stderr)
    return code, elapsed, run.ready.is_set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kernel", default=None, help="hostrun --kernel (default: hostrun's)")
    parser.add_argument("--fault", action="append", choices=[f.name for f in FAULTS],
                        help="only these faults (repeatable; default: all)")
    args = parser.parse_args()
    faults = [f for f in FAULTS if not args.fault or f.name in args.fault]
    rng = random.Random(args.seed)
    kernel = args.kernel or _default_kernel()
    rows: dict[str, Counter[str]] = defaultdict(Counter)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        root = Path(tmp)
        cache = root / "cache"
        # Two clean boots first: the first builds what hostrun caches (the initrd, the
        # vmlinux, its notes), the second gives the boot time against which "a random
        # moment" is drawn (the first's would be too long by the build).
        for _ in range(2):
            code, boot_time, _up = one_boot(FAULTS[0], root, kernel, rng, 10.0)
            if code != 0:
                print("the clean boot failed; nothing to soak", file=sys.stderr)
                return 1
        print(f"clean boot: {boot_time:.1f} s; {args.runs} runs, seed {args.seed}",
              file=sys.stderr)
        temps_before = _cache_temps(cache)
        # SIGKILLed runs' dirs (by fault), which the next hostrun whose VMM starts reaps.
        pending: dict[str, str] = {}
        seen = set(os.listdir(root / "tmp"))  # entries already counted (or already there)

        def check_reaped(now: set[str]) -> None:
            for name, by in list(pending.items()):
                if name in now:
                    rows[by]["tmpdirs"] += 1
                    rows[by]["sockets"] += _sockets(root / "tmp", {name})
                del pending[name]

        for index in range(args.runs):
            fault = rng.choice(faults)
            code, _elapsed, came_up = one_boot(fault, root, kernel, rng, boot_time)
            row = rows[fault.name]
            row["runs"] += 1
            row["exact"] += _exact(code, fault.expected)
            deadline = time.monotonic() + 5
            while (procs := _leftover_procs(root)) and time.monotonic() < deadline:
                time.sleep(0.1)
            row["procs"] += procs
            now = set(os.listdir(root / "tmp"))
            if came_up:  # its VMM started, so it reaped what SIGKILLed runs left
                check_reaped(now)
            else:  # some may be gone already, by a reap or never made
                for name in [n for n in pending if n not in now]:
                    del pending[name]
            left = now - seen
            seen |= now
            note = ""
            if code == -signal.SIGKILL:
                pending.update(dict.fromkeys(left, fault.name))
                note = f" (left {len(left)} dir(s) for a later hostrun to reap)" if left else ""
            else:
                row["tmpdirs"] += len(left)
                row["sockets"] += _sockets(root / "tmp", left)
            temps = _cache_temps(cache) - temps_before
            row["cachetmp"] += len(temps)
            temps_before |= temps
            leaked = [f"{procs} process(es)"] if procs else []
            leaked += [str(root / "tmp" / name) for name in left if code != -signal.SIGKILL]
            leaked += [str(path) for path in temps]
            if leaked:  # name them, to look at (or to rerun this fault alone with --fault)
                note += f"; LEFT {', '.join(sorted(leaked))}"
            print(f"{index + 1:3d}/{args.runs} {fault.name}: exit {code}{note}", file=sys.stderr)
        if pending:  # one more boot, to see the last SIGKILLed dirs reaped
            one_boot(FAULTS[0], root, kernel, rng, boot_time)
            check_reaped(set(os.listdir(root / "tmp")))
    columns = ["runs", "exact", "procs", "sockets", "tmpdirs", "cachetmp"]
    width = max(len(name) for name in rows) + 2
    print(f"{'fault':<{width}}" + "".join(f"{c:>9}" for c in columns))
    total: Counter[str] = Counter()
    for fault in FAULTS:
        if fault.name in rows:
            row = rows[fault.name]
            total.update(row)
            print(f"{fault.name:<{width}}" + "".join(f"{row[c]:>9}" for c in columns))
    print(f"{'total':<{width}}" + "".join(f"{total[c]:>9}" for c in columns))
    clean = total["exact"] == total["runs"] and not any(
        total[c] for c in ("procs", "sockets", "tmpdirs", "cachetmp"))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
