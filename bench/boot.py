"""Boot time of `hostrun --exec` against the floor: plain QEMU doing the same job.

Run: python bench/boot.py [--runs N] [--accel tcg|kvm] [--minimal BZIMAGE] [--no-debian]

Wall time from invocation to exit, for `--exec` of a tiny static program from a store
shared over virtiofs, on Debian 12's kernel and on initkit's minimal kernel. The floor
is what it costs at least: the same QEMU machine, kernel, kernel command line and
modules, the virtiofsd hostrun picks started directly, and a busybox sh script as /init doing the
same mounts and exec (bench/floor.py); it is started from this already-running process,
so it pays no interpreter start-up. Rows:
  floor                         plain QEMU + virtiofsd + busybox /init
  hostrun, floor initrd         hostrun's own overhead (CLI, daemon, supervision)
  hostrun, default initrd       what a user gets: hostrun + initkit's guest init
  floor, minimal kernel         the floor on initkit's own kernel (no modules to load)
  hostrun, minimal kernel       `hostrun --kernel minimal`, its default initrd
  minimal, tvix.exec            the same with CH_CMDLINE=tvix.exec=... (the console path,
                                as the floor: the native init runs it)
  minimal, tvix.exec, Python    the same with an initrd whose /init is the Python init
  default initrd, tvix.exec     CH_CMDLINE=tvix.exec=... on Debian's kernel
Runs are interleaved (one of each per round) so drift hits every row alike.
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

from bench.floor import build_floor_initrd, start_floor
from hostrun.virtiofs import choose_daemon
from initbuilder.kernels.build import lookup
from initbuilder.kernels.fetch import fetch_debian_kernel
from initbuilder.kernels.formats import extract_vmlinux
from initbuilder.spec import BuildSpec, build

HELLO_C = 'int main(void){static const char m[]="Hello, world!\\n";' \
          'return write(1,m,sizeof m-1)!=sizeof m-1;}'
HASH = "1b9p07z77phvv2hf6gm9f28syp39f1ag"
# The console script next to this interpreter: a version manager's shim on PATH (pyenv)
# would add its own start-up (200 ms here) to what is measured.
HOSTRUN = str(Path(sys.executable).with_name("hostrun"))


def ensure_bytecode() -> None:
    """Compile initkit's packages to bytecode, as an installed package has it: an editable
    install under $PYTHONDONTWRITEBYTECODE (set in this project's shells) otherwise
    compiles hostrun's modules from source on every run, ~20 ms of CPU before QEMU
    starts (docs/benchmarks.md, "Where a minimal-kernel boot's time goes")."""
    root = Path(__file__).resolve().parents[1]
    for package in ("initkit", "hostrun", "initbuilder", "guest"):
        compileall.compile_dir(root / package, quiet=1)


def make_store(root: Path) -> str:
    """A store with one static program; returns its guest path."""
    out = root / f"{HASH}-hello" / "bin" / "hello"
    out.parent.mkdir(parents=True)
    src = root.parent / "hello.c"
    src.write_text("#include <unistd.h>\n" + HELLO_C + "\n")
    subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(src)], check=True)
    return f"/nix/store/{HASH}-hello/bin/hello"


def floor_run(vmlinux: Path, initrd: Path, store: Path, program: str, accel: str,
              workdir: Path) -> float:
    """One floor boot: the virtiofsd hostrun would pick (C on Debian 12, Rust on 13, in
    the sandbox hostrun would use) on an inherited socket, then QEMU; seconds to exit,
    counting a boot that QEMU 10 lost before the init (booted again, as hostrun does)."""
    start = time.perf_counter()
    for _ in range(3):
        output = _floor_boot(vmlinux, initrd, store, program, accel, workdir)
        if output:
            break
        FLOOR_RETRIES.append(1)
    took = time.perf_counter() - start
    if b"Hello, world!" not in output or b":exit=0" not in output:
        raise SystemExit(f"floor boot failed:\n{output.decode(errors='replace')}")
    return took


FLOOR_RETRIES: list[int] = []


def _floor_boot(vmlinux: Path, initrd: Path, store: Path, program: str, accel: str,
                workdir: Path) -> bytes:
    path = workdir / "floor.sock"
    daemon, argv = start_floor(vmlinux, initrd, store, program, accel, path)
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    daemon.wait()
    path.unlink()
    return proc.stdout


def hostrun_run(kernel: Path | str, initrd: Path | None, store: Path, program: str,
                accel: str, *, console: bool = False) -> float:
    """One `hostrun --exec PROGRAM`; with ``console``, `CH_CMDLINE=tvix.exec=PROGRAM
    hostrun` instead (the seed's way: the console path, which the floor takes too,
    where `--exec` with hostrun's own initrd goes over the control channel)."""
    argv = [HOSTRUN, "--kernel", str(kernel), "--store", str(store), "--vmm", "qemu",
            "--accel", accel, "--timeout", "120"]
    if initrd is not None:
        argv += ["--initrd", str(initrd)]
    env = dict(os.environ)
    if console:
        env["CH_CMDLINE"] = f"tvix.exec={program}"
    else:
        argv += ["--exec", program]
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False,
                          env=env)
    took = time.perf_counter() - start
    if proc.returncode != 0 or not proc.stdout.endswith(b"Hello, world!\n"):
        raise SystemExit(f"hostrun failed ({proc.returncode}): {proc.stdout!r} "
                         f"{proc.stderr.decode(errors='replace')}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg")
    parser.add_argument("--initrd", type=Path, metavar="PATH",
                        help="also measure hostrun with this initrd (e.g. one built by "
                             "initbuilder build)")
    parser.add_argument("--minimal", type=Path, metavar="BZIMAGE",
                        help="the minimal kernel to measure (default: the cached "
                             "`initbuilder kernel build`, if there is one)")
    parser.add_argument("--no-debian", action="store_true",
                        help="leave out the Debian-kernel rows")
    args = parser.parse_args()
    if not os.access(HOSTRUN, os.X_OK):
        raise SystemExit(f"{HOSTRUN} is missing: pip install -e .")
    ensure_bytecode()
    kernel = fetch_debian_kernel()
    vmlinux = extract_vmlinux(kernel.bzimage)
    minimal = args.minimal
    if minimal is None:
        built = lookup()
        minimal = built.bzimage if built is not None else None
        if minimal is None:
            print("(minimal kernel not measured: run `initbuilder kernel build` first)")
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        work = Path(tmp)
        store = work / "store"
        store.mkdir()
        program = make_store(store)
        runners: dict[str, Callable[[], float]] = {}
        floors: dict[str, str] = {}  # row -> the floor row it is compared with
        if not args.no_debian:
            floor_initrd = build_floor_initrd(work / "floor.cpio", kernel=kernel.bzimage)
            runners["floor"] = lambda: floor_run(vmlinux, floor_initrd, store, program,
                                                 args.accel, work)
            runners["hostrun, floor initrd"] = lambda: hostrun_run(
                kernel.bzimage, floor_initrd, store, program, args.accel)
            try:
                hostrun_run(kernel.bzimage, None, store, program, args.accel)  # builds, caches
                runners["hostrun, default initrd"] = lambda: hostrun_run(
                    kernel.bzimage, None, store, program, args.accel)
                runners["default initrd, tvix.exec"] = lambda: hostrun_run(
                    kernel.bzimage, None, store, program, args.accel, console=True)
            except SystemExit as exc:
                print(f"(default initrd not measured: {str(exc).splitlines()[0][:200]})")
            if args.initrd is not None:
                given = args.initrd.resolve()
                runners["hostrun, --initrd given"] = lambda: hostrun_run(
                    kernel.bzimage, given, store, program, args.accel)
            floors.update({name: "floor" for name in runners})
        if minimal is not None:
            # The kernel's own vmlinux for the floor; hostrun gets the bzImage, which it
            # turns into that vmlinux itself, as for any kernel.
            minimal_vmlinux = extract_vmlinux(minimal)
            minimal_floor = build_floor_initrd(work / "floor-minimal.cpio", kernel=minimal)
            kernel_arg = "minimal" if args.minimal is None else str(minimal)
            runners["floor, minimal kernel"] = lambda: floor_run(
                minimal_vmlinux, minimal_floor, store, program, args.accel, work)
            runners["hostrun, minimal kernel"] = lambda: hostrun_run(
                kernel_arg, None, store, program, args.accel)
            runners["minimal, tvix.exec"] = lambda: hostrun_run(
                kernel_arg, None, store, program, args.accel, console=True)
            python_initrd = work / "python-init.cpio"
            build(BuildSpec(kernel=minimal, native_init=False), python_initrd)
            runners["minimal, tvix.exec, Python"] = lambda: hostrun_run(
                kernel_arg, python_initrd, store, program, args.accel, console=True)
            for name in ("floor, minimal kernel", "hostrun, minimal kernel",
                         "minimal, tvix.exec", "minimal, tvix.exec, Python"):
                floors[name] = "floor, minimal kernel"
        for name, runner in list(runners.items()):
            runner()  # warm the page cache, the vmlinux and initrd caches
            rows[name] = []
        for _ in range(args.runs):
            for name, runner in runners.items():
                rows[name].append(runner())
    medians = {name: statistics.median(times) for name, times in rows.items()}
    qemu_version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                  text=True, check=False).stdout.splitlines()[:1]
    print(f"Debian {Path('/etc/debian_version').read_text().strip()}, {' '.join(qemu_version)}, "
          f"virtiofsd {choose_daemon('auto', Path('/')).name}, Python {sys.version.split()[0]}")
    print(f"Debian kernel {kernel.version}; minimal kernel {minimal}; accel {args.accel}, "
          f"{args.runs} runs each, {os.cpu_count()} CPUs; floor boots lost before the init "
          f"and booted again: {len(FLOOR_RETRIES)}")
    print(f"{'':28} {'median':>8} {'min':>8} {'max':>8} {'/floor':>7}")
    for name, times in rows.items():
        print(f"{name:28} {medians[name] * 1000:7.0f}ms {min(times) * 1000:7.0f}ms "
              f"{max(times) * 1000:7.0f}ms {medians[name] / medians[floors[name]]:7.2f}")
    if "hostrun, minimal kernel" in medians and "hostrun, default initrd" in medians:
        print(f"hostrun, minimal kernel / hostrun, Debian's kernel (default initrds): "
              f"{medians['hostrun, minimal kernel'] / medians['hostrun, default initrd']:.2f}")
    if "minimal, tvix.exec" in medians and "default initrd, tvix.exec" in medians:
        print(f"tvix.exec (console path), minimal kernel / Debian's kernel: "
              f"{medians['minimal, tvix.exec'] / medians['default initrd, tvix.exec']:.2f}")
    if "floor, minimal kernel" in medians and "floor" in medians:
        print(f"floor, minimal kernel / floor, Debian's kernel: "
              f"{medians['floor, minimal kernel'] / medians['floor']:.2f}")


if __name__ == "__main__":
    main()
