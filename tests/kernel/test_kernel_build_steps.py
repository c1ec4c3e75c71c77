"""The build's machinery with real make on a stand-in kernel tree (a Makefile that
answers tinyconfig, olddefconfig, bzImage, modules and modules_install in a moment):
the cache entry appears whole or not at all, a second call runs no make, a failure names
make's error, and SIGTERM stops make and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from realparts import missing_part, need

from initbuilder.kernels.build import build_kernel, lookup
from initbuilder.kernels.source import BUILD_PACKAGES, missing_packages
from initkit.errors import InitkitError

# $(O) is the object tree; every make run is counted in $(O)/runs. BZIMAGE=fail,
# BZIMAGE=hang and BZIMAGE=slow (in the environment) change the compile on purpose.
MAKEFILE = """\
VERSION = 6
PATCHLEVEL = 1
SUBLEVEL = 0
.PHONY: tinyconfig olddefconfig bzImage modules modules_install
tinyconfig:
\t@echo $@ >> $(O)/runs
\t@printf '# CONFIG_64BIT is not set\\n' > $(O)/.config
olddefconfig:
\t@echo $@ >> $(O)/runs
bzImage:
\t@echo $@ >> $(O)/runs
\t@echo "  CC      init/main.o"
\t@if [ "$$BZIMAGE" = fail ]; then echo "init/main.c:1: error: broken on purpose" >&2; exit 2; fi
\t@if [ "$$BZIMAGE" = hang ]; then echo $$$$ > $(O)/make.pid; sleep 60; fi
\t@if [ "$$BZIMAGE" = slow ]; then sleep 3; fi
\t@mkdir -p $(O)/arch/x86/boot $(O)/include/config
\t@echo kernel > $(O)/arch/x86/boot/bzImage; echo elf > $(O)/vmlinux
\t@echo 6.1.0-fake > $(O)/include/config/kernel.release
modules:
\t@echo $@ >> $(O)/runs
modules_install:
\t@mkdir -p $(INSTALL_MOD_PATH)/lib/modules/6.1.0-fake
\t@echo kernel/fs/fuse/virtiofs.ko > $(INSTALL_MOD_PATH)/lib/modules/6.1.0-fake/modules.builtin
"""


@pytest.fixture
def fake_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    need("make")
    if missing_packages(list(BUILD_PACKAGES)):
        missing_part(f"the kernel build packages are not installed: {BUILD_PACKAGES}")
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text(MAKEFILE)
    (tree / "Kconfig").write_text("")
    return tree


def objects(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "cache" / "kernel-objects").glob("tree-*-x86_64")
    return found


def built_entries(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache" / "kernel-built").iterdir())


def test_build_installs_once_and_a_second_call_runs_no_make(fake_tree: Path,
                                                            tmp_path: Path) -> None:
    said: list[str] = []
    built = build_kernel(fake_tree, report=said.append)
    assert built.release == "6.1.0-fake"
    assert built.bzimage.read_text() == "kernel\n" and built.vmlinux.read_text() == "elf\n"
    assert (built.modules_dir / "modules.builtin").is_file()
    assert "CONFIG_VIRTIO_FS=y" in built.config.read_text()  # the fragment, merged
    assert said[0] == "kernel build: configure" and "kernel build: compile" in said
    runs = (objects(tmp_path) / "runs").read_text().split()
    # make -j runs bzImage and modules in either order.
    assert runs[:2] == ["tinyconfig", "olddefconfig"]
    assert sorted(runs[2:]) == ["bzImage", "modules"]
    assert build_kernel(fake_tree, report=said.append) == built
    assert lookup(fake_tree) == built
    assert (objects(tmp_path) / "runs").read_text().split() == runs, "no make the second time"
    assert built_entries(tmp_path) == [built.root.name], "no temp dirs left"


def test_failed_build_names_the_error_and_leaves_no_kernel(fake_tree: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BZIMAGE", "fail")
    with pytest.raises(InitkitError, match="error: broken on purpose") as info:
        build_kernel(fake_tree, report=lambda _: None)
    assert "initkit-build.log" in str(info.value)
    assert built_entries(tmp_path) == []
    assert lookup(fake_tree) is None


def test_sigterm_stops_make_and_leaves_no_kernel(fake_tree: Path, tmp_path: Path) -> None:
    env = {**os.environ, "BZIMAGE": "hang"}
    proc = subprocess.Popen([sys.executable, "-m", "initbuilder", "kernel", "build",
                             "--source", str(fake_tree)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    pid_file = None
    while time.monotonic() < deadline:
        found = list((tmp_path / "cache" / "kernel-objects").glob("tree-*-x86_64/make.pid"))
        if found and found[0].read_text().strip():
            pid_file = found[0]
            break
        time.sleep(0.1)
    assert pid_file is not None, proc.communicate(timeout=5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    shell = int(pid_file.read_text())
    for _ in range(50):  # make's recipe shell (and its sleep) end with make
        if not Path(f"/proc/{shell}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{shell}").exists(), "make's recipe still runs"
    assert built_entries(tmp_path) == []


def test_two_builds_at_once_build_once(fake_tree: Path, tmp_path: Path) -> None:
    env = {**os.environ, "BZIMAGE": "slow"}
    argv = [sys.executable, "-m", "initbuilder", "kernel", "build", "--source", str(fake_tree),
            "--print", "bzimage"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)  # the first one holds the lock, compiling
    second = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out1, err1 = first.communicate(timeout=60)
    out2, err2 = second.communicate(timeout=60)
    assert first.returncode == second.returncode == 0, (err1, err2)
    assert out1 == out2 and Path(out1.decode().strip()).is_file()
    assert b"waiting for another build" in err1 + err2, (err1, err2)
    assert (objects(tmp_path) / "runs").read_text().split().count("bzImage") == 1
    assert len(built_entries(tmp_path)) == 1
