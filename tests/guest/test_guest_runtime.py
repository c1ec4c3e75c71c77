"""initbuilder.runtime and pyimports: the private Python the guest init runs on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from realparts import missing_part, unpack_with_cpio

from guest.contract import PYTHON_INIT
from initbuilder import runtime
from initbuilder.cpio import write_initrd
from initbuilder.image import Image, Kind
from initbuilder.pyimports import compile_package_module, follow, imports_of
from initkit.errors import InitkitError

PREFIX = runtime.PREFIX
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
LIB = f"usr/lib/initkit/python/{sys.platlibdir}/python{VERSION}"


def names(source: str, *, module: str = "pkg.mod", package: bool = False,
          everywhere: bool = False) -> set[tuple[str, bool]]:
    return {(m, opt) for m, opt, _ in imports_of(source.encode(), module, package, everywhere)}


# -- following imports ------------------------------------------------------------------
def test_module_level_imports_and_from_imports() -> None:
    got = names("import os, sys\nfrom ctypes import CDLL, util\n")
    assert {("os", False), ("sys", False), ("ctypes", False)} <= got
    # "from pkg import name" may name a submodule: tried, optional.
    assert ("ctypes.util", True) in got and ("ctypes.CDLL", True) in got


def test_function_bodies_only_when_asked() -> None:
    source = "def f():\n    import subprocess\nclass C:\n    import json\n"
    assert names(source) == {("json", False)}  # a class body runs at import time
    assert names(source, everywhere=True) == {("json", False), ("subprocess", False)}


def test_type_checking_blocks_are_skipped() -> None:
    source = ("TYPE_CHECKING = False\nif TYPE_CHECKING:\n    import typing\n"
              "import typing as t\nif t.TYPE_CHECKING:\n    import collections\n"
              "else:\n    import io\n")
    assert names(source) == {("typing", False), ("io", False)}


def test_guarded_imports_are_optional_and_fallbacks_know_their_primary() -> None:
    source = ("try:\n    from _abc import get_cache_token\nexcept ImportError:\n"
              "    from _py_abc import ABCMeta\n")
    got = imports_of(source.encode(), "abc", False, False)
    assert ("_abc", True, ()) in got
    assert ("_py_abc", False, ("_abc",)) in got


def test_future_imports_of_our_packages_become_compiler_flags(tmp_path: Path) -> None:
    """The .pyc keeps PEP 563 semantics but does not import __future__ at run time."""
    source = ('"""doc"""\nfrom __future__ import annotations\nimport sys\n'
              "def f(x: NotDefinedAnywhere) -> int | None:\n    return 1\n")
    assert names(source, everywhere=True) == {("sys", False)}  # our package: not followed
    assert ("__future__", False) in names(source)  # the standard library's: followed
    (tmp_path / "m.py").write_text(source)
    compile_package_module(str(tmp_path / "m.py"), str(tmp_path / "m.pyc"), "/x/m.py", 2)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import m; "
            "print(m.f.__annotations__, '__future__' in sys.modules, "
            "hasattr(m, 'annotations'), m.__doc__)")
    (tmp_path / "m.py").unlink()  # sourceless: the .pyc next to where m.py was
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert proc.stdout == ("{'x': 'NotDefinedAnywhere', 'return': 'int | None'} "
                           "False False None\n")  # -OO: no docstring


def test_a_module_that_does_not_compile_is_named(tmp_path: Path) -> None:
    package = tmp_path / "bad"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text("def f(:\n")
    answer = follow({"packages": {"bad": str(package)}, "roots": [], "prefix": "/p",
                     "out": str(tmp_path / "out"), "optimize": 2})
    assert "error" in answer and str(package / "broken.py") in answer["error"]
    assert "line 1" in answer["error"]


def test_relative_imports_resolve_against_the_package() -> None:
    assert names("from . import plan", module="guest", package=True) == {
        ("guest", False), ("guest.plan", True)}
    assert ("guest.plan", False) in names("from .plan import x", module="guest.boot")
    assert names("from .. import b", module="a.c.d") == {("a", False), ("a.b", True)}
    assert names("from ... import x", module="a") == set()  # beyond the top: ignored


def test_the_guest_reaches_only_a_small_stdlib_subset() -> None:
    found = {m.name: m for m in runtime.collect().modules}
    assert {"guest.__main__", "guest.system", "guest.libc", "guest.osfuncs", "ctypes",
            "encodings.utf_8", "os"} <= set(found)
    assert found["_ctypes"].kind == "extension"
    # The agent's directory transfers import tarfile in a worker (guest/transfer.py):
    # it is packed, the compression codecs its shutil would load are not.
    assert {"guest.agent", "tarfile", "shutil", "select"} <= set(found)
    assert not {"zlib", "bz2", "lzma", "_bz2", "_lzma"} & set(found)
    # Heavy modules the guest avoids on purpose stay out; __future__ is compiled in.
    assert not {"typing", "dataclasses", "signal", "subprocess", "traceback", "contextlib",
                "_py_abc", "__future__"} & set(found)
    # The init, the agent and the modules tarfile needs: ~50 (the agent's split into
    # agent/requests/port/spawn/transfer made it 51); far more means a heavy import crept in.
    assert sum(1 for m in found.values() if m.kind == "source") < 56


def test_the_boot_and_the_agent_import_only_a_few_modules() -> None:
    """What is packed is not what is imported: tarfile and its kin load only in a
    transfer's worker, never at boot or in the agent's loop."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules)\n"
            "import guest.__main__, guest.agent\n"
            "print(' '.join(sorted(set(sys.modules) - before)))\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code,
                           str(Path(runtime.__file__).parents[1])],
                          capture_output=True, text=True, check=True)
    loaded = set(proc.stdout.split())
    assert {"guest.agent", "guest.wire", "guest.spawn", "guest.transfer", "select"} <= loaded
    assert not {"tarfile", "shutil", "re", "enum", "os", "struct", "ctypes", "typing",
                "collections"} & loaded


# -- the runtime in an image ------------------------------------------------------------------
@pytest.fixture(scope="module")
def image() -> Image:
    image = Image()
    runtime.add_runtime(image)
    return image


def test_layout_under_the_private_prefix(image: Image) -> None:
    interpreter = image.get(f"usr/lib/initkit/python/bin/python{VERSION}")
    assert interpreter is not None and interpreter.kind is Kind.FILE and interpreter.mode == 0o755
    os_pyc = image.get(f"{LIB}/os.pyc")  # getpath's landmark
    assert os_pyc is not None and os_pyc.kind is Kind.FILE
    dynload = image.get(f"{LIB}/lib-dynload")
    assert dynload is not None and dynload.kind is Kind.DIR
    assert image.get(f"{LIB}/guest/__main__.pyc") is not None
    paths = [p for p, _ in image.items()]
    assert not [p for p in paths if p.startswith("nix/")]
    assert not [p for p in paths if p.startswith(LIB) and p.endswith(".py")]  # sourceless
    console = image.get("dev/console")
    assert console is not None and (console.kind, console.major, console.minor) == (
        Kind.CHAR, 5, 1)


def test_pyc_files_are_unchecked_hash_bytecode(image: Image) -> None:
    entry = image.get(f"{LIB}/os.pyc")
    assert entry is not None and entry.data is not None
    import importlib.util

    assert entry.data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(entry.data[4:8], "little") == 0b01  # hash-based, not checked


def test_init_runs_the_entry_bytecode_isolated(image: Image) -> None:
    """The Python init's script (/init, or beside the native init) hands the interpreter
    guest/entry.py's bytecode (no source to compile at boot); the ._pth file by the
    interpreter makes that run isolated and without site."""
    init = image.get(PYTHON_INIT.lstrip("/")) or image.get("init")
    assert init is not None and init.mode == 0o755 and init.data is not None
    first = init.data.decode().splitlines()[0]
    assert first == f"#!{PREFIX}/bin/python{VERSION} /{LIB}/guest/entry.pyc"
    assert image.get(f"{LIB}/guest/entry.pyc") is not None
    pth = image.get(f"usr/lib/initkit/python/bin/python{VERSION}._pth")
    assert pth is not None and pth.data is not None
    lines = [line for line in pth.data.decode().splitlines() if not line.startswith("#")]
    lib = f"../{sys.platlibdir}/python{VERSION}"
    assert lines == [lib, f"{lib}/lib-dynload"]


def test_init_before_python_3_11_is_a_script_with_flags() -> None:
    """Python 3.10 reads no ._pth on POSIX: its /init keeps -IS and is source."""
    old = runtime.Runtime("3.10", Path("/usr/bin/python3.10"), "lib", ())
    first, *rest = runtime.init_script(old).decode().splitlines()
    assert first == f"#!{PREFIX}/bin/python3.10 -IS"
    assert "from guest.__main__ import main" in rest


def test_interpreter_and_libpython_are_stripped(image: Image) -> None:
    for path, entry in image.items():
        if entry.kind is Kind.FILE and entry.host is not None and (
                "libpython" in path or path.endswith(f"bin/python{VERSION}")):
            original = Path("/" + path) if "libpython" in path else Path(
                os.path.realpath(sys.executable))
            if shutil.which("strip") is None:
                missing_part("strip (binutils) is not installed")
            assert entry.host.stat().st_size <= original.stat().st_size


def test_same_inputs_same_bytes(tmp_path: Path, image: Image) -> None:
    again = Image()
    runtime.add_runtime(again)
    write_initrd(image, tmp_path / "a.cpio")
    write_initrd(again, tmp_path / "b.cpio")
    assert (tmp_path / "a.cpio").read_bytes() == (tmp_path / "b.cpio").read_bytes()


def test_compiling_twice_gives_the_same_pyc(tmp_path: Path) -> None:
    first = runtime._follow(Path(sys.executable), tmp_path / "one")
    second = runtime._follow(Path(sys.executable), tmp_path / "two")
    pycs = [f["guest"] for f in first["files"] if f["kind"] == "source"]
    assert pycs and first["files"] == [
        {**f, "host": f["host"] and f["host"].replace("/two/", "/one/")} for f in second["files"]]
    for guest in pycs:
        one = (tmp_path / "one" / guest.lstrip("/")).read_bytes()
        assert one == (tmp_path / "two" / guest.lstrip("/")).read_bytes(), guest


def test_python_option_errors(tmp_path: Path) -> None:
    with pytest.raises(InitkitError, match="no such file"):
        runtime.add_runtime(Image(), python=tmp_path / "nope")
    text = tmp_path / "python"
    text.write_text("not a program")
    with pytest.raises(InitkitError, match="not executable"):
        runtime.add_runtime(Image(), python=text)
    with pytest.raises(InitkitError):
        runtime.add_runtime(Image(), python=Path("/bin/true"))  # answers nothing


def test_wrapper_script_interpreter_is_followed(tmp_path: Path) -> None:
    """A wrapper (like a pyenv shim) works: facts come from the real interpreter."""
    wrapper = tmp_path / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec "{os.path.realpath(sys.executable)}" "$@"\n')
    wrapper.chmod(0o755)
    image = Image()
    runtime.add_runtime(image, python=wrapper)
    assert image.get(f"usr/lib/initkit/python/bin/python{VERSION}") is not None


def _interpreter(which: str) -> Path:
    """The Pythons users build runtimes from: the running one (a venv's python3 here),
    the system's (Debian 12's 3.11, Debian 13's 3.13 with libpython inside) and a
    pyenv build (libpython shared), where this machine has one."""
    if which == "running":
        return Path(sys.executable)
    if which == "system":
        found = Path("/usr/bin/python3")
        if not found.exists():
            missing_part("no system Python at /usr/bin/python3 (apt-get install python3)")
        return found
    builds = sorted(Path("/root/.pyenv/versions").glob("*/bin/python3.1[0-9]"),
                    key=lambda p: int(p.name.rpartition(".")[2]))
    if not builds:
        pytest.skip("no pyenv Python on this machine (only some machines have one)")
    return builds[-1]


@pytest.mark.parametrize("which", ["running", "system", "pyenv"])
def test_runtime_starts_from_the_unpacked_initrd(which: str, tmp_path: Path) -> None:
    """The relocated interpreter runs in a chroot of the initrd: its sys.path is the
    private library, it finds libpython and the extension modules, and imports the
    guest; without flags, as /init runs it, it is isolated and imports no site."""
    if os.geteuid() != 0 or shutil.which("cpio") is None:
        missing_part("needs root for chroot and cpio to unpack")
    python = _interpreter(which)
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    image = Image()
    runtime.add_runtime(image, python=python)
    initrd = tmp_path / "initrd.cpio"
    write_initrd(image, initrd)
    root = unpack_with_cpio(initrd, tmp_path / "root")
    code = ("import sys, guest.__main__, guest.system; guest.system.System(); "
            "print(sys.prefix, sys.exec_prefix, sys.flags.utf8_mode, "
            "sorted(m for m in sys.modules if 'ctypes' in m or m == '__future__'))")
    # A script, as /init is: Python 3.13 runs -c code through linecache, which the
    # runtime leaves out (the init never needs it).
    (root / "check.py").write_text(code + "\n")
    proc = subprocess.run([shutil.which("chroot") or "chroot", str(root),
                           f"{PREFIX}/bin/python{version}", "-IS", "/check.py"],
                          capture_output=True, text=True, timeout=60, env={})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no "Could not find platform libraries" warnings
    # sys.prefix is the ._pth file's directory (getpath sets home there); nothing in the
    # guest reads it: sys.path comes from the file.
    assert proc.stdout.split(" ", 3) == [f"{PREFIX}/bin", f"{PREFIX}/bin", "1",
                                         "['_ctypes']\n"]  # not the ctypes package
    # As /init runs it: no flags (the ._pth file gives -I -S) and a PYTHON* variable
    # that -I would ignore.
    (root / "flags.py").write_text(
        "import sys; print(sys.flags.isolated, sys.flags.no_site, "
        "sys.flags.ignore_environment, sys.flags.dont_write_bytecode, 'site' in sys.modules, "
        "sys.path)\n")
    proc = subprocess.run([shutil.which("chroot") or "chroot", str(root),
                           f"{PREFIX}/bin/python{version}", "/flags.py"],
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": "/nowhere"})
    assert proc.returncode == 0, proc.stderr
    lib = f"{PREFIX}/lib/python{version}"
    assert proc.stdout.strip() == f"1 1 1 0 False {[lib, f'{lib}/lib-dynload']}"


def test_the_same_interpreter_as_a_binary_is_no_conflict() -> None:
    """`--binary python3` of the runtime's own interpreter: its closure packs the original
    libpython where the runtime would pack a stripped copy; the original wins."""
    from initbuilder.loader.closure import Resolver
    from initbuilder.spec import BuildSpec, build_image

    closure = Resolver().resolve(sys.executable)
    libpython = [lib.path for lib in closure.libraries
                 if lib.path and os.path.basename(lib.path).startswith("libpython")]
    if not libpython:
        pytest.skip(f"{sys.executable} has libpython linked in: nothing to collide")
    image, _ = build_image(BuildSpec(binaries=[sys.executable], busybox=None))
    entry = image.get(os.path.realpath(libpython[0]).lstrip("/"))
    assert entry is not None and entry.host is not None
    assert os.path.samefile(entry.host, libpython[0])  # the original, not the stripped copy
