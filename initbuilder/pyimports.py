"""Follow a package's imports through a Python's standard library; compile what they reach.

This file runs under the *target* interpreter (the one going into the initrd), as
``python -I -S pyimports.py < request.json > answer.json``, so module lookup, extension
suffixes and bytecode all match that interpreter. It therefore imports nothing from
initbuilder; initbuilder.runtime drives it (see ``follow`` for the request and answer).

Imports are read from the source with ``ast``, not by importing: everywhere in the
packages given (function bodies too), and in the standard library only what runs at
import time (module and class bodies, if/try/with blocks), skipping ``if TYPE_CHECKING``.
"""

from __future__ import annotations
import __future__

import _imp
import ast
import errno
import importlib.machinery
import importlib.util
import json
import marshal
import os
import py_compile
import sys
import sysconfig
from typing import Any

# Modules of other platforms that Linux code imports only behind a platform test.
FOREIGN = frozenset({
    "nt", "ntpath", "nturl2path", "msvcrt", "winreg", "_winapi", "_overlapped", "winsound",
    "_msi", "_scproxy", "_osx_support", "_aix_support", "java",
})
# Names that exist only as sys.modules entries made at run time ("os.path" is posixpath).
ALIASES = frozenset({"os.path"})
# Handlers that make an import optional when they surround it.
_OPTIONAL_HANDLERS = frozenset({"ImportError", "ModuleNotFoundError", "Exception",
                                "BaseException", "AttributeError"})


def facts() -> dict[str, object]:
    """What the relocated runtime needs to know about this interpreter."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stdlib = sysconfig.get_path("stdlib")
    dynload = sysconfig.get_config_var("DESTSHARED") or os.path.join(
        sysconfig.get_path("platstdlib"), "lib-dynload")
    return {
        "version": version,
        "hexversion": sys.hexversion,
        "executable": os.path.realpath(sys.executable),
        "platlibdir": getattr(sys, "platlibdir", "lib"),
        "stdlib": os.path.realpath(stdlib),
        "dynload": os.path.realpath(dynload),
        "cache_tag": sys.implementation.cache_tag,
        "implementation": sys.implementation.name,
        "prefix": os.path.realpath(sys.base_prefix),
    }


class _Found:
    __slots__ = ("host", "is_package", "kind", "locations", "name")

    def __init__(self, name: str, kind: str, host: str | None, is_package: bool,
                 locations: list[str]) -> None:
        self.name, self.kind, self.host = name, kind, host
        self.is_package, self.locations = is_package, locations


class Follower:
    """Resolve module names to files without importing them, and follow their imports."""

    def __init__(self, search_path: list[str], packages: dict[str, str],
                 unwanted: frozenset[str] = frozenset()) -> None:
        self._search_path = search_path
        self._packages = packages  # top-level name -> directory, searched first
        self._unwanted = unwanted  # top-level names left out where imported optionally
        self._cache: dict[str, _Found | None] = {}
        self.found: dict[str, _Found] = {}
        self.via: dict[str, str] = {}
        self.missing: dict[str, str] = {}

    def find(self, name: str) -> _Found | None:
        """Where ``name`` lives, or None; parents are looked up, never imported."""
        if name in self._cache:
            return self._cache[name]
        result: _Found | None
        if name in sys.builtin_module_names:
            result = _Found(name, "builtin", None, False, [])
        else:
            parent, _, _leaf = name.rpartition(".")
            if parent:
                outer = self.find(parent)
                path = outer.locations if outer is not None and outer.is_package else None
            elif name in self._packages:
                path = [os.path.dirname(self._packages[name])]
            else:
                path = self._search_path
            spec = importlib.machinery.PathFinder.find_spec(name, path) if path else None
            result = _from_spec(name, spec)
        self._cache[name] = result
        return result

    def add(self, name: str, importer: str, *, optional: bool = False) -> None:
        """Take ``name`` (and its parent packages) and everything they import: every
        import in the given packages' modules, import-time ones elsewhere."""
        pending = [(name, importer, optional)]
        while pending:
            current, by, maybe = pending.pop()
            top = current.split(".")[0]
            if current in self.found or current in ALIASES or top in FOREIGN or (
                    maybe and top in self._unwanted):
                continue
            found = self.find(current)
            if found is None:
                if not maybe and current not in self.missing:
                    self.missing[current] = by
                continue
            self.found[current] = found
            self.via[current] = by
            parent = current.rpartition(".")[0]
            if parent:
                pending.append((parent, current, False))
            if found.kind != "source" or found.host is None:
                continue
            ours = current.split(".")[0] in self._packages
            try:
                imported = imports_of(_read(found.host), current, found.is_package, ours)
            except SyntaxError as exc:
                raise Unreadable(f"cannot parse {found.host} with Python "
                                 f"{sys.version.split()[0]}: {exc.msg} (line {exc.lineno})"
                                 ) from None
            for target, opt, primaries in imported:
                # A fallback ("except ImportError: import _py_abc") only if it is needed.
                if not primaries or not all(self.find(p) for p in primaries):
                    pending.append((target, current, opt))


class Unreadable(Exception):
    """A module the target interpreter cannot parse or compile; the message names it."""


def _from_spec(name: str, spec: object) -> _Found | None:
    if spec is None:
        return None
    loader = getattr(spec, "loader", None)
    origin = getattr(spec, "origin", None)
    locations = list(getattr(spec, "submodule_search_locations", None) or [])
    is_package = getattr(spec, "submodule_search_locations", None) is not None
    if isinstance(loader, importlib.machinery.ExtensionFileLoader):
        return _Found(name, "extension", origin, False, [])
    if isinstance(loader, importlib.machinery.SourceFileLoader):
        return _Found(name, "source", origin, is_package, locations)
    if isinstance(loader, importlib.machinery.SourcelessFileLoader):
        return _Found(name, "bytecode", origin, is_package, locations)
    if is_package and origin is None:  # a namespace package: nothing to copy
        return _Found(name, "namespace", None, True, locations)
    return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


Import = tuple[str, bool, tuple[str, ...]]


def imports_of(source: bytes, name: str, is_package: bool, everywhere: bool) -> list[Import]:
    """(module, optional, primaries) for each import in ``source``; ``primaries`` names
    the imports an ``except ImportError`` fallback stands in for (empty otherwise).
    ``everywhere`` includes function bodies, else only what runs at import time."""
    package = name if is_package else name.rpartition(".")[0]
    out: list[Import] = []
    _visit(ast.parse(source).body, package, everywhere, False, out)
    return out


def _visit(body: list[ast.stmt], package: str, everywhere: bool, optional: bool,
           out: list[Import], primaries: tuple[str, ...] = ()) -> None:
    for node in body:
        if isinstance(node, ast.Import):
            out.extend((alias.name, optional, primaries) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if everywhere and _is_future(node):
                continue  # compiled into flags: see compile_package_module
            base = _absolute(node.module, node.level, package)
            if base is None:
                continue
            out.append((base, optional, primaries))
            # "from pkg import name" imports pkg.name when name is a submodule.
            out.extend((f"{base}.{alias.name}", True, primaries) for alias in node.names
                       if alias.name != "*")
        elif isinstance(node, ast.If):
            if not _never_at_runtime(node.test):
                _visit(node.body, package, everywhere, optional, out, primaries)
            _visit(node.orelse, package, everywhere, optional, out, primaries)
        elif isinstance(node, ast.Try | getattr(ast, "TryStar", ast.Try)):
            guarded = any(_catches_import_errors(h) for h in node.handlers)
            _visit(node.body, package, everywhere, optional or guarded, out, primaries)
            tried = _direct_imports(node.body, package) if guarded else ()
            for handler in node.handlers:
                _visit(handler.body, package, everywhere, optional, out, tried or primaries)
            _visit(node.orelse, package, everywhere, optional, out, primaries)
            _visit(node.finalbody, package, everywhere, optional, out, primaries)
        elif isinstance(node, ast.With | ast.AsyncWith | ast.For | ast.AsyncFor | ast.While):
            _visit(node.body, package, everywhere, optional, out, primaries)
            _visit(getattr(node, "orelse", []), package, everywhere, optional, out, primaries)
        elif isinstance(node, ast.ClassDef) or (
                everywhere and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)):
            # A class body runs at import time; a function body only when called.
            _visit(node.body, package, everywhere, optional, out, primaries)


def _is_future(node: ast.ImportFrom) -> bool:
    return node.module == "__future__" and node.level == 0


def compile_package_module(source_path: str, cfile: str, dfile: str, optimize: int) -> None:
    """Compile one module of a package as py_compile would (a sourceless-ready,
    unchecked-hash .pyc, PEP 552), except that ``from __future__ import ...`` becomes
    compiler flags: as a statement it also imports the __future__ module at run time,
    which the guest init would pay at every boot (~3 ms under TCG) to bind a name that
    nothing reads. The features (annotations) behave exactly as with the statement."""
    source = _read(source_path)
    tree = ast.parse(source, dfile)
    flags = 0
    body = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and _is_future(node):
            for alias in node.names:
                flags |= getattr(__future__, alias.name).compiler_flag
        else:
            body.append(node)
    tree.body = body
    code = compile(tree, dfile, "exec", flags=flags, dont_inherit=True, optimize=optimize)
    # PEP 552 header: magic, flags (bit 0: hash-based; bit 1 clear: never checked), hash.
    data = (importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))
    with open(cfile, "wb") as f:
        f.write(data)


def _direct_imports(body: list[ast.stmt], package: str) -> tuple[str, ...]:
    """The modules the statements of ``body`` import themselves (not nested ones)."""
    names: list[str] = []
    for node in body:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base is not None:
                names.append(base)
    return tuple(names)


def _absolute(module: str | None, level: int, package: str) -> str | None:
    if level == 0:
        return module
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = parts[:len(parts) - (level - 1)]
    if module:
        base.append(module)
    return ".".join(base) or None


def _never_at_runtime(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:``, ``if typing.TYPE_CHECKING:`` and ``if False:``."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return isinstance(test, ast.Constant) and test.value is False


def _catches_import_errors(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in _OPTIONAL_HANDLERS for n in names)


def follow(request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request.

    Request: ``packages`` {name: package dir}, ``roots`` [module names the interpreter
    needs by itself], ``prefix`` (the runtime's guest prefix), ``out`` (a directory for
    compiled files), ``optimize`` (0-2), ``unwanted`` [top-level names not followed
    where they are imported optionally, under ``try: ... except ImportError``].
    Answer: ``facts``, ``files`` [{name, kind, host, guest, frozen}] with ``host`` a
    compiled .pyc in ``out`` for Python modules,
    and ``missing`` {name: importer}; or ``error``, naming a module that does not parse
    or compile under this interpreter; or ``write_error`` {errno, path}: a compiled file
    could not be written (a full disk), for the caller to explain.
    """
    info = facts()
    packages = dict(request["packages"])
    prefix = str(request["prefix"]).rstrip("/")
    out_dir = str(request["out"])
    optimize = int(request.get("optimize", 0))
    lib = f"{prefix}/{info['platlibdir']}/python{info['version']}"
    search = [str(info["stdlib"]), str(info["dynload"])]
    try:
        return _follow(request, info, packages, lib, search, out_dir, optimize)
    except Unreadable as exc:
        return {"error": str(exc)}


def _follow(request: dict[str, Any], info: dict[str, object], packages: dict[str, str],
            lib: str, search: list[str], out_dir: str, optimize: int) -> dict[str, Any]:
    follower = Follower(search, packages, frozenset(request.get("unwanted", ())))
    for root in request.get("roots", []):
        follower.add(str(root), "<interpreter>")
    for package, directory in packages.items():
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            rel = os.path.relpath(dirpath, directory)
            prefix_name = package if rel == "." else f"{package}.{rel.replace(os.sep, '.')}"
            for filename in sorted(filenames):
                if filename.endswith(".py"):
                    stem = filename[:-3]
                    module = prefix_name if stem == "__init__" else f"{prefix_name}.{stem}"
                    follower.add(module, "<package>")
    files = []
    for name in sorted(follower.found):
        found = follower.found[name]
        entry: dict[str, object] = {"name": name, "kind": found.kind,
                                    "frozen": bool(_imp.is_frozen(name)), "host": None,
                                    "guest": None, "via": follower.via[name]}
        if found.host is not None:
            guest = _guest_path(found, lib, info, packages)
            entry["guest"] = guest
            if found.kind == "source":
                compiled = os.path.join(out_dir, guest.lstrip("/"))
                try:
                    os.makedirs(os.path.dirname(compiled), exist_ok=True)
                    if name.split(".")[0] in packages:
                        compile_package_module(found.host, compiled, guest[:-1], optimize)
                    else:
                        py_compile.compile(
                            found.host, cfile=compiled, dfile=guest[:-1], doraise=True,
                            optimize=optimize,
                            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
                except (SyntaxError, ValueError, py_compile.PyCompileError) as exc:
                    raise Unreadable(f"cannot compile {found.host} with Python "
                                     f"{sys.version.split()[0]}: {exc}") from None
                except OSError as exc:
                    if not os.access(found.host, os.R_OK):
                        raise
                    # Python 3.13 reports a short write of the .pyc as an OSError
                    # without errno; on a regular file a short write means the file
                    # system is full.
                    code = exc.errno if exc.errno is not None else errno.ENOSPC
                    return {"write_error": {"errno": code, "path": compiled}}
                entry["host"] = compiled
            else:
                entry["host"] = found.host
        files.append(entry)
    return {"facts": info, "files": files, "missing": follower.missing}


def _guest_path(found: _Found, lib: str, info: dict[str, object],
                packages: dict[str, str]) -> str:
    assert found.host is not None
    host = os.path.realpath(found.host)
    if found.kind == "extension":
        return f"{lib}/lib-dynload/{os.path.basename(host)}"
    top = found.name.split(".")[0]
    if top in packages:
        base = os.path.dirname(os.path.realpath(packages[top]))
    else:
        base = str(info["stdlib"])
    rel = os.path.relpath(host, base)
    if rel.startswith(".."):
        raise ValueError(f"module {found.name} at {host} is outside {base}")
    if found.kind == "source":
        rel = rel[:-3] + ".pyc"  # sourceless: NAME.pyc next to where NAME.py would be
    return f"{lib}/{rel}"


def main() -> None:
    if sys.version_info < (3, 10) or sys.implementation.name != "cpython":
        found = f"{sys.implementation.name} {sys.version.split()[0]}"
        json.dump({"error": f"it is {found}; the guest init needs CPython 3.10 or newer"},
                  sys.stdout)
        return
    json.dump(follow(json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()
