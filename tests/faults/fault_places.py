"""The bad environments of the fault battery, and how a command is run in one.

A place is where the battery puts a command's output, its $INITKIT_CACHE, its $TMPDIR
or one of its inputs: a directory the user may not write, a missing one, a read-only
or full filesystem (a small tmpfs in a private mount namespace, which only this command
sees), a symbolic link, another user's directory, /proc, a file where a directory is
expected. Each environment says what a command that uses the place must exit with:
2 when the path is wrong (the user can fix it), 120 when the machine ran short, 0 when
nothing is wrong with it (a missing cache is created, a symlinked output directory is
written through).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

USER = 2  # initkit.errors.USER_ERROR_EXIT
MACHINE = 120  # initkit.errors.ENVIRONMENT_EXIT
KINDS = ("output", "cache", "tmpdir", "input")
NOBODY = 65534
# What a writer's leftovers look like: initkit's temp names (.ENTRY.PID-START-N.tmp),
# tempfile's (tmpXXXXXXXX).
LEFTOVER = re.compile(r"\.tmp$|^tmp")
_LEFT = "--- left:"
_NO_DAC = "-dac_override,-dac_read_search"


@dataclass(frozen=True)
class Place:
    """A bad place for one kind of path, and how to run a command that meets it."""

    path: str  # what the command is given (output path, $INITKIT_CACHE, $TMPDIR, input)
    watch: Path | None  # the directory whose listing is compared before and after
    tmpfs: str | None = None  # "ro" or "full": a tmpfs mounted on ``watch`` for the run
    nocaps: bool = False  # without CAP_DAC_OVERRIDE: what a user who is not root meets


@dataclass(frozen=True)
class Environment:
    name: str
    codes: dict[str, int]  # kind -> the exit code of a command that uses such a place
    make: Callable[[Path, str, str], Place]  # (directory to make it in, kind, leaf name)


def _unwritable(base: Path, kind: str, leaf: str) -> Place:
    locked = base / "locked"
    locked.mkdir()
    if kind == "input":
        unreadable = locked / leaf
        unreadable.write_bytes(b"x" * 4096)
        unreadable.chmod(0)
        return Place(str(unreadable), locked, nocaps=True)
    locked.chmod(0o555)
    return Place(str(locked / leaf if kind == "output" else locked), locked, nocaps=True)


def _missing(base: Path, kind: str, leaf: str) -> Place:
    missing = base / "missing"
    path = {"output": missing / leaf, "cache": missing / "cache", "tmpdir": missing,
            "input": missing / leaf}[kind]
    return Place(str(path), base)


def _tmpfs(mode: str) -> Callable[[Path, str, str], Place]:
    def make(base: Path, kind: str, leaf: str) -> Place:
        mount = base / mode
        mount.mkdir()
        return Place(str(mount / leaf if kind == "output" else mount), mount, tmpfs=mode)
    return make


def _symlink(base: Path, kind: str, leaf: str) -> Place:
    real = base / "real"
    real.mkdir()
    link = base / "link"
    link.symlink_to(real)
    return Place(str(link / leaf if kind == "output" else link), real)


def _other_users(base: Path, kind: str, leaf: str) -> Place:
    theirs = base / "theirs"
    theirs.mkdir(mode=0o700 if kind == "cache" else 0o755)
    if kind == "input":
        file = theirs / leaf
        file.write_bytes(b"x" * 4096)
        file.chmod(0o600)
        os.chown(file, NOBODY, NOBODY)
    os.chown(theirs, NOBODY, NOBODY)
    path = theirs / leaf if kind in ("output", "input") else theirs
    # A cache of another user's is refused by its owner, whoever runs: keep root's powers.
    return Place(str(path), theirs, nocaps=kind != "cache")


def _proc(base: Path, kind: str, leaf: str) -> Place:
    path = {"output": f"/proc/{leaf}", "cache": "/proc/initkit-cache", "tmpdir": "/proc",
            "input": f"/proc/initkit-no-{leaf}"}[kind]
    return Place(path, None)


def _file(base: Path, kind: str, leaf: str) -> Place:
    file = base / "file"
    file.write_text("a file, not a directory\n")
    path = file / leaf if kind in ("output", "input") else file
    return Place(str(path), base)


ENVIRONMENTS = [
    Environment("unwritable", {"output": USER, "cache": USER, "tmpdir": USER, "input": USER},
                _unwritable),
    Environment("missing", {"output": USER, "cache": 0, "tmpdir": USER, "input": USER},
                _missing),
    Environment("read-only", {"output": USER, "cache": USER, "tmpdir": USER}, _tmpfs("ro")),
    Environment("full", {"output": MACHINE, "cache": MACHINE, "tmpdir": MACHINE},
                _tmpfs("full")),
    Environment("symlink", {"output": 0, "cache": USER, "tmpdir": 0}, _symlink),
    Environment("other-user", {"output": USER, "cache": USER, "tmpdir": USER, "input": USER},
                _other_users),
    Environment("proc", {"output": USER, "cache": USER, "tmpdir": USER, "input": USER}, _proc),
    Environment("file", {"output": USER, "cache": USER, "tmpdir": USER, "input": USER}, _file),
]


def listing(top: Path | None) -> set[str]:
    """Every path under ``top`` (relative, directories with a trailing /), without
    following symbolic links."""
    if top is None or not top.is_dir():
        return set()
    found = set()
    for directory, dirs, files in os.walk(top):
        rel = os.path.relpath(directory, top)
        for name in dirs:
            found.add(os.path.normpath(os.path.join(rel, name)) + "/")
        for name in files:
            found.add(os.path.normpath(os.path.join(rel, name)))
    return found


def run_in(place: Place, argv: list[str], env: dict[str, str],
           timeout: float) -> tuple[subprocess.CompletedProcess[str], set[str] | None]:
    """Run ``argv`` meeting ``place``; returns the process and, for a tmpfs, what the
    tmpfs held afterwards (None otherwise: the caller lists ``place.watch``)."""
    if place.nocaps and os.geteuid() == 0:
        argv = [shutil.which("setpriv") or "setpriv", f"--bounding-set={_NO_DAC}",
                f"--inh-caps={_NO_DAC}", *argv]
    if place.tmpfs is None:
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL), None
    assert place.watch is not None
    script = ('mount -t tmpfs -o size=256k,mode=0700 tmpfs "$0" || exit 99; '
              + ('dd if=/dev/zero of="$0/fill" bs=4k 2>/dev/null; ' if place.tmpfs == "full"
                 else 'mount -o remount,ro "$0" || exit 99; ')
              + f'"$@"; code=$?; echo "{_LEFT}" >&2; '
              'cd "$0" && find . -mindepth 1 ! -path ./fill \\( -type d -printf "%P/\\n" '
              '-o -printf "%P\\n" \\) >&2; exit $code')
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                           str(place.watch), *argv], capture_output=True, text=True, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    stderr, _, left = proc.stderr.partition(_LEFT + "\n")
    proc.stderr = stderr
    return proc, {line for line in left.splitlines() if line}


def can_run(place: Place) -> str | None:
    """Why ``place`` cannot be made here, or None."""
    if place.tmpfs and (os.geteuid() != 0 or shutil.which("unshare") is None):
        return "a small tmpfs needs root and unshare(1) (a private mount namespace)"
    if place.nocaps and os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "dropping CAP_DAC_OVERRIDE needs setpriv(1)"
    return None


def needs_root(env: Environment) -> str | None:
    if env.name == "other-user" and os.geteuid() != 0:
        return "another user's directory needs root to make (chown)"
    return None
