"""Module closures over synthetic trees: depends, softdeps, aliases, builtins, cycles,
missing dependencies, compressed modules, modules.dep/modules.alias when present."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_kernel import VERSION, ModuleTreeBuilder

from initbuilder.cpio import write_initrd
from initbuilder.image import Image, Kind
from initbuilder.kernels.modinfo import read_modinfo
from initbuilder.kernels.modules import ModuleTree, add_modules, find_tree, resolve
from initbuilder.reader import read_initrd
from initkit.errors import InitkitError


def order(tree: ModuleTreeBuilder, *names: str) -> list[str]:
    return [m.name for m in resolve(ModuleTree(tree.root), names).load_order]


def test_dependencies_load_first_and_once(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("d")
    module_tree.add("b", depends=["d"])
    module_tree.add("c", depends=["d"])
    module_tree.add("a", depends=["b", "c"])
    module_tree.add("unrelated")
    assert order(module_tree, "a") == ["d", "b", "c", "a"]
    assert order(module_tree, "c", "a") == ["d", "c", "b", "a"]


def test_dashes_and_underscores_name_the_same_module(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("my-mod")
    module_tree.add("user", depends=["my_mod"])
    tree = ModuleTree(module_tree.root)
    assert tree.lookup("my-mod") == tree.lookup("my_mod") == ["my_mod"]
    modules = resolve(tree, ["user"]).load_order
    assert [m.relpath for m in modules] == ["kernel/drivers/test/my-mod.ko",
                                            "kernel/drivers/test/user.ko"]


def test_alias_from_modinfo(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("fuse")
    module_tree.add("virtiofs", depends=["fuse"],
                    aliases=["fs-virtiofs", "virtio:d0000001Av*"])
    assert order(module_tree, "fs-virtiofs") == ["fuse", "virtiofs"]
    assert order(module_tree, "fs_virtiofs") == ["fuse", "virtiofs"]
    assert order(module_tree, "virtio:d0000001Av00001AF4") == ["fuse", "virtiofs"]
    with pytest.raises(InitkitError, match="'fs-nothing' not found"):
        order(module_tree, "fs-nothing")


def test_modules_alias_is_used_when_present(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("quiet")  # says nothing about the alias: only modules.alias does
    (module_tree.root / "modules.alias").write_text(
        "# Aliases extracted from modules themselves.\nalias fs-quiet quiet\n")
    assert order(module_tree, "fs-quiet") == ["quiet"]


def test_softdeps_pre_before_post_after(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("crc")
    module_tree.add("early", aliases=["crypto-early"])
    module_tree.add("late", depends=["crc"])
    module_tree.add("main", depends=["crc"],
                    softdep="pre: crypto-early absent-module post: late")
    assert order(module_tree, "main") == ["early", "crc", "main", "late"]


def test_softdep_closing_a_cycle_is_skipped(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("a", softdep="post: b")
    module_tree.add("b", softdep="pre: a")
    assert order(module_tree, "a") == ["a", "b"]
    assert order(module_tree, "b") == ["a", "b"]


def test_hard_cycle_is_an_error(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("a", depends=["b"])
    module_tree.add("b", depends=["c"])
    module_tree.add("c", depends=["a"])
    with pytest.raises(InitkitError, match="cycle: a -> b -> c -> a"):
        order(module_tree, "a")


def test_missing_dependency_names_it_and_the_tree(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("a", depends=["gone"])
    with pytest.raises(InitkitError) as info:
        order(module_tree, "a")
    assert "module a depends on kernel module 'gone'" in str(info.value)
    assert str(module_tree.root) in str(info.value)


def test_missing_module_names_it_and_the_tree(module_tree: ModuleTreeBuilder) -> None:
    with pytest.raises(InitkitError) as info:
        order(module_tree, "nosuch")
    assert "'nosuch'" in str(info.value) and str(module_tree.root) in str(info.value)


def test_builtins_need_no_file_and_satisfy_dependencies(
    module_tree: ModuleTreeBuilder,
) -> None:
    module_tree.add("virtio", depends=["virtio_ring"])
    module_tree.builtin(["virtio_ring"], [
        ("virtio_ring", "file", "drivers/virtio/virtio_ring"),
        ("fuse", "file", "fs/fuse/fuse"),
        ("fuse", "alias", "fs-fuse"),
        ("printk", "parmtype", "time:bool"),  # core code, not a module
    ])
    tree = ModuleTree(module_tree.root)
    result = resolve(tree, ["virtio", "fs-fuse"])
    assert [m.name for m in result.load_order] == ["virtio"]
    assert result.builtin == ["virtio_ring", "fuse"]
    assert "printk" not in tree.builtin
    assert resolve(tree, ["fuse"]).load_order == []


@pytest.mark.parametrize("compression", ["xz", "zstd", "gzip"])
def test_compressed_modules(module_tree: ModuleTreeBuilder, compression: str) -> None:
    base = module_tree.add("base", compression=compression, aliases=["base-alias"])
    module_tree.add("top", depends=["base"], compression=compression)
    info = read_modinfo(base)
    assert (info.first("name"), info.aliases) == ("base", ["base-alias"])
    assert order(module_tree, "top") == ["base", "top"]
    # The alias scan (no modules.alias) has to look inside compressed files too.
    assert order(module_tree, "base-alias") == ["base"]

    image = Image()
    paths = add_modules(image, modules_dir=module_tree.root, names=["top"])
    prefix = f"/lib/modules/{VERSION}/kernel/drivers/test"
    assert paths == [f"{prefix}/base.ko", f"{prefix}/top.ko"]
    for rel in ("base", "top"):
        entry = image.get(f"{prefix}/{rel}.ko")
        assert entry is not None and entry.data == module_tree.plain[
            f"kernel/drivers/test/{rel}.ko"]


def test_plain_module_modinfo(module_tree: ModuleTreeBuilder) -> None:
    path = module_tree.add("plain", depends=["x", "y-z"], softdep="pre: a post: b c",
                           aliases=["one", "two"])
    info = read_modinfo(path)
    assert info.depends == ["x", "y_z"]
    assert info.softdeps == (["a"], ["b", "c"])
    assert info.aliases == ["one", "two"]
    assert info.vermagic is not None and info.vermagic.startswith(VERSION)


def test_misnamed_compressed_module_is_an_error(module_tree: ModuleTreeBuilder) -> None:
    plain = module_tree.add("liar")
    fake = plain.with_name("liar.ko.xz")
    plain.rename(fake)
    with pytest.raises(InitkitError, match=r"liar\.ko\.xz: name says xz"):
        read_modinfo(fake)


def test_not_a_module_is_an_error(module_tree: ModuleTreeBuilder, base_object: Path) -> None:
    target = module_tree.root / "kernel" / "junk.ko"
    target.parent.mkdir(parents=True)
    target.write_bytes(base_object.read_bytes())  # an ELF without .modinfo
    with pytest.raises(InitkitError, match=r"has no \.modinfo section"):
        order(module_tree, "junk")
    target.write_bytes(b"not an elf at all")
    with pytest.raises(InitkitError, match="not a valid ELF kernel module"):
        order(module_tree, "junk")


def test_modules_dep_indexes_files_and_stale_one_is_ignored(
    module_tree: ModuleTreeBuilder,
) -> None:
    module_tree.add("a", directory="extra")
    dep = module_tree.root / "modules.dep"
    dep.write_text("extra/a.ko:\n")
    assert ModuleTree(module_tree.root).files["a"].relpath == "extra/a.ko"
    module_tree.add("b", directory="kernel/new")  # not in modules.dep: found only by walking
    dep.write_text("extra/a.ko:\nkernel/old/b.ko:\n")  # names a file that is gone
    tree = ModuleTree(module_tree.root)
    assert tree.files["b"].relpath == "kernel/new/b.ko"


def test_updates_directory_wins(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("dup", directory="kernel/drivers")
    module_tree.add("dup", directory="updates")
    module_tree.add("dup", directory="extra")
    assert ModuleTree(module_tree.root).files["dup"].relpath == "updates/dup.ko"


def test_vermagic_of_another_kernel_is_an_error(module_tree: ModuleTreeBuilder) -> None:
    module_tree.add("stranger", vermagic="5.10.0-9-amd64 SMP mod_unload")
    with pytest.raises(InitkitError, match=r"built for kernel 5\.10\.0-9-amd64"):
        order(module_tree, "stranger")


def test_add_modules_writes_files_and_load_list(
    module_tree: ModuleTreeBuilder, tmp_path: Path,
) -> None:
    module_tree.add("ring", directory="kernel/drivers/virtio")
    module_tree.add("virtio", depends=["ring"], directory="kernel/drivers/virtio")
    module_tree.add("virtiofs", depends=["virtio"], directory="kernel/fs/fuse",
                    compression="zstd")
    module_tree.add("virtio_mmio", depends=["virtio"], directory="kernel/drivers/virtio")
    module_tree.add("virtio_pci", depends=["virtio"], directory="kernel/drivers/virtio")
    image = Image()
    paths = add_modules(image, modules_dir=module_tree.root)  # the default virtiofs set
    base = f"/lib/modules/{VERSION}/kernel"
    assert paths == [f"{base}/drivers/virtio/ring.ko", f"{base}/drivers/virtio/virtio.ko",
                     f"{base}/fs/fuse/virtiofs.ko", f"{base}/drivers/virtio/virtio_mmio.ko",
                     f"{base}/drivers/virtio/virtio_pci.ko"]
    out = tmp_path / "initrd.cpio"
    write_initrd(image, out)
    members = {m.path.lstrip("/"): m for m in read_initrd(out, with_data=True)}
    load_list = members["etc/initkit/modules"]
    assert load_list.data == "".join(p + "\n" for p in paths).encode()
    for path in paths:
        member = members[path.lstrip("/")]
        assert member.kind is Kind.FILE and member.mode == 0o644
        assert member.data == module_tree.plain[path.split(f"{VERSION}/")[1]]


def test_find_tree_for_a_kernel_in_an_unpacked_root(
    module_tree: ModuleTreeBuilder, tmp_path: Path, tiny_vmlinux: bytes,
) -> None:
    module_tree.add("m")
    boot = tmp_path / "boot"
    boot.mkdir()
    image = boot / f"vmlinux-{VERSION}"
    image.write_bytes(tiny_vmlinux)  # an ELF "vmlinux" whose banner says VERSION
    assert find_tree(kernel=image).root == module_tree.root
    other = tmp_path / "lib" / "modules" / "6.1.0-other"
    other.mkdir()
    with pytest.raises(InitkitError, match=f"not for kernel {VERSION}"):
        find_tree(kernel=image, modules_dir=other)
    with pytest.raises(InitkitError, match="does not exist"):
        find_tree(modules_dir=tmp_path / "nowhere")


def test_kernel_with_everything_built_in_gets_no_module_step(
    module_tree: ModuleTreeBuilder,
) -> None:
    # What `initbuilder kernel build` installs: modules.builtin and no .ko at all.
    module_tree.builtin(["fuse", "virtiofs", "virtio_mmio", "virtio_pci"])
    image = Image()
    assert add_modules(image, modules_dir=module_tree.root) == []
    assert list(image.items()) == [], "no load list and no module files"
    # One module that is not built in brings the step back.
    module_tree.add("extra")
    image = Image()
    assert add_modules(image, modules_dir=module_tree.root, names=["virtiofs", "extra"]) == [
        f"/lib/modules/{VERSION}/kernel/drivers/test/extra.ko"]
    assert "etc/initkit/modules" in dict(image.items())
