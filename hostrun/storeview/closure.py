"""Which store paths the guest gets (the closure of the ones asked for) and where each one
comes from (the host store, else the first substituter that has it).

The references come from the Nix database when Nix is installed, the host store is the
database's and every path asked for is valid there (``nix-store --query --requisites``);
else, path by path, from a substituter's narinfo; else from scanning the path's bytes for
the hash parts of the host store's other paths (refscan.py, Nix's own rule; its limits
are documented there). A path found nowhere is an error naming it, who needs it, and
every place looked in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from hostrun.storeview.nixbase32 import HASH_CHARS, STORE_DIR, is_hash_part, is_store_name
from hostrun.storeview.refscan import scan_references
from hostrun.storeview.substituter import FileBinaryCache
from hostrun.storeview.view import StoreView, ViewEntry
from initkit import process
from initkit.errors import InitkitError

log = logging.getLogger("initkit.hostrun")


def resolve_closure(paths: Sequence[str], store: Path,
                    substituters: Sequence[str] = ()) -> StoreView:
    """The closure of ``paths`` (store paths, paths inside them, or links to them such as
    ``./result``), its paths taken from ``store`` or the ``substituters`` (file:// URLs),
    in that order."""
    caches = [FileBinaryCache(url) for url in substituters]
    if store.exists() and not store.is_dir():
        raise InitkitError(f"--store {store}: not a directory")
    roots = sorted({store_name_of(p, store) for p in paths})
    names = _from_nix_database(roots, store)
    if names is not None:
        return StoreView(tuple(ViewEntry(n, store / n, f"--store {store}") for n in names),
                         "nix database")
    return _Walk(store, caches).closure(roots)


def store_name_of(path: str, store: Path) -> str:
    """The base name of the store path that ``path`` is, is inside of, or links to."""
    current = path
    for _ in range(40):  # the kernel's own limit on links followed
        for prefix in (STORE_DIR, os.fspath(store), os.fspath(store.resolve())):
            if current.startswith(prefix.rstrip("/") + "/"):
                name = current[len(prefix.rstrip("/")) + 1:].split("/", 1)[0]
                if is_store_name(name):
                    return name
        if not os.path.islink(current):
            break
        current = os.path.join(os.path.dirname(current), os.readlink(current))
    raise InitkitError(f"--closure {path}: not a store path ({STORE_DIR}/<hash>-<name>), "
                       "a path inside one, nor a link to one (such as nix-build's ./result)")


def _from_nix_database(roots: list[str], store: Path) -> list[str] | None:
    """The closure as the Nix database records it, or None where it cannot say."""
    nix_store = shutil.which("nix-store")
    if nix_store is None or os.path.realpath(store) != STORE_DIR:
        return None
    if not all(os.path.lexists(store / r) for r in roots):
        return None
    proc = process.run([nix_store, "--query", "--requisites",
                        *(f"{STORE_DIR}/{r}" for r in roots)], check=False, timeout=120)
    if proc.returncode != 0:
        log.info("the Nix database does not know %s; using narinfo files and the reference "
                 "scanner", " ".join(roots))
        return None
    names = sorted({os.path.basename(line) for line in proc.stdout.decode().split()})
    missing = [n for n in names if not os.path.lexists(store / n)]
    if missing or not all(is_store_name(n) for n in names):
        return None  # a database out of step with the store: trust neither
    return names


class _Walk:
    """The closure found path by path: narinfo references, else the reference scanner."""

    def __init__(self, store: Path, caches: list[FileBinaryCache]) -> None:
        self.store = store
        self.caches = caches
        self._known: dict[bytes, str | None] | None = None
        self.methods: set[str] = set()

    def closure(self, roots: list[str]) -> StoreView:
        entries: dict[str, ViewEntry] = {}
        needed_by: dict[str, str] = {}
        queue = list(roots)
        while queue:
            name = queue.pop()
            if name in entries:
                continue
            entry, references = self._one(name, needed_by.get(name))
            entries[name] = entry
            for ref in references:
                if ref != name and ref not in entries:
                    needed_by.setdefault(ref, name)
                    queue.append(ref)
        how = ", ".join(sorted(self.methods)) or "nothing to resolve"
        log.info("closure of %s: %d paths (%s)", " ".join(roots), len(entries), how)
        return StoreView(tuple(entries[n] for n in sorted(entries)), how)

    def _one(self, name: str, needed_by: str | None) -> tuple[ViewEntry, list[str]]:
        host = self.store / name
        on_host = os.path.lexists(host)
        for cache in self.caches:
            info = cache.narinfo(name[:HASH_CHARS])
            if info is None:
                continue
            if info.store_name != name:
                raise InitkitError(f"{info.source}: describes /nix/store/{info.store_name}, "
                                   f"not /nix/store/{name}; refused")
            self.methods.add("narinfo references")
            if on_host:
                return ViewEntry(name, host, f"--store {self.store}"), list(info.references)
            return (ViewEntry(name, cache.fetch(info), f"--substituter {cache}"),
                    list(info.references))
        if on_host:
            self.methods.add("reference scan")
            found = scan_references(host, self._candidates())
            return ViewEntry(name, host, f"--store {self.store}"), self._names(found)
        looked = [f"--store {self.store}"
                  + ("" if self.store.is_dir() else " (no such directory)")]
        looked += [f"--substituter {c} (no {name[:HASH_CHARS]}.narinfo)" for c in self.caches]
        raise InitkitError(f"/nix/store/{name}"
                           + (f" (a reference of /nix/store/{needed_by})" if needed_by else "")
                           + f": not found; looked in {', '.join(looked)}"
                           + ("" if self.caches else "; add a --substituter that has it"))

    def _candidates(self) -> dict[bytes, str | None]:
        """Hash part → name (None: read its narinfo to learn it) of every store path the
        scanner can know: the host store's entries, then the substituters' narinfo files."""
        if self._known is None:
            known: dict[bytes, str | None] = {}
            for cache in reversed(self.caches):
                with contextlib.suppress(OSError):
                    known.update((n[:HASH_CHARS].encode(), None) for n in os.listdir(cache.root)
                                 if n.endswith(".narinfo") and is_hash_part(n[:HASH_CHARS]))
            names = os.listdir(self.store) if self.store.is_dir() else []
            known.update((n[:HASH_CHARS].encode(), n) for n in names if is_store_name(n))
            self._known = known
        return self._known

    def _names(self, hashes: set[bytes]) -> list[str]:
        known = self._candidates()
        names = []
        for digest in sorted(hashes):
            name = known[digest]
            if name is None:  # known by a narinfo file: its StorePath has the name
                infos = (c.narinfo(digest.decode()) for c in self.caches)
                info = next((i for i in infos if i is not None), None)
                if info is None:
                    continue  # the narinfo went away since the listing
                name = known[digest] = info.store_name
            names.append(name)
        return names
