"""Against the real Debian kernel package of this machine's release (fetched once into
the cache): Debian 12's 6.1 builds virtio and virtiofs as modules, Debian 13's 6.12 builds
in all but virtio_mmio, keeps modules under usr/lib/modules and compresses them with xz."""

from __future__ import annotations

import re
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile

from initbuilder.image import Image
from initbuilder.kernels.fetch import DEFAULT_PACKAGE_RE, FetchedKernel
from initbuilder.kernels.formats import BZIMAGE, extract_vmlinux, kernel_info, pvh_entry
from initbuilder.kernels.modules import DEFAULT_MODULES, ModuleTree, add_modules, find_tree, resolve


def test_fetched_package_layout(debian_kernel: FetchedKernel) -> None:
    assert DEFAULT_PACKAGE_RE.match(debian_kernel.package)
    assert debian_kernel.version == debian_kernel.package.removeprefix("linux-image-")
    assert debian_kernel.bzimage.is_file()
    assert debian_kernel.modules_dir in (
        debian_kernel.root / "lib/modules" / debian_kernel.version,
        debian_kernel.root / "usr/lib/modules" / debian_kernel.version)
    assert debian_kernel.modules_dir.is_dir()
    # What makes the closure interesting: depmod never ran on this tree.
    assert not (debian_kernel.modules_dir / "modules.dep").exists()


def test_kernel_info_reads_the_version_the_package_names(debian_kernel: FetchedKernel) -> None:
    info = kernel_info(debian_kernel.bzimage)
    assert info.format == BZIMAGE
    assert info.version == debian_kernel.version
    assert info.version_string is not None
    assert debian_kernel.package_version in info.version_string
    assert debian_kernel.config is not None
    config = debian_kernel.config.read_text()
    assert info.compression is not None
    assert f"CONFIG_KERNEL_{info.compression.upper()}=y" in config  # xz on 12, zstd on 13
    assert info.pvh is True


def test_extracted_vmlinux_is_elf_with_pvh_note(
    debian_kernel: FetchedKernel, debian_vmlinux: Path, tmp_path: Path,
) -> None:
    data = debian_vmlinux.read_bytes()
    with debian_vmlinux.open("rb") as fh:
        elf = ELFFile(fh)
        assert elf["e_machine"] == "EM_X86_64" and elf["e_type"] == "ET_EXEC"
        assert elf.num_segments() > 0
    entry = pvh_entry(data)
    assert entry is not None and 0x1000000 <= entry < 0x4000000
    start = time.monotonic()
    out = extract_vmlinux(debian_kernel.bzimage, tmp_path / "vmlinux")
    assert time.monotonic() - start < 5  # from the cache: a copy, no decompression
    assert out.read_bytes() == data


def test_virtiofs_closure_without_modules_dep(debian_kernel: FetchedKernel) -> None:
    tree = find_tree(kernel=debian_kernel.bzimage)
    assert tree.root == debian_kernel.modules_dir
    result = resolve(tree, DEFAULT_MODULES)
    names = [m.name for m in result.load_order]
    assert len(names) == len(set(names))
    assert not set(names) & set(result.builtin)
    assert set(DEFAULT_MODULES) <= set(names) | set(result.builtin)
    if debian_kernel.version.startswith("6.1."):
        assert set(names) == {"virtio_ring", "virtio", "fuse", "virtiofs", "virtio_mmio",
                              "virtio_pci", "virtio_pci_modern_dev", "virtio_pci_legacy_dev"}
    else:  # 6.12: everything else built in
        assert names == ["virtio_mmio"] and "virtiofs" in result.builtin
    _assert_valid_order(tree, names)


def test_alias_resolves_without_modules_alias(debian_kernel: FetchedKernel) -> None:
    tree = ModuleTree(debian_kernel.modules_dir)
    assert tree.lookup("fs-virtiofs") == ["virtiofs"]
    result = resolve(tree, ["fs-virtiofs"])
    if "virtiofs" in tree.builtin:  # the alias of a built-in module needs no file
        assert result.load_order == [] and result.builtin == ["virtiofs"]
    else:
        assert [m.name for m in result.load_order][-1] == "virtiofs"


def test_softdeps_and_builtins_in_a_real_closure(debian_kernel: FetchedKernel) -> None:
    tree = ModuleTree(debian_kernel.modules_dir)
    # btrfs pulls libcrc32c, whose softdep "pre: crc32c" names an alias; sha256 is built in.
    result = resolve(tree, ["btrfs"])
    names = [m.name for m in result.load_order]
    assert names[-1] == "btrfs" and "libcrc32c" in names
    assert names.index("crc32c_generic") < names.index("libcrc32c")
    _assert_valid_order(tree, names)
    assert "sha256_generic" in result.builtin


def test_add_modules_with_the_debian_kernel(debian_kernel: FetchedKernel) -> None:
    image = Image()
    paths = add_modules(image, kernel=debian_kernel.bzimage)
    assert paths  # virtio_mmio is a module on 12 and 13 alike
    assert all(re.fullmatch(rf"/lib/modules/{re.escape(debian_kernel.version)}/kernel/.+\.ko", p)
               for p in paths)
    entry = image.get("/etc/initkit/modules")
    assert entry is not None and entry.data == "".join(p + "\n" for p in paths).encode()
    assert all(image.get(p) is not None for p in paths)


def _assert_valid_order(tree: ModuleTree, names: list[str]) -> None:
    position = {name: i for i, name in enumerate(names)}
    for name in names:
        for dep in tree.modinfo(name).depends:
            if dep in position:
                assert position[dep] < position[name], f"{dep} must load before {name}"
            else:
                assert dep in tree.builtin, f"{name} needs {dep}, which is missing"
