"""Real boots: Debian's kernel and initkit's minimal kernel under QEMU TCG, a real
virtiofsd, stores the tests build.

Every boot has a timeout. The initrd is hostrun's default for the kernel (built once,
cached). HOSTRUN_E2E_INITRD=PATH runs the suite on another initrd. With
HOSTRUN_E2E_INITRD=floor (or while initbuilder has no guest runtime) the
floor initrd of bench/floor.py, a busybox script speaking the same status protocol,
stands in: a failure with both points at hostrun, with only one at the guest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from realparts import missing_part

from hostrun.api import VmRunner
from initbuilder.kernels.fetch import FetchedKernel

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 60.0  # per boot; a healthy TCG boot takes about 2 s
MINIMAL_KERNEL_ENV = "INITKIT_TEST_MINIMAL_KERNEL"

HELLO_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    puts("Hello, world!");
    fflush(stdout);
    if (argc > 2 && strcmp(argv[1], "exit") == 0) return atoi(argv[2]);
    if (argc > 2 && strcmp(argv[1], "signal") == 0) raise(atoi(argv[2]));
    return 0;
}
"""


@dataclass(frozen=True)
class Store:
    """A /nix/store tree built by the tests, and the store paths in it."""

    root: Path
    docs: str  # /nix/store/<hash>-docs
    hello: str  # /nix/store/<hash>-hello/bin/hello (static)
    dynhello: str  # /nix/store/<hash>-dynhello/bin/hello (libraries in the store)


@pytest.fixture(scope="session")
def e2e_tools() -> None:
    for tool, package in (("qemu-system-x86_64", "qemu-system-x86"), ("gcc", "gcc"),
                          ("busybox", "busybox-static")):
        if shutil.which(tool) is None:
            missing_part(f"{tool} is not installed (apt-get install {package})")
    if not any(os.access(p, os.X_OK) for p in
               (shutil.which("virtiofsd") or "", "/usr/lib/qemu/virtiofsd")):
        missing_part("no virtiofsd")
    if os.geteuid() != 0:
        missing_part("virtiofsd needs root here")


@pytest.fixture(scope="session")
def e2e_kernel(debian_kernel: FetchedKernel, e2e_tools: None) -> Path:
    return debian_kernel.bzimage


@pytest.fixture(scope="session")
def e2e_initrd(e2e_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hostrun's default initrd for the kernel; the floor initrd until the guest
    runtime is part of initbuilder."""
    choice = os.environ.get("HOSTRUN_E2E_INITRD", "")
    if choice not in ("", "floor"):
        return Path(choice)  # an initrd to try the suite with
    try:
        import initbuilder.runtime  # noqa: F401

        floor = choice == "floor"  # to tell hostrun's faults from the guest's
    except ImportError:
        floor = True
    if floor:
        sys.path.insert(0, str(REPO))
        from bench.floor import build_floor_initrd

        return build_floor_initrd(tmp_path_factory.mktemp("floor") / "floor.cpio",
                                  kernel=e2e_kernel)
    from hostrun.initrd import default_initrd

    return default_initrd(e2e_kernel)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, e2e_tools: None) -> Store:
    root = tmp_path_factory.mktemp("store")
    docs = root / "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs"
    docs.mkdir()
    (docs / "README.md").write_text("# tvix docs\n")
    (docs / "value-pointer-equality.md").write_text("equality\n")
    src = root.parent / "hello.c"
    src.write_text(HELLO_C)
    hello = root / "1b9p07z77phvv2hf6gm9f28syp39f1ag-hello" / "bin" / "hello"
    hello.parent.mkdir(parents=True)
    subprocess.run(["gcc", "-static", "-O2", "-o", str(hello), str(src)], check=True)
    # A dynamically linked one whose loader and libc live in the store, as Nix does it.
    libdir = root / "5xyxwzjzbdgrcx1q8x2n64jwxdy7hlb0-glibc" / "lib"
    libdir.mkdir(parents=True)
    for lib in ("ld-linux-x86-64.so.2", "libc.so.6"):
        shutil.copy2(_host_library(lib), libdir / lib)
    guest_lib = f"/nix/store/{libdir.parent.name}/lib"
    dyn = root / "7q0w1m2c2k6c9fi0s4d0ifc0sf3kvp1w-dynhello" / "bin" / "hello"
    dyn.parent.mkdir(parents=True)
    subprocess.run(["gcc", "-O2", "-o", str(dyn), str(src),
                    f"-Wl,--dynamic-linker={guest_lib}/ld-linux-x86-64.so.2",
                    f"-Wl,-rpath,{guest_lib}"], check=True)
    return Store(root, f"/nix/store/{docs.name}",
                 f"/nix/store/{hello.parent.parent.name}/bin/hello",
                 f"/nix/store/{dyn.parent.parent.name}/bin/hello")


def _host_library(name: str) -> Path:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True,
                         text=True, check=True).stdout.strip()
    path = Path(out)
    if not path.is_absolute():
        for base in ("/lib/x86_64-linux-gnu", "/lib64", "/usr/lib/x86_64-linux-gnu"):
            if (Path(base) / name).exists():
                return (Path(base) / name).resolve()
    return path.resolve()


@pytest.fixture(scope="session")
def minimal_kernel(e2e_tools: None) -> Path:
    """initkit's minimal kernel if `initbuilder kernel build` has built it: a lookup in
    the cache (no build here: it takes minutes; scripts/test builds it before the tests).
    $INITKIT_TEST_MINIMAL_KERNEL names a bzImage built elsewhere instead: the CI leg on
    the other Debian release boots the one built on the host rather than build its own."""
    from initbuilder.kernels.build import lookup

    given = os.environ.get(MINIMAL_KERNEL_ENV)
    if given:
        if not Path(given).is_file():
            pytest.fail(f"${MINIMAL_KERNEL_ENV}={given}: no such file")
        return Path(given)

    built = lookup()
    if built is None:
        missing_part("the minimal kernel is not built: run `initbuilder kernel build` first")
    assert built is not None
    return built.bzimage


@pytest.fixture(scope="session")
def minimal_initrd(minimal_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The initrd for the minimal kernel, chosen as e2e_initrd chooses it."""
    choice = os.environ.get("HOSTRUN_E2E_INITRD", "")
    if choice not in ("", "floor"):
        return Path(choice)
    if choice == "floor":
        sys.path.insert(0, str(REPO))
        from bench.floor import build_floor_initrd

        return build_floor_initrd(tmp_path_factory.mktemp("floor") / "floor.cpio",
                                  kernel=minimal_kernel)
    from hostrun.initrd import default_initrd

    return default_initrd(minimal_kernel)


@pytest.fixture(params=["debian", "minimal"])
def vm(request: pytest.FixtureRequest) -> VmRunner:
    """The plugin's runner under TCG (KVM hangs here), once on Debian's kernel with
    its initrd, once on initkit's minimal kernel with its own (no modules)."""
    if request.param == "debian":
        kernel, initrd = (request.getfixturevalue("e2e_kernel"),
                          request.getfixturevalue("e2e_initrd"))
    else:
        kernel, initrd = (request.getfixturevalue("minimal_kernel"),
                          request.getfixturevalue("minimal_initrd"))
    return VmRunner(kernel=kernel, initrd=initrd, accel="tcg", vmm="qemu",
                    timeout=BOOT_TIMEOUT)


@dataclass
class CliRun:
    """A hostrun process run by a test, with what is needed to look for leftovers."""

    proc: subprocess.Popen[bytes]
    tag: str
    tmpdir: Path
    stdout: bytes = b""
    stderr: bytes = b""

    def finish(self, timeout: float = BOOT_TIMEOUT + 30) -> int:
        self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode

    def processes(self) -> list[str]:
        """"pid: command line" of every process started for this run still alive."""
        return _tagged_processes(self.tag)

    def assert_nothing_left(self) -> None:
        """No process of this run, no socket, no temp dir remains."""
        deadline = time.monotonic() + 5
        while (left := _tagged_processes(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"processes left running: {left}"
        assert list(self.tmpdir.iterdir()) == [], "hostrun left files in its temp dir"


def _tagged_processes(tag: str) -> list[str]:
    found = []
    needle = f"HOSTRUN_TEST_TAG={tag}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{pid}/cmdline", "rb") as c:
                        command = c.read().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{pid}: {command}")
        except OSError:
            continue
    return found


class StartCli(Protocol):
    """What the hostrun_cli fixture gives: start `hostrun ARGS`, with the e2e kernel and
    initrd unless told not to."""

    def __call__(self, *args: str, kernel: bool = True, initrd: bool = True,
                 stdin: int | None = subprocess.DEVNULL,
                 tmpdir: Path | None = None) -> CliRun: ...


@pytest.fixture
def hostrun_cli(e2e_kernel: Path, e2e_initrd: Path,
                tmp_path_factory: pytest.TempPathFactory) -> StartCli:
    """Start the real `hostrun` command; returns a CliRun to finish and inspect."""

    def start(*args: str, kernel: bool = True, initrd: bool = True,
              stdin: int | None = subprocess.DEVNULL, tmpdir: Path | None = None) -> CliRun:
        # Short, so hostrun keeps its socket there rather than falling back to /tmp.
        tmpdir = tmpdir or tmp_path_factory.mktemp("t", numbered=True)
        tag = uuid.uuid4().hex
        env = {**os.environ, "TMPDIR": str(tmpdir), "HOSTRUN_TEST_TAG": tag,
               "HOSTRUN_ACCEL": "tcg"}
        argv = [sys.executable, "-m", "hostrun"]
        if kernel:
            argv += ["--kernel", str(e2e_kernel)]
        if initrd:
            argv += ["--initrd", str(e2e_initrd)]
        argv += ["--vmm", "qemu", *args]
        proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        return CliRun(proc, tag, tmpdir)

    return start
