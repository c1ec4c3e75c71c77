"""The native init for real: the same boots with it and with the Python init alone give
the same console bytes and status, and it needs no Python for what it carries out.

On initkit's minimal kernel (its boots are the quickest); Debian's kernel boots the
native init in the rest of the suite, its modules loaded by it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from guest import contract
from hostrun.api import VmResult, VmRunner
from initbuilder import cpio
from initbuilder.nativeinit import native_init
from initbuilder.spec import BuildSpec, build_image

if TYPE_CHECKING:
    from conftest import Store  # tests/e2e/conftest.py

pytestmark = pytest.mark.e2e
BOOT_TIMEOUT = 60.0


def _initrd(kernel: Path, out: Path, *, native: bool, python: bool = True) -> Path:
    image, _ = build_image(BuildSpec(kernel=kernel, native_init=native, init=python))
    if not python:  # the native init alone: no Python in the initrd at all
        built = native_init()
        assert built.path is not None, built.why_not
        image.add_file("init", host=built.path, mode=0o755)
    cpio.write_initrd(image, out, compression="none", pad_to=4096)
    return out


@pytest.fixture(scope="module")
def inits(minimal_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("inits")
    return {
        "native": _initrd(minimal_kernel, work / "native.cpio", native=True),
        "python": _initrd(minimal_kernel, work / "python.cpio", native=False),
        "alone": _initrd(minimal_kernel, work / "alone.cpio", native=True, python=False),
    }


@pytest.fixture(scope="module")
def boot(minimal_kernel: Path, inits: dict[str, Path]) -> Callable[..., VmResult]:
    runner = VmRunner(kernel=minimal_kernel, accel="tcg", vmm="qemu", timeout=BOOT_TIMEOUT)

    def run(which: str, **kwargs: Any) -> VmResult:
        return runner.run(initrd=inits[which], **kwargs)

    return run


def test_both_inits_give_the_same_bytes_and_status(boot: Callable[..., VmResult],
                                                   store: Store, tmp_path: Path) -> None:
    cases: list[dict[str, Any]] = [
        {"exec": [store.hello, "exit", "3"]},
        {"exec": [store.hello, "signal", "15"]},
        {"exec": "/nix/store/no-such-program"},
        {"exec": store.hello.rsplit("/", 1)[0]},  # a directory: 126
        {"run": "echo 'a  b' c; echo $PATH $HOME $TERM; ls /bin/ls; exit 4"},
        {"shell": True, "input": b"echo in-shell; exit 6\n"},
    ]
    for case in cases:
        native, python = boot("native", store=store.root, **case), \
            boot("python", store=store.root, **case)
        assert native.status is not None, (case, native.describe())
        assert (native.status, native.output_bytes) == (python.status, python.output_bytes), \
            f"{case}\n--- native ---\n{native.describe()}\n--- python ---\n{python.describe()}"


def test_the_native_init_needs_no_python_for_what_it_runs(boot: Callable[..., VmResult],
                                                          store: Store) -> None:
    result = boot("alone", store=store.root, exec=[store.hello, "exit", "5"])
    assert result.exit_code == 5, result.describe()
    assert result.output == "Hello, world!\n"
    # tvix.find is the Python init's: without it, said so, and the boot still ends.
    found = boot("alone", store=store.root, find=True)
    assert found.exit_code == contract.INIT_FAILED, found.describe()
    assert contract.PYTHON_INIT in found.output and "lacks" in found.output


def test_what_it_hands_over_still_works(boot: Callable[..., VmResult], store: Store) -> None:
    """tvix.find and initkit.debug go to the Python init, which boots as PID 1 from a
    machine as the kernel left it (no mount of the native init's in its way)."""
    found = boot("native", store=store.root, find=True)
    assert found.exit_code == 0, found.describe()
    assert store.docs in found.output.splitlines()
    debug = boot("native", store=store.root, exec=store.hello, cmdline="initkit.debug")
    assert debug.exit_code == 0, debug.describe()
    assert "timing: action starts" in debug.output and "failed" not in debug.output


def test_hostrun_boots_no_python_for_what_the_native_init_runs(
        minimal_kernel: Path, store: Store, hostrun_cli: Callable[..., Any]) -> None:
    """hostrun's own initrd for a console-path boot the native init carries out has no
    Python runtime (guest/handover.py decides); for anything else it has."""
    from hostrun.action import Action
    from hostrun.plan import Request, plan
    from initbuilder.reader import read_initrd

    def python_in_initrd(**request: Any) -> bool:
        spec = plan(Request(kernel=minimal_kernel, store=store.root, vmm="qemu",
                            accel="tcg", **request))
        paths = {member.path for member in read_initrd(spec.initrd)}
        return contract.PYTHON_INIT.lstrip("/") in paths

    assert not python_in_initrd(extra_cmdline=f"tvix.exec={store.hello}")
    assert not python_in_initrd(action=Action("run", command="echo hi"))
    assert not python_in_initrd(action=Action("shell"))
    assert python_in_initrd(action=Action("find"))
    assert python_in_initrd(action=Action("exec", (store.hello,)), over_channel=True)
    assert python_in_initrd(action=Action("exec", (store.hello,)),
                            extra_cmdline="initkit.debug")
    run = hostrun_cli("--kernel", str(minimal_kernel), "--store", str(store.root),
                      "--cmdline", f'tvix.exec="{store.hello} exit 9"', kernel=False,
                      initrd=False)
    assert run.finish() == 9, run.stderr
    assert run.stdout == b"Hello, world!\n"
