"""The guest's /nix/store as exactly a closure: real Nix outputs, real boots, real caches."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from nar_writer import directory, nar, regular, write_cache_entry
from nixbuild import NixOutputs, nix_copy

from hostrun.api import VmRunner
from hostrun.exitcodes import ExitCode
from hostrun.storeview import nixbase32

if TYPE_CHECKING:
    from conftest import CliRun, StartCli  # tests/e2e/conftest.py

pytestmark = pytest.mark.e2e


def requisites(path: str) -> set[str]:
    out = subprocess.run(["nix-store", "--query", "--requisites", path], capture_output=True,
                         text=True, check=True).stdout
    return set(out.split())


def test_closure_runs_a_program_whose_libc_is_its_own_store_path(
        vm: VmRunner, nix_outputs: NixOutputs) -> None:
    result = vm.exec(f"{nix_outputs.hello}/bin/hello", "exit", "4", closure=[nix_outputs.hello])
    assert result.exit_code == 4, result.describe()
    assert result.output == "Hello from the closure!\n"


def test_find_lists_exactly_the_closure(vm: VmRunner, nix_outputs: NixOutputs) -> None:
    result = vm.run(find=True, closure=[nix_outputs.hello])
    assert result.exit_code == 0, result.describe()
    top = {line for line in result.output.splitlines() if line.count("/") == 3}
    assert top == requisites(nix_outputs.hello), result.describe()
    assert nix_outputs.glibc in top and nix_outputs.secret not in top


def test_a_path_outside_the_closure_is_missing_only_in_the_closure(
        vm: VmRunner, nix_outputs: NixOutputs) -> None:
    catfile = f"{nix_outputs.catfile}/bin/catfile"
    confined = vm.exec(catfile, nix_outputs.secret, closure=[nix_outputs.catfile])
    assert confined.exit_code == 1, confined.describe()
    assert f"{nix_outputs.secret}: No such file or directory" in confined.output
    whole = vm.exec(catfile, nix_outputs.secret, store=Path("/nix/store"))
    assert whole.exit_code == 0, whole.describe()
    assert whole.output == "the secret\n"


@pytest.fixture
def run_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The hostrun processes' own initkit cache, to look at what a run leaves there."""
    cache = tmp_path / "initkit-cache"
    monkeypatch.setenv("INITKIT_CACHE", str(cache))
    return cache


def _nar_entries(cache: Path) -> list[str]:
    nar_dir = cache / "store" / "nar"
    return sorted(os.listdir(nar_dir)) if nar_dir.exists() else []


def _no_mounts_under(path: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        mounted = [line.split()[4] for line in f]
    assert not [m for m in mounted if m.startswith(str(path))], "a mount leaked into the host"


def test_substituter_with_no_host_store_at_all(hostrun_cli: StartCli, nix_outputs: NixOutputs,
                                               tmp_path: Path, run_cache: Path) -> None:
    cache = nix_copy([nix_outputs.hello], tmp_path / "binary-cache")
    empty = tmp_path / "empty"
    empty.mkdir()
    run: CliRun = hostrun_cli("--store", str(empty), "--substituter", f"file://{cache}",
                              "--closure", nix_outputs.hello, "--timeout", "60",
                              "--exec", f"{nix_outputs.hello}/bin/hello")
    assert run.finish() == 0, run.stderr
    assert run.stdout == b"Hello from the closure!\n" and run.stderr == b""
    run.assert_nothing_left()
    _no_mounts_under(run.tmpdir)
    assert len(_nar_entries(run_cache)) == len(requisites(nix_outputs.hello))
    assert all(not n.startswith(".") for n in _nar_entries(run_cache))


def _corrupt_nar(cache: Path, outputs: NixOutputs) -> str:
    nar_file = next((cache / "nar").iterdir())  # glibc only: one NAR
    data = bytearray(nar_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    nar_file.write_bytes(bytes(data))
    return f"NAR {nar_file} .*FileHash mismatch.*refused"


def _wrong_nar_hash(cache: Path, outputs: NixOutputs) -> str:
    info = cache / f"{os.path.basename(outputs.glibc)[:32]}.narinfo"
    wrong = nixbase32.encode(hashlib.sha256(b"not it").digest())
    info.write_text(re.sub(r"^NarHash: .*$", f"NarHash: sha256:{wrong}", info.read_text(),
                           flags=re.M))
    return f"{outputs.glibc}.*NarHash mismatch.*refused"


def _missing_narinfo(cache: Path, outputs: NixOutputs) -> str:
    name = os.path.basename(outputs.glibc)
    (cache / f"{name[:32]}.narinfo").unlink()
    return (f"{outputs.glibc}: not found; looked in --store .*, --substituter file://{cache} "
            f"\\(no {name[:32]}.narinfo\\)")


def _dot_dot_nar(cache: Path, outputs: NixOutputs) -> str:
    name = os.path.basename(outputs.glibc)
    write_cache_entry(cache, name, nar(directory((b"..", directory((b"lib", regular(b"x")))))))
    return f"/nix/store/{name}.*an entry named '..'.*refused"


@pytest.mark.parametrize("damage", [_corrupt_nar, _wrong_nar_hash, _missing_narinfo,
                                    _dot_dot_nar])
def test_a_cache_that_lies_is_refused_and_leaves_nothing(
        hostrun_cli: StartCli, nix_outputs: NixOutputs, tmp_path: Path, run_cache: Path,
        damage: Callable[[Path, NixOutputs], str]) -> None:
    cache = nix_copy([nix_outputs.glibc], tmp_path / "binary-cache")
    message = damage(cache, nix_outputs)
    empty = tmp_path / "empty"
    empty.mkdir()
    run: CliRun = hostrun_cli("--store", str(empty), "--substituter", f"file://{cache}",
                              "--closure", nix_outputs.glibc, "--find")
    assert run.finish() == ExitCode.USER_ERROR, run.stderr
    line = run.stderr.decode()
    assert line.count("\n") == 1 and re.search(message, line), line
    assert _nar_entries(run_cache) == []
    run.assert_nothing_left()


def test_ctrl_c_removes_the_view(hostrun_cli: StartCli, nix_outputs: NixOutputs) -> None:
    run: CliRun = hostrun_cli("--closure", nix_outputs.hello, "--timeout", "60",
                              "--run", "sleep 1000")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("qemu-system" in p
                                                  for p in run.processes()):
        time.sleep(0.05)
    views = list(run.tmpdir.glob("hostrun-*/store"))
    assert len(views) == 1 and list(views[0].iterdir()) == []  # made in the daemon's namespace
    time.sleep(1.0)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == ExitCode.INTERRUPTED
    run.assert_nothing_left()
    _no_mounts_under(run.tmpdir)


def test_a_plain_directory_store_by_the_reference_scan(hostrun_cli: StartCli,
                                                       nix_outputs: NixOutputs,
                                                       tmp_path: Path) -> None:
    """Copies of the store paths in a directory no Nix database describes, given as a
    relative --store: the scanner finds the closure, and the program runs from it."""
    store = tmp_path / "plain-store"
    store.mkdir()
    closure = requisites(nix_outputs.hello)
    for path in [*closure, nix_outputs.secret]:
        subprocess.run(["cp", "-a", path, str(store)], check=True)
    run: CliRun = hostrun_cli("-v", "--store", os.path.relpath(store), "--closure",
                              nix_outputs.hello, "--timeout", "60", "--find")
    assert run.finish() == 0, run.stderr
    assert b"paths (reference scan)" in run.stderr, run.stderr
    top = {line for line in run.stdout.decode().splitlines()
           if line.startswith("/nix/store/") and line.count("/") == 3}
    assert top == closure
    run.assert_nothing_left()
