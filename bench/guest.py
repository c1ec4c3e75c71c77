"""What the guest init costs: initrd bytes, interpreter start-up, the init's own time.

Run: python bench/guest.py [--runs N] [--boots N]   (as root: chroot; QEMU/TCG for boots)

1. Size: an initrd for Debian 12's kernel (skeleton, busybox, the virtiofs modules) with
   and without the guest runtime, uncompressed and zstd; the runtime's share, by part.
2. Start-up on the host, in a chroot of the unpacked runtime: `python -IS -c pass`, the
   same importing the guest package, and this Python's own `-I -S -c pass` for scale.
   Interleaved, medians of --runs.
3. In the VM (QEMU TCG via hostrun, `tvix.exec` of a static hello, `initkit.debug`):
   from the kernel's exec of /init to the init's code (interpreter start-up), the guest
   imports, and from exec to the action. Medians of --boots.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from initbuilder import sources
from initbuilder.cpio import write_initrd
from initbuilder.image import Image, Kind
from initbuilder.kernels.fetch import fetch_debian_kernel
from initbuilder.kernels.modules import add_modules
from initbuilder.runtime import PREFIX, add_runtime

HOSTRUN = str(Path(sys.executable).with_name("hostrun"))
HELLO_C = 'int main(void){return write(1,"hello\\n",6)!=6;}'
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"


def build(kernel: Path, *, with_runtime: bool) -> Image:
    image = Image()
    sources.add_skeleton(image)
    sources.add_busybox(image, sources.find_busybox(None))
    if with_runtime:  # before the modules: its /lib -> usr/lib link must come first
        add_runtime(image)
    add_modules(image, kernel=kernel, modules_dir=None, names=None)
    return image


def sizes(image: Image, work: Path, name: str) -> tuple[int, int]:
    raw, zst = work / f"{name}.cpio", work / f"{name}.cpio.zst"
    write_initrd(image, raw)
    write_initrd(image, zst)
    return raw.stat().st_size, zst.stat().st_size


def runtime_parts(image: Image) -> dict[str, int]:
    """Bytes of the runtime's files by part."""
    parts: dict[str, int] = {}
    for path, entry in image.items():
        if entry.kind is not Kind.FILE or not entry.source.startswith("guest runtime"):
            continue
        if path.endswith(".pyc"):
            part = "stdlib + guest .pyc"
        elif "lib-dynload" in path:
            part = "extension modules (stripped)"
        elif "libpython" in path or path.startswith(f"{PREFIX.lstrip('/')}/bin"):
            part = "interpreter + libpython (stripped)"
        elif path == "init":
            part = "/init"
        else:
            part = "shared libraries (libc, libm, libffi, ld.so)"
        parts[part] = parts.get(part, 0) + entry.size()
    return parts


def startup(work: Path, runs: int) -> dict[str, float]:
    image = Image()
    add_runtime(image)
    write_initrd(image, work / "runtime.cpio")
    root = work / "root"
    root.mkdir()
    with (work / "runtime.cpio").open("rb") as stream:
        subprocess.run(["cpio", "-id", "--quiet"], stdin=stream, cwd=root, check=True)
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    python = f"{PREFIX}/bin/python{VERSION}"
    rows = {
        "chroot: python -IS -c pass": [chroot, str(root), python, "-IS", "-c", "pass"],
        "chroot: python -IS, import the guest, bind libc":
            [chroot, str(root), python, "-IS", "-c",
             "import guest.__main__, guest.system; guest.system.System()"],
        "host: this python -I -S -c pass (full install)":
            [chroot, "/", sys.executable, "-I", "-S", "-c", "pass"],
    }
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(runs + 1):  # the first round warms the page cache, uncounted
        for label, argv in rows.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True, env={})
            times[label].append(time.perf_counter() - start)
    return {k: statistics.median(v[1:]) * 1000 for k, v in times.items()}


_EXEC = re.compile(r"kernel ran /init at ([\d.]+) s since boot; its code began ([\d.]+) ms")
_IMPORT = re.compile(r"timing:\s+([\d.]+) ms\s+import the guest package")
_MODULES = re.compile(r"timing:\s+([\d.]+) ms\s+load module")
_ACTION = re.compile(r"action starts at .*?, ([\d.]+) ms since exec\)")


def boots(initrd: Path, work: Path, count: int) -> dict[str, float]:
    store = work / "store"
    hello = store / "aaaa-hello" / "bin" / "hello"
    hello.parent.mkdir(parents=True)
    (work / "hello.c").write_text(HELLO_C)
    subprocess.run(["gcc", "-static", "-O2", "-w", "-o", str(hello), str(work / "hello.c")],
                   check=True)
    found: dict[str, list[float]] = {"interpreter start-up (exec -> /init's code)": [],
                                     "guest imports": [], "loading 8 modules": [],
                                     "exec of /init -> action": [], "hostrun wall time": []}
    for _ in range(count):
        start = time.perf_counter()
        proc = subprocess.run([HOSTRUN, "--initrd", str(initrd), "--store", str(store),
                               "--timeout", "120", "--cmdline", "initkit.debug",
                               "--exec", "/nix/store/aaaa-hello/bin/hello"],
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        out = proc.stdout + proc.stderr
        exec_match, action = _EXEC.search(out), _ACTION.search(out)
        imported = _IMPORT.search(out)
        if proc.returncode != 0 or not (exec_match and action and imported):
            print(f"boot failed (status {proc.returncode}):\n{out[-2000:]}", file=sys.stderr)
            continue
        found["interpreter start-up (exec -> /init's code)"].append(float(exec_match[2]))
        found["guest imports"].append(float(imported[1]))
        found["loading 8 modules"].append(sum(float(m) for m in _MODULES.findall(out)))
        found["exec of /init -> action"].append(float(action[1]))
        found["hostrun wall time"].append(wall * 1000)
    return {k: statistics.median(v) for k, v in found.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="start-up runs per row")
    parser.add_argument("--boots", type=int, default=5, help="VM boots (0: none)")
    args = parser.parse_args()
    kernel = fetch_debian_kernel().bzimage
    with tempfile.TemporaryDirectory(prefix="bench-guest-") as tmp:
        work = Path(tmp)
        full = build(kernel, with_runtime=True)
        base = build(kernel, with_runtime=False)
        raw_full, zst_full = sizes(full, work, "full")
        raw_base, zst_base = sizes(base, work, "base")
        print(f"initrd with the guest runtime: {raw_full:,} bytes, zstd {zst_full:,}")
        print(f"initrd without it (--no-init): {raw_base:,} bytes, zstd {zst_base:,}")
        print(f"runtime's share: {(raw_full - raw_base) / raw_full:.0%} uncompressed, "
              f"{(zst_full - zst_base) / zst_full:.0%} zstd")
        for part, size in sorted(runtime_parts(full).items(), key=lambda kv: -kv[1]):
            print(f"  {part}: {size:,} bytes")
        print(f"start-up on the host, medians of {args.runs}:")
        for label, ms in startup(work, args.runs).items():
            print(f"  {label}: {ms:.1f} ms")
        if args.boots:
            print(f"in the VM (QEMU TCG, hostrun), medians of {args.boots} boots:")
            for label, ms in boots(work / "full.cpio.zst", work, args.boots).items():
                print(f"  {label}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
