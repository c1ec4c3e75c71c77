"""`initbuilder kernel ...` and the kernel_options decorator, through click's runner."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from synthetic_kernel import VERSION, ModuleTreeBuilder, make_bzimage

from initbuilder.cli.kernel import kernel, kernel_options
from initbuilder.kernels.fetch import FetchedKernel
from initkit.cli import Command


def invoke(*args: str | Path) -> click.testing.Result:
    return CliRunner().invoke(kernel, [str(a) for a in args], catch_exceptions=False)


def test_info_and_vmlinux(tmp_path: Path, tiny_vmlinux: bytes,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path / "cache"))
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(make_bzimage(tiny_vmlinux, "lz4", f"{VERSION} (x@y) #1"))
    result = invoke("info", "--json", bzimage)
    assert result.exit_code == 0
    fields = json.loads(result.output)
    assert (fields["format"], fields["version"], fields["compression"], fields["pvh"]) == (
        "bzImage", VERSION, "lz4", True)
    text = invoke("info", "--header-only", bzimage).output
    assert "pvh:            unknown" in text and f"version:        {VERSION}" in text
    result = invoke("vmlinux", bzimage, "-o", tmp_path / "vmlinux")
    assert result.output.strip() == str(tmp_path / "vmlinux")
    assert (tmp_path / "vmlinux").read_bytes() == tiny_vmlinux


def test_user_error_is_one_line_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"junk" * 64)
    result = CliRunner().invoke(kernel, ["info", str(junk)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "not a kernel image" in result.output


def test_modules_prints_the_load_list(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("base")
    module_tree.add("top", depends=["base", "core"], compression="xz")
    module_tree.builtin(["core"])
    result = invoke("modules", "--modules-dir", module_tree.root, "top")
    prefix = f"/lib/modules/{VERSION}/kernel/drivers/test"
    assert result.stdout.splitlines() == [f"{prefix}/base.ko", f"{prefix}/top.ko"]
    assert "built into" in result.output and "core" in result.output
    hosts = invoke("modules", "--modules-dir", module_tree.root, "--module", "top",
                   "--host-paths").stdout.splitlines()
    assert hosts == [str(module_tree.root / "kernel/drivers/test/base.ko"),
                     str(module_tree.root / "kernel/drivers/test/top.ko.xz")]
    missing = CliRunner().invoke(kernel, ["modules", "--modules-dir", str(module_tree.root),
                                          "nosuch"])
    assert missing.exit_code == 2 and str(module_tree.root) in missing.output


def test_kernel_options_decorator(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    @click.command(cls=Command)
    @kernel_options
    def cmd(kernel: Path | None, modules_dir: Path | None, modules: tuple[str, ...]) -> None:
        seen.update(kernel=kernel, modules_dir=modules_dir, modules=modules)

    image = tmp_path / "vmlinuz"
    image.write_bytes(b"x")
    result = CliRunner().invoke(cmd, ["--kernel", str(image), "--modules-dir", str(tmp_path),
                                      "--module", "a", "--module", "fs-b"])
    assert result.exit_code == 0, result.output
    assert seen == {"kernel": image, "modules_dir": tmp_path, "modules": ("a", "fs-b")}


def test_fetch_prints_where_things_are(debian_kernel: FetchedKernel) -> None:
    fields = json.loads(invoke("fetch", "--json").output)
    assert fields["bzimage"] == str(debian_kernel.bzimage)
    assert fields["modules-dir"] == str(debian_kernel.modules_dir)
    assert fields["version"] == debian_kernel.version
    assert Path(fields["vmlinux"]).read_bytes()[:4] == b"\x7fELF"
    assert invoke("fetch", "--print", "modules-dir").output == f"{debian_kernel.modules_dir}\n"
