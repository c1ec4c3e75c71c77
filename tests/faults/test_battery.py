"""The fault battery: every command × every bad environment, as a user meets them.

Each case runs a real `initbuilder` or `hostrun` command (or a program using the Python
API, hostrun.VmRunner) in a subprocess, with its output, its $INITKIT_CACHE, its $TMPDIR
or one of its inputs in a bad place (fault_places.py), and checks that it says so on
exactly one line of stderr (no traceback), exits with the documented code (2: the path
is wrong; 120: the machine ran short; 0 where nothing is wrong for that command), and
leaves nothing behind: no temp file next to the target, nothing new in the cache, nothing
in $TMPDIR. Everything else the command meets is good: a cache warmed once by a run of
every command (which is also the battery's control: they all work there), an empty
output directory, an empty $TMPDIR.

Faults hit before any VM boots wherever the command needs the place before it boots;
the only boots are the warm-up's and one per environment where hostrun must work.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fault_places import (
    ENVIRONMENTS,
    LEFTOVER,
    MACHINE,
    Environment,
    can_run,
    listing,
    needs_root,
    run_in,
)
from realparts import missing_part

ROOT = Path(__file__).resolve().parents[2]
INITBUILDER = [sys.executable, "-m", "initbuilder"]
HOSTRUN = [sys.executable, "-m", "hostrun"]
TIMEOUT = 300.0
BOOT_TIMEOUT = "120"
DEB_PACKAGE = "linux-image-9.9.9-faults"
DEB_RELEASE = "9.9.9-faults"
# What commands say on stderr as they go (kernel build's phases, a first unpack): not
# errors, so not counted as lines of one.
PROGRESS = re.compile(r"kernel build: |unpacking \S+ \(once\)$|initbuilder: Kconfig kept "
                      r"|hostrun: building the initrd for "
                      r"|built into \S+: ")  # kernel modules: a kernel with them built in

# A program using the public API as a user would: an InitkitError is what it can fix.
API_DRIVER = """
import sys
from pathlib import Path
from hostrun import VmRunner
from initkit.errors import InitkitError
kernel, initrd, store, timeout = sys.argv[1:5]
runner = VmRunner(kernel=Path(kernel), initrd=Path(initrd), vmm="qemu", accel="tcg",
                  timeout=float(timeout))
try:
    result = runner.sh("true", store=Path(store))
except InitkitError as exc:
    print(f"api: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
if result.error:
    print(f"api: {result.error}", file=sys.stderr)
sys.exit(result.exit_code)
"""


@dataclass(frozen=True)
class Parts:
    """The good inputs every command is run with."""

    bzimage: str  # Debian's kernel
    initrd: str  # hostrun's default initrd for it
    cpio: str  # a small initrd to list
    elf: str  # a dynamically linked program
    deb: str  # a kernel package holding Debian's bzImage
    store: str  # a directory to share as /nix/store


@dataclass(frozen=True)
class Args:
    output: str  # where the command writes its output
    input: str  # the input the battery may put in a bad place


@dataclass(frozen=True)
class Command:
    name: str
    argv: Callable[[Parts, Args], list[str]]
    # kind -> whether a bad place of that kind concerns the command (True: it must fail
    # as the environment says; False: it must work regardless). Kinds not listed are
    # not tried (a command without an output has no output to misplace).
    kinds: dict[str, bool]
    output: str = ""  # its output's name ("" when it writes none; ending in / a directory)
    input: Callable[[Parts], str] | None = None
    # (kind, environment) -> the code instead of the environment's, or why not tried.
    special: dict[tuple[str, str], int | str] = field(default_factory=dict)
    # What the warm cache must hold for it, borrowed from the user's cache: "build" the
    # minimal kernel's, "source" the unpacked kernel source (making either takes minutes).
    needs: str = ""
    warm: bool = True  # run once to warm the cache (not where that would download)
    boots: bool = False


NOT_BUILT = 1  # `kernel build --cached` with no build in the cache (documented)
ONE_BOOT = "one boot per environment: hostrun's CLI boots here"
COMPILES = "would compile a kernel (minutes)"
UNPACKS = "would unpack the kernel source (minutes)"
DOWNLOADS = "would download a kernel package"


def _hostrun(p: Parts, a: Args, *, initrd: bool = True) -> list[str]:
    given = ["--initrd", p.initrd] if initrd else []  # none: the default, over the channel
    return [*HOSTRUN, "--kernel", a.input, *given, "--vmm", "qemu", "--accel", "tcg",
            "--store", p.store, "--timeout", BOOT_TIMEOUT, "--run", "true"]


COMMANDS = [
    Command("build", lambda p, a: [*INITBUILDER, "build", "-o", a.output, "--no-busybox"],
            {"output": True, "cache": True, "tmpdir": False}, output="initrd.cpio"),
    Command("ls", lambda p, a: [*INITBUILDER, "ls", a.input],
            {"input": True, "cache": False, "tmpdir": False}, input=lambda p: p.cpio),
    Command("closure", lambda p, a: [*INITBUILDER, "closure", a.input],
            {"input": True, "cache": False, "tmpdir": False}, input=lambda p: p.elf),
    Command("kernel info", lambda p, a: [*INITBUILDER, "kernel", "info", a.input],
            {"input": True, "cache": True, "tmpdir": False}, input=lambda p: p.bzimage),
    Command("kernel vmlinux",
            lambda p, a: [*INITBUILDER, "kernel", "vmlinux", a.input, "-o", a.output],
            {"output": True, "input": True, "cache": True, "tmpdir": False},
            output="vmlinux", input=lambda p: p.bzimage),
    Command("kernel modules", lambda p, a: [*INITBUILDER, "kernel", "modules", "--kernel",
                                            a.input],
            {"input": True, "cache": False, "tmpdir": False}, input=lambda p: p.bzimage),
    Command("kernel fetch --deb --cache",
            lambda p, a: [*INITBUILDER, "kernel", "fetch", "--deb", p.deb, "--cache", a.output],
            {"output": True}, output="kernels/"),
    Command("kernel fetch --deb", lambda p, a: [*INITBUILDER, "kernel", "fetch", "--deb",
                                                a.input],
            {"input": True, "cache": True, "tmpdir": True}, input=lambda p: p.deb),
    Command("kernel fetch", lambda p, a: [*INITBUILDER, "kernel", "fetch"], {"cache": True},
            special={("cache", "missing"): DOWNLOADS, ("cache", "full"): DOWNLOADS},
            warm=False),
    Command("kernel build --cached",
            lambda p, a: [*INITBUILDER, "kernel", "build", "--cached", "-o", a.output],
            {"output": True, "cache": True, "tmpdir": False}, output="kernel/",
            special={("cache", "missing"): NOT_BUILT, ("cache", "full"): NOT_BUILT},
            needs="build"),
    # Not warmed: it configures in $TMPDIR and leaves nothing in the cache (6 s for nothing).
    Command("kernel build --check", lambda p, a: [*INITBUILDER, "kernel", "build", "--check"],
            {"cache": True, "tmpdir": True}, special={("cache", "missing"): UNPACKS},
            needs="source", warm=False),
    Command("kernel build", lambda p, a: [*INITBUILDER, "kernel", "build"],
            {"cache": True, "tmpdir": False}, special={("cache", "missing"): COMPILES},
            needs="build"),
    Command("hostrun", _hostrun, {"input": True, "cache": True, "tmpdir": True},
            input=lambda p: p.bzimage, boots=True),
    # Without --initrd, --run goes over the control channel (hostrun/oneshot.py): the
    # session runs in a thread of its own, and its errors must come out the same.
    Command("hostrun over the channel",
            lambda p, a: _hostrun(p, a, initrd=False),
            {"cache": True, "tmpdir": True}, input=lambda p: p.bzimage,
            special={("cache", "missing"): ONE_BOOT, ("tmpdir", "symlink"): ONE_BOOT},
            boots=True),
    Command("api", lambda p, a: [sys.executable, "-c", API_DRIVER, a.input, p.initrd, p.store,
                                 BOOT_TIMEOUT],
            {"input": True, "cache": True, "tmpdir": True}, input=lambda p: p.bzimage,
            special={("cache", "missing"): ONE_BOOT, ("tmpdir", "symlink"): ONE_BOOT},
            warm=False, boots=True),
]


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("INITKIT_CACHE", "TMPDIR", "HOSTRUN_KERNEL", "INITKIT_KERNEL_PACKAGE")}
    return {**env, "PYTHONPATH": str(ROOT), "HOSTRUN_ACCEL": "tcg", **extra}


def _input_name(command: Command, parts: Parts) -> str:
    assert command.input is not None
    return Path(command.input(parts)).name


# -- the good inputs and the warm cache ----------------------------------------------
@pytest.fixture(scope="module")
def parts(debian_kernel: object, tmp_path_factory: pytest.TempPathFactory) -> Parts:
    from hostrun.initrd import default_initrd

    bzimage = Path(debian_kernel.bzimage)  # type: ignore[attr-defined]
    base = tmp_path_factory.mktemp("parts")
    cpio = base / "small.cpio"
    made = subprocess.run([*INITBUILDER, "build", "-o", str(cpio), "--no-busybox", "--no-init"],
                          capture_output=True, text=True, env=_environment({}), timeout=TIMEOUT)
    assert made.returncode == 0, made.stderr
    store = base / "store"
    store.mkdir()
    (store / "file").write_text("in the store\n")
    return Parts(str(bzimage), str(default_initrd(bzimage)), str(cpio),
                 shutil.which("true") or "/bin/true", str(_kernel_deb(bzimage, base)),
                 str(store))


def _kernel_deb(bzimage: Path, base: Path) -> Path:
    """A kernel package as Debian lays one out, holding Debian's bzImage (8 MB: a small
    tmpfs cannot take it)."""
    tree = base / "deb"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {DEB_PACKAGE}\nVersion: 1\nArchitecture: amd64\n"
        "Maintainer: initkit <initkit@example.org>\nDescription: the fault battery's kernel\n")
    (tree / "boot").mkdir()
    shutil.copyfile(bzimage, tree / "boot" / f"vmlinuz-{DEB_RELEASE}")
    modules = tree / "lib" / "modules" / DEB_RELEASE
    modules.mkdir(parents=True)
    (modules / "modules.builtin").write_text("kernel/fs/fuse/virtiofs.ko\n")
    deb = base / f"{DEB_PACKAGE}.deb"
    subprocess.run(["dpkg-deb", "-Znone", "--root-owner-group", "-b", str(tree), str(deb)],
                   check=True, capture_output=True, timeout=TIMEOUT)
    return deb


@pytest.fixture(scope="module")
def warm_cache(parts: Parts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache that has what every command keeps there: made by running each of them
    once in a good environment, which must work (the battery's control). Made once per
    test run: pytest-xdist's workers share it (the first makes it, under a lock), and
    each case works on links to it, never on it."""
    here = tmp_path_factory.getbasetemp()
    shared = here.parent if os.environ.get("PYTEST_XDIST_WORKER") else here
    base = shared / "battery-warm"
    with open(shared / "battery-warm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / "done").is_file():
            shutil.rmtree(base, ignore_errors=True)  # a worker that died making it
            base.mkdir()
            _make_warm_cache(parts, base)
            (base / "done").touch()
    return base / "cache"


def _make_warm_cache(parts: Parts, base: Path) -> None:
    cache = base / "cache"
    cache.mkdir(mode=0o700)
    _borrow_minimal_kernel(cache)
    for command in COMMANDS:
        if (not command.warm or _built_elsewhere(command) is not None
                or _missing_need(command, cache) is not None):
            continue
        out = base / command.name.replace(" ", "_")
        out.mkdir()
        tmpdir = base / f"{out.name}.tmp"
        tmpdir.mkdir()
        args = Args(str(out / command.output),
                    command.input(parts) if command.input else "")
        proc = subprocess.run(command.argv(parts, args), capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                              env=_environment({"INITKIT_CACHE": str(cache),
                                                "TMPDIR": str(tmpdir)}))
        assert proc.returncode == 0, f"{command.name} in a good environment:\n{proc.stderr}"


def _borrow_minimal_kernel(cache: Path) -> None:
    """Link the minimal kernel's build and the unpacked kernel source from the user's
    cache, where `initbuilder kernel build` put them (building here takes minutes):
    the build as hard links, the source (1.4 GB, only read) as a symbolic link."""
    from initkit.cache import cache_root

    found = subprocess.run([*INITBUILDER, "kernel", "build", "--cached", "--print", "root"],
                           capture_output=True, text=True, env=_environment({}),
                           timeout=TIMEOUT)
    users = cache_root()
    if found.returncode == 0:
        built = Path(found.stdout.strip())
        _link_tree(built, cache / "kernel-built" / built.name)
        users = built.parent.parent
    # The source even without a build (the other release's CI leg: `kernel build --check`
    # unpacked it there, the kernel was built on the host).
    source = users / "kernel-source"
    if source.is_dir():
        (cache / "kernel-source").symlink_to(source)


def _built_elsewhere(command: Command) -> str | None:
    """Why ``command`` is not tried on a machine whose minimal kernel was built on another
    (a CI leg in the other release's root): its cache holds no build to borrow. (A skip
    raised while the warm cache was made would skip the whole battery.)"""
    if command.needs == "build" and os.environ.get("INITKIT_TEST_MINIMAL_KERNEL"):
        return ("$INITKIT_TEST_MINIMAL_KERNEL: the minimal kernel is built on another "
                "machine, not in this one's cache")
    return None


def _missing_need(command: Command, cache: Path) -> str | None:
    if command.needs == "build" and not (cache / "kernel-built").is_dir():
        return "initkit's minimal kernel is not built (initbuilder kernel build)"
    if command.needs == "source" and not (cache / "kernel-source").is_dir():
        return "the kernel source is not unpacked (initbuilder kernel build --check)"
    return None


def _link_tree(source: Path, target: Path) -> None:
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=link)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path for the bad places: hostrun keeps its socket in
    $TMPDIR only when the path fits (else /tmp), and pytest's own paths are long."""
    from initkit.files import remove_tree

    made = Path(tempfile.mkdtemp(prefix="ikf-", dir="/tmp"))
    yield made
    remove_tree(made)  # a 0555 directory of the battery's own is made writable first


def _inside(name: str, target: str) -> bool:
    """Whether the listed ``name`` is ``target``, under it or a directory on its way."""
    name = name.rstrip("/")
    return name == target or name.startswith(target + "/") or target.startswith(name + "/")


# -- the battery -----------------------------------------------------------------------
def _cases() -> list[object]:
    cases: list[object] = []
    for command in COMMANDS:
        for kind, concerned in command.kinds.items():
            for env in ENVIRONMENTS:
                if kind not in env.codes:
                    continue
                code: int | str = env.codes[kind] if concerned else 0
                if kind == "output" and env.name == "missing" and command.output.endswith("/"):
                    code = 0  # an output directory is made with its parents, as mkdir -p
                code = command.special.get((kind, env.name), code)
                marks = [pytest.mark.skip(reason=code)] if isinstance(code, str) else []
                if command.boots and code == 0:
                    marks.append(pytest.mark.e2e)
                cases.append(pytest.param(command, kind, env, code, marks=marks,
                                          id=f"{command.name}-{kind}-{env.name}"))
    return cases


@pytest.mark.parametrize(("command", "kind", "env", "code"), _cases())
def test_bad_environment(command: Command, kind: str, env: Environment, code: int,
                         parts: Parts, warm_cache: Path, tmp_path: Path,
                         short_dir: Path) -> None:
    if (why := needs_root(env)) is not None:
        pytest.skip(why)
    if (why := _built_elsewhere(command)) is not None:
        pytest.skip(why)
    if (why := _missing_need(command, warm_cache)) is not None:
        missing_part(why)
    leaf = (_input_name(command, parts) if kind == "input"
            else command.output.rstrip("/") or "x")
    place = env.make(short_dir, kind, leaf)
    target = (os.path.relpath(os.path.realpath(place.path), os.path.realpath(place.watch))
              if place.watch else "")  # the output, as the listing of ``watch`` names it
    if (why := can_run(place)) is not None:
        pytest.skip(why)
    good = tmp_path / "good"
    good.mkdir()
    out, tmpdir, cache = good / "out", good / "tmp", good / "cache"
    out.mkdir()
    tmpdir.mkdir()
    _link_tree(warm_cache, cache)
    args = Args(place.path if kind == "output" else str(out / command.output),
                place.path if kind == "input" else
                (command.input(parts) if command.input else ""))
    env_vars = _environment({"INITKIT_CACHE": place.path if kind == "cache" else str(cache),
                             "TMPDIR": place.path if kind == "tmpdir" else str(tmpdir)})
    before = {"place": listing(place.watch), "cache": listing(cache)}
    proc, in_tmpfs = run_in(place, command.argv(parts, args), env_vars, TIMEOUT)
    report = f"exit {proc.returncode}, stderr:\n{proc.stderr}"

    assert "Traceback" not in proc.stderr, report
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and not PROGRESS.match(line)]
    assert proc.returncode == code, report
    if code == 0:
        assert lines == [], report
    else:
        assert len(lines) == 1, report
        if code != NOT_BUILT:  # an error: it names the place (or the tmpfs holding it)
            assert ": error: " in lines[0], report
            assert place.path in lines[0] or str(place.watch) in lines[0], report
        if code == MACHINE:
            assert "no space left on" in lines[0], report

    after = in_tmpfs if in_tmpfs is not None else listing(place.watch)
    new = after - (set() if in_tmpfs is not None else before["place"])
    assert not [name for name in new if LEFTOVER.search(Path(name).name)], (new, report)
    if kind == "cache":  # a failed run may have made the cache's directories and lock
        # files (empty, kept for the next build to lock), no more
        assert code in (0, NOT_BUILT) or all(name.endswith(("/", ".lock")) for name in new), \
            (new, report)
    elif kind == "output" and code == 0:
        assert all(_inside(name, target) for name in new), (new, report)
    elif kind == "output" and command.output.endswith("/"):  # may stay, made and empty
        assert all(name.endswith("/") and _inside(name, target) for name in new), (new, report)
    else:
        assert not new, (new, report)
    assert listing(cache) == before["cache"], (listing(cache) ^ before["cache"], report)
    assert listing(tmpdir) == set(), (listing(tmpdir), report)
    if kind != "output":
        made = listing(out)
        assert code == 0 or not made, (made, report)
        assert all(name.split("/")[0] == command.output.rstrip("/") for name in made), made
