"""Kernel module closures: which .ko files an initrd needs, and the order to load them.

Each module's own ``.modinfo`` (``depends=``, ``softdep=``, ``alias=``) is the truth;
modules.dep and modules.alias, which only ``depmod`` writes, are used to find files faster
when present and never required (Debian's kernel package ships neither). Built-in modules
(``modules.builtin``, ``modules.builtin.modinfo``) need no file and satisfy dependencies.

The initrd gets every module decompressed, at its tree-relative path under
``/lib/modules/VERSION/``, and ``/etc/initkit/modules``: absolute guest paths, one a line,
dependencies first, for the guest init to load with finit_module in that order.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from guest import contract
from initbuilder.image import Image
from initbuilder.kernels.modinfo import (
    ModInfo,
    module_name,
    read_builtin_modinfo,
    read_modinfo,
    read_module_bytes,
    split_module_filename,
)
from initkit.errors import InitkitError

log = logging.getLogger("initkit.modules")

# virtiofs itself, and both transports QEMU and cloud-hypervisor may offer it on.
DEFAULT_MODULES: tuple[str, ...] = ("virtiofs", "virtio_mmio", "virtio_pci")
# Added to the default set where the kernel has them: virtio_console carries the control
# channel (hostrun's sessions, docs/guest.md). A kernel without it still boots every
# other kind of run, so its absence is no error.
CHANNEL_MODULES: tuple[str, ...] = ("virtio_console",)
LOAD_LIST = contract.MODULE_LIST  # what the guest init loads, in order
_ALIAS_CANDIDATE = re.compile(rb"alias=([^\0]*)\0")


@dataclass(frozen=True)
class ModuleFile:
    """A loadable module in a tree."""

    name: str
    path: Path  # on the host
    relpath: str  # relative to the tree, as found (may end in .ko.zst)
    compression: str | None

    @property
    def plain_relpath(self) -> str:
        """Where the decompressed module goes, relative to lib/modules/VERSION."""
        stem = self.relpath[: self.relpath.rindex(".ko")]
        return stem + ".ko"


@dataclass
class Resolution:
    """A module closure: files in load order, plus the names the kernel has built in."""

    load_order: list[ModuleFile] = field(default_factory=list)
    builtin: list[str] = field(default_factory=list)


def _alias_key(alias: str) -> str:
    """Dashes equal underscores in aliases too, except inside [...] ranges (as kmod does)."""
    out = []
    depth = 0
    for ch in alias:
        depth += ch == "["
        depth -= ch == "]" and depth > 0
        out.append("_" if ch == "-" and depth == 0 else ch)
    return "".join(out)


def _search_rank(relpath: str) -> tuple[int, str]:
    # depmod's default "search updates built-in": updates/ wins over kernel/, then the rest.
    top = relpath.split("/", 1)[0]
    return ({"updates": 0, "kernel": 1}.get(top, 2), relpath)


class ModuleTree:
    """One lib/modules/VERSION directory."""

    def __init__(self, root: Path, version: str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InitkitError(f"modules directory {self.root} does not exist; pass "
                               "--modules-dir pointing at lib/modules/VERSION")
        self.version = version or self.root.name
        self._files: dict[str, ModuleFile] | None = None
        self._builtin: dict[str, ModInfo] | None = None
        self._modinfo: dict[str, ModInfo] = {}
        self._aliases: list[tuple[str, str]] | None = None  # (alias pattern, module name)

    def __repr__(self) -> str:
        return f"ModuleTree({str(self.root)!r}, version={self.version!r})"

    # -- indexes ------------------------------------------------------------------
    @property
    def files(self) -> dict[str, ModuleFile]:
        """Module name -> file; from modules.dep when present, else a walk of the tree."""
        if self._files is None:
            self._files = self._index_from_modules_dep() or self._index_by_walking()
        return self._files

    def _add_index(self, index: dict[str, ModuleFile], relpath: str) -> None:
        split = split_module_filename(relpath.rsplit("/", 1)[-1])
        if split is None:
            return
        name = module_name(split[0])
        found = ModuleFile(name, self.root / relpath, relpath, split[1])
        old = index.get(name)
        if old is None or _search_rank(relpath) < _search_rank(old.relpath):
            index[name] = found

    def _index_from_modules_dep(self) -> dict[str, ModuleFile] | None:
        try:
            text = (self.root / "modules.dep").read_text(errors="replace")
        except OSError:
            return None
        index: dict[str, ModuleFile] = {}
        for line in text.splitlines():
            relpath = line.partition(":")[0].strip()
            if relpath.startswith("/"):  # old depmod wrote absolute paths
                relpath = os.path.relpath(relpath, self.root)
            if relpath:
                self._add_index(index, relpath)
        if any(not f.path.exists() for f in index.values()):
            log.info("%s/modules.dep names missing files; indexing the tree instead", self.root)
            return None
        return index

    def _index_by_walking(self) -> dict[str, ModuleFile]:
        index: dict[str, ModuleFile] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            for filename in sorted(filenames):
                self._add_index(index, filename if rel == "." else f"{rel}/{filename}")
        return index

    @property
    def builtin(self) -> dict[str, ModInfo]:
        """Built-in module name -> its modinfo (empty for names only in modules.builtin)."""
        if self._builtin is None:
            found: dict[str, ModInfo] = {}
            try:
                data = (self.root / "modules.builtin.modinfo").read_bytes()
            except OSError:
                data = b""
            for name, info in read_builtin_modinfo(data).items():
                # Parameters of core code ("printk.time") appear too; a real built-in
                # module has a file= or alias= record.
                if info.first("file") or info.aliases:
                    found[name] = info
            try:
                lines = (self.root / "modules.builtin").read_text().split()
            except OSError:
                lines = []
            for relpath in lines:
                split = split_module_filename(relpath.rsplit("/", 1)[-1])
                if split is not None:
                    found.setdefault(module_name(split[0]), ModInfo(()))
            self._builtin = found
        return self._builtin

    def modinfo(self, name: str) -> ModInfo:
        """The .modinfo of module ``name`` (a file in this tree), read once."""
        info = self._modinfo.get(name)
        if info is None:
            info = self._modinfo[name] = read_modinfo(self.files[name].path)
        return info

    # -- lookups ------------------------------------------------------------------
    def lookup(self, requested: str) -> list[str]:
        """Module names ``requested`` stands for: itself when it names a module file or a
        built-in module, else every module (file or built-in) with a matching alias."""
        name = module_name(requested)
        if name in self.files or name in self.builtin:
            return [name]
        return self._by_alias(requested)

    def _by_alias(self, requested: str) -> list[str]:
        key = _alias_key(requested)
        matches = {
            n for pattern, n in self._alias_table(key)
            if fnmatch.fnmatchcase(key, _alias_key(pattern))
        }
        for name, info in self.builtin.items():
            if any(fnmatch.fnmatchcase(key, _alias_key(a)) for a in info.aliases):
                matches.add(name)
        return sorted(matches)

    def _alias_table(self, key: str) -> list[tuple[str, str]]:
        if self._aliases is None:
            self._aliases = self._aliases_from_modules_alias()
        if self._aliases is not None:
            return self._aliases
        return self._scan_aliases(key)

    def _aliases_from_modules_alias(self) -> list[tuple[str, str]] | None:
        try:
            text = (self.root / "modules.alias").read_text(errors="replace")
        except OSError:
            return None
        table = []
        for line in text.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "alias":
                table.append((words[1], module_name(words[2])))
        return table

    def _scan_aliases(self, key: str) -> list[tuple[str, str]]:
        """Without modules.alias: look at every module's raw bytes for alias= strings that
        could match, and confirm with the module's real .modinfo."""
        table = []
        for name, module in self.files.items():
            data = read_module_bytes(module.path, module.compression)
            candidates = {m.decode(errors="replace") for m in _ALIAS_CANDIDATE.findall(data)}
            if any(fnmatch.fnmatchcase(key, _alias_key(c)) for c in candidates):
                table += [(alias, name) for alias in self.modinfo(name).aliases]
        return table


def find_tree(kernel: Path | None = None, modules_dir: Path | None = None) -> ModuleTree:
    """The modules tree for ``modules_dir`` (lib/modules/VERSION), else for the kernel
    image ``kernel``, else for the running kernel."""
    if modules_dir is not None:
        modules_dir = Path(modules_dir)
        if kernel is not None:
            _check_version_matches(kernel, modules_dir)
        return ModuleTree(modules_dir)
    if kernel is not None:
        return _tree_for_kernel(Path(kernel))
    release = os.uname().release
    for base in (Path("/lib/modules"), Path("/usr/lib/modules")):
        if (base / release).is_dir():
            return ModuleTree(base / release)
    raise InitkitError(f"the running kernel ({release}) has no modules tree in /lib/modules; "
                       "pass --kernel IMAGE or --modules-dir lib/modules/VERSION")


def _tree_for_kernel(kernel: Path) -> ModuleTree:
    from initbuilder.kernels.formats import kernel_release

    release = kernel_release(kernel)
    candidates = []
    image_dir = kernel.resolve().parent
    if image_dir.name == "boot":  # an unpacked package or a root: <root>/boot/vmlinuz-V
        candidates += [image_dir.parent / "lib/modules" / release,
                       image_dir.parent / "usr/lib/modules" / release]
    candidates += [Path("/lib/modules") / release, Path("/usr/lib/modules") / release]
    for candidate in candidates:
        if candidate.is_dir():
            return ModuleTree(candidate, release)
    searched = ", ".join(str(c) for c in candidates)
    raise InitkitError(f"no modules for kernel {release} (from {kernel}); searched {searched}; "
                       "pass --modules-dir lib/modules/VERSION")


def _check_version_matches(kernel: Path, modules_dir: Path) -> None:
    from initbuilder.kernels.formats import kernel_release

    release = kernel_release(Path(kernel))
    if modules_dir.name != release:
        raise InitkitError(f"--modules-dir {modules_dir} is not for kernel {release} "
                           f"(from {kernel}); pass lib/modules/{release}")


def resolve(tree: ModuleTree, names: Sequence[str]) -> Resolution:
    """Close ``names`` over hard dependencies and soft dependencies; dependencies (and
    pre: softdeps) load before a module, post: softdeps after it. A hard-dependency cycle
    is an error; a soft dependency that would close a cycle is skipped, as modprobe does."""
    result = Resolution()
    done: set[str] = set()
    stack: list[str] = []

    def visit(name: str, needed_by: str | None) -> None:
        if name in done:
            return
        if name in stack:
            cycle = " -> ".join([*stack[stack.index(name):], name])
            raise InitkitError(f"kernel modules in {tree.root} depend on each other in a cycle: "
                               f"{cycle}; the modules are inconsistent, rebuild them")
        if name not in tree.files:
            if name in tree.builtin:
                done.add(name)
                result.builtin.append(name)
                return
            by = f"module {needed_by} depends on " if needed_by else ""
            raise InitkitError(f"{by}kernel module {name!r} is not in {tree.root}: no "
                               f"{name}.ko file, not built in, no such alias; check the name "
                               "and that the tree belongs to this kernel")
        stack.append(name)
        info = tree.modinfo(name)
        pre, post = info.softdeps
        for soft in pre:
            visit_soft(soft, name)
        for dep in info.depends:
            visit(dep, name)
        stack.pop()
        done.add(name)
        result.load_order.append(tree.files[name])
        for soft in post:
            visit_soft(soft, name)

    def visit_soft(requested: str, by: str) -> None:
        names = tree.lookup(requested)
        if not names:
            log.info("module %s: soft dependency %s not found in %s; skipped",
                     by, requested, tree.root)
        for name in names:
            if name in stack:
                log.info("module %s: soft dependency %s closes a cycle; skipped", by, name)
            else:
                visit(name, by)

    for requested in names:
        found = tree.lookup(requested)
        if not found:
            raise InitkitError(
                f"kernel module {requested!r} not found in {tree.root} (kernel "
                f"{tree.version}): no such module file, built-in module or alias; "
                "check the spelling (a module's name is its .ko file name)"
            )
        for name in found:
            visit(name, None)
    _check_vermagic(tree, result.load_order)
    return result


def _check_vermagic(tree: ModuleTree, modules: list[ModuleFile]) -> None:
    # The kernel refuses a module built for another release; say so at build time.
    if not re.match(r"\d+\.\d+", tree.version):
        return
    for module in modules:
        vermagic = tree.modinfo(module.name).vermagic
        if vermagic and vermagic.split()[0] != tree.version:
            raise InitkitError(
                f"kernel module {module.path} was built for kernel {vermagic.split()[0]}, "
                f"not {tree.version}; use the modules that came with the kernel"
            )


def load_list(tree: ModuleTree, modules: Sequence[ModuleFile]) -> list[str]:
    """Absolute guest paths of ``modules``, in the given (load) order."""
    return [f"/lib/modules/{tree.version}/{m.plain_relpath}" for m in modules]


def add_modules(
    image: Image,
    *,
    kernel: Path | None = None,
    modules_dir: Path | None = None,
    names: Sequence[str] | None = None,
) -> list[str]:
    """Add the closure of ``names`` (default: the virtiofs set and, where the kernel has
    them, CHANNEL_MODULES), decompressed, under
    /lib/modules/VERSION/ and the load list /etc/initkit/modules; return the load list.
    When every one is built into the kernel, nothing is added."""
    tree = find_tree(kernel, modules_dir)
    if names is None:
        names = (*DEFAULT_MODULES, *(n for n in CHANNEL_MODULES if tree.lookup(n)))
    resolution = resolve(tree, names)
    paths = load_list(tree, resolution.load_order)
    if not paths:
        # A kernel with everything built in (initbuilder kernel build): no module step at
        # all, neither files nor a load list for the guest to read.
        log.info("kernel %s: every module asked for is built in (%s): no module step",
                 tree.version, ", ".join(resolution.builtin) or "none")
        return paths
    for module, guest in zip(resolution.load_order, paths, strict=True):
        source = f"kernel module {module.name}"
        if module.compression is None:
            image.add_file(guest, host=module.path, mode=0o644, source=source)
        else:
            data = read_module_bytes(module.path, module.compression)
            image.add_file(guest, data=data, mode=0o644, source=source)
    text = "".join(f"{p}\n" for p in paths)
    image.add_file(LOAD_LIST, data=text.encode(), mode=0o644, source="kernel modules")
    log.info("kernel %s: %d modules to load, built in: %s", tree.version, len(paths),
             ", ".join(resolution.builtin) or "none")
    return paths
