"""ld.so.conf, ld.so.cache and --root: another tree's configuration, never the host's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elf_fixtures import Builder, host_libc_tree, parse_trace
from realparts import missing_part

from initbuilder.loader.closure import Resolver
from initbuilder.loader.ldconfig import LdCache, read_conf
from initbuilder.loader.sysroot import Sysroot
from initkit.errors import InitkitError


def test_ld_so_conf_includes_comments_and_old_syntax(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "ld.so.conf.d").mkdir(parents=True)
    (etc / "ld.so.conf").write_text(
        "# comment\n/opt/first/   # trailing comment\n"
        "include ld.so.conf.d/*.conf\n"
        "hwcap 1 nosegneg\n"
        "/opt/typed=libc6\n"
        "include /etc/loop.conf\n")
    (etc / "ld.so.conf.d/20-b.conf").write_text("/opt/b\n")
    (etc / "ld.so.conf.d/10-a.conf").write_text("\n  /opt/a  \n/opt/first\n")
    (etc / "ld.so.conf.d/ignored.txt").write_text("/opt/never\n")
    (etc / "loop.conf").write_text("include /etc/loop.conf\n/opt/loop\n")
    assert read_conf(Sysroot(tmp_path)) == [
        "/opt/first", "/opt/a", "/opt/b", "/opt/typed", "/opt/loop"]


def test_host_cache_matches_ldconfig_p() -> None:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    if not os.path.exists("/etc/ld.so.cache") or not os.path.exists(ldconfig):
        missing_part("this host has no ld.so.cache or ldconfig")
    cache = LdCache.load(Sysroot())
    assert cache is not None
    out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True).stdout
    listed = set()
    for line in out.splitlines()[1:]:
        match = re.match(r"\s+(\S+) \((.*)\) => (\S+)", line)
        if match:
            listed.add((match.group(1), match.group(3)))
    assert len(listed) > 10
    ours = {(key, entry.path) for key, entries in cache.entries.items() for entry in entries}
    assert ours == listed


def test_sysroot_resolves_absolute_links_inside_the_tree(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/real.so").write_text("x")
    os.symlink("/usr/lib", tmp_path / "lib")
    os.symlink("/lib/real.so", tmp_path / "usr/lib/abs.so")
    os.symlink("../../usr/lib/real.so", tmp_path / "usr/lib/rel.so")
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    root = Sysroot(tmp_path)
    assert root.resolve("/lib/abs.so") == "/usr/lib/real.so"
    assert root.host("/lib/rel.so") == f"{tmp_path}/usr/lib/real.so"
    assert root.resolve("/lib/../lib/./abs.so") == "/usr/lib/real.so"
    assert root.resolve("/../../lib/abs.so") == "/usr/lib/real.so"
    with pytest.raises(InitkitError, match="too many levels"):
        root.resolve("/loop1/x")
    with pytest.raises(InitkitError, match="not a directory"):
        Sysroot(tmp_path / "usr/lib/real.so")


@pytest.fixture
def sysroot(build: Builder, tmp_path: Path) -> Path:
    """A small tree: the host's loader and libc under absolute symlinks, its own
    ld.so.conf naming /opt/b before /opt/a, and a program needing libfoo.so.1."""
    root = host_libc_tree(tmp_path / "tree")
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/20-a.conf").write_text("/opt/a\n")
    (root / "etc/ld.so.conf.d/10-b.conf").write_text("/opt/b\n")
    for where in ("a", "b"):
        build.lib(f"tree/opt/{where}/libfoo.so.1.0", soname="libfoo.so.1")
        os.symlink("libfoo.so.1.0", root / f"opt/{where}/libfoo.so.1")
    build.exe("tree/usr/bin/prog", needed=["libfoo.so.1", "libz.so.1"])
    return root


def _resolved(root: Path) -> dict[str, str | None]:
    closure = Resolver(root).resolve("/usr/bin/prog")
    out: dict[str, str | None] = {lib.names[0]: lib.path for lib in closure.libraries}
    out.update({m.name: None for m in closure.missing})
    out["interpreter"] = closure.interpreter.path if closure.interpreter else None
    return out


def test_root_uses_the_trees_conf_never_the_hosts(sysroot: Path) -> None:
    loader = sysroot / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    loader.chmod(0o644)  # resolving must not need to run it
    found = _resolved(sysroot)
    assert found["libfoo.so.1"] == "/opt/b/libfoo.so.1"
    assert found["libc.so.6"] == "/lib/x86_64-linux-gnu/libc.so.6"
    assert found["interpreter"] == "/lib64/ld-linux-x86-64.so.2"
    assert found["libz.so.1"] is None  # on the host, not in the tree
    # Host paths inside the tree are accepted as FILE too.
    closure = Resolver(sysroot).resolve(str(sysroot / "usr/bin/prog"))
    assert closure.main.path == "/usr/bin/prog"


def test_root_with_its_own_cache_agrees_with_the_chrooted_loader(sysroot: Path) -> None:
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    if os.geteuid() != 0:
        pytest.skip("ldconfig -r and chroot need root")
    if not os.path.exists(ldconfig):
        missing_part("ldconfig is not installed")
    without_cache = _resolved(sysroot)
    subprocess.run([ldconfig, "-r", str(sysroot)], check=True, capture_output=True)
    assert (sysroot / "etc/ld.so.cache").exists()
    assert LdCache.load(Sysroot(sysroot)) is not None
    with_cache = _resolved(sysroot)
    assert with_cache == without_cache
    # chroot(1) would trace itself: chroot in the child, then exec the program.
    proc = subprocess.run(["/usr/bin/prog"], env={"LD_TRACE_LOADED_OBJECTS": "1"},
                          preexec_fn=lambda: os.chroot(sysroot), cwd="/",
                          capture_output=True, text=True, check=True)
    tree = Sysroot(sysroot)
    inside, missing = parse_trace(proc.stdout, tree.host)
    ours = {tree.host(path) for path in with_cache.values() if path}
    assert ours == inside
    assert missing == {"libz.so.1"}
