"""Putting programs into an Image: the file, its interpreter and its whole closure.

Every file lands at the path the loader opens it by, and every symlink met on the way
is kept as a symlink (with what it points to), so the guest loader walks the same
paths the host one does (initbuilder.hostfiles walks them). Shebang scripts bring their
interpreter (and, for ``#!/usr/bin/env NAME``, NAME). Files from /nix/store are
relocated (initbuilder.loader.nixstore).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

from guest.contract import DEFAULT_PATH
from initbuilder.hostfiles import HostFiles
from initbuilder.image import Image, Kind
from initbuilder.loader.closure import Resolver
from initbuilder.loader.elf import ElfInfo, is_elf
from initbuilder.loader.linkmap import Closure, LoadedObject
from initbuilder.loader.nixstore import StoreRelocation
from initkit.errors import InitkitError

log = logging.getLogger("initkit.closure")

_MAX_INTERPRETER_DEPTH = 4  # the kernel's limit on nested #! interpreters
_SHEBANG_MAX = 256


def add_binaries(image: Image, names: Sequence[str], *, root: Path | None = None,
                 library_path: Sequence[str] = (), dlopen: str = "recommended",
                 allow_missing: bool = False) -> list[str]:
    """Add each binary (NAME looked up on PATH, PATH as is; shebang scripts with their
    interpreter; shared objects too) with its interpreter and closure to ``image``;
    return the guest paths to invoke them by, in order."""
    adder = BinaryAdder(image, Resolver(root, library_path, dlopen), allow_missing=allow_missing)
    return [adder.add(name) for name in names]


class BinaryAdder:
    """Adds programs and their closures to one Image, sharing one Resolver."""

    def __init__(self, image: Image, resolver: Resolver, *, allow_missing: bool = False,
                 relocation: StoreRelocation | None = None) -> None:
        self.image = image
        self.resolver = resolver
        self.root = resolver.root
        self.allow_missing = allow_missing
        self.relocation = relocation or StoreRelocation()
        self.files = HostFiles(image, self.root, self.relocation)

    # -- programs -------------------------------------------------------------------
    def add(self, name: str) -> str:
        """Add ``name`` (looked up on PATH without a slash) with everything it loads;
        return the guest path to invoke it by."""
        return self.add_program(self.locate(name), name, 0)

    def locate(self, name: str) -> str:
        """The guest path of a --binary argument: PATH as is, NAME from $PATH."""
        if not name:
            raise InitkitError("--binary needs a program name or path, got an empty value")
        if "/" in name:
            guest = self.resolver.guest_path(name)
            if not os.path.lexists(self.root.host(guest)):
                where = "" if self.root.is_host else f" in {self.root.root}"
                raise InitkitError(f"--binary {name}: no such file{where}")
            return guest
        search = os.environ.get("PATH", DEFAULT_PATH) if self.root.is_host else DEFAULT_PATH
        for directory in search.split(":"):
            if not directory.startswith("/"):
                continue  # a relative PATH entry means nothing inside the initrd
            guest = posixpath.join(directory, name)
            host = self.root.host(guest)
            if os.path.isfile(host) and os.access(host, os.X_OK):
                return guest
        raise InitkitError(f"--binary {name}: not found on PATH ({search}); "
                           "give its path instead")

    def add_program(self, guest: str, label: str, depth: int) -> str:
        """Add the program at ``guest`` (ELF, or a #! script); return its invocation path."""
        host = self.root.host(guest)
        try:
            with open(host, "rb") as f:
                head = f.read(_SHEBANG_MAX)
        except IsADirectoryError:
            raise InitkitError(f"--binary {label}: {guest} is a directory") from None
        except OSError as exc:
            raise InitkitError(f"--binary {label}: cannot read {guest} ({exc.strerror})") from None
        if head.startswith(b"#!"):
            return self._add_script(guest, head, label, depth)
        if not is_elf(head):
            raise InitkitError(f"--binary {label}: {guest} is neither an ELF file nor a "
                               "#! script; add data files with --file")
        closure = self.resolver.resolve(guest)
        self._report_missing(closure, label)
        self.add_closure(closure, f"--binary {label}")
        log.info("--binary %s: %s with %d libraries", label, guest, len(closure.libraries))
        # Invoked by the name it was asked for: argv[0] matters (busybox applets).
        return "/" + self.relocation.relocate(guest).lstrip("/")

    def add_closure(self, closure: Closure, why: str = "") -> None:
        """Add every file of a resolved closure at the paths the loader opens."""
        self.add_path(closure.main.path or closure.file, why or closure.file,
                      elf=closure.main.info)
        for obj in closure.objects()[1:]:
            assert obj.path is not None
            self.add_path(obj.path, obj.rule, elf=obj.info)
            if obj.baseline:
                probe = self.resolver.tree.probe(obj.baseline)
                self.add_path(obj.baseline, "baseline copy of a glibc-hwcaps library",
                              elf=probe.info if probe is not None else None)
            if obj.kind in ("cache", "library_path"):
                self._default_dir_link(obj, closure.default_dirs)
        for unmet in closure.unmet:
            log.info("%s: dlopen feature %r (%s) unavailable: none of %s found",
                     unmet.owner.label, unmet.feature.feature, unmet.feature.priority,
                     ", ".join(unmet.feature.sonames))

    def _default_dir_link(self, obj: LoadedObject, default_dirs: tuple[str, ...]) -> None:
        """The initrd has neither an ld.so.cache nor LD_LIBRARY_PATH: a library found
        through them outside the default directories gets a symlink in the first one."""
        assert obj.path is not None
        name = obj.names[0]
        if not default_dirs or "/" in name or posixpath.dirname(obj.path) + "/" in default_dirs:
            return
        directory = default_dirs[0]
        # Not in the tree: then the link's parents are implied instead.
        with contextlib.suppress(InitkitError):
            self.files.add_directory(directory, "default library directory")
        link = directory + name
        existing = self.image.get(self.image.resolve(link.lstrip("/")))
        # As the loader spelled it: ".." must resolve after the symlinks, in the guest too.
        absolute = obj.path if obj.path.startswith("/") else os.path.abspath(obj.path)
        target = self.relocation.relocate(absolute)
        if existing is not None and not (existing.kind is Kind.SYMLINK
                                         and existing.target == target):
            log.warning("%s is already in the image (%s); the guest loader will take it "
                        "instead of %s", link, existing.describe(), obj.path)
            return
        self.image.add_symlink(link, target, source=f"found through {obj.rule}")
        log.info("added %s -> %s (found through %s)", link, target, obj.rule)

    def _report_missing(self, closure: Closure, label: str) -> None:
        for missing in closure.missing:
            text = (f"--binary {label}: {missing.name}: {missing.reason} "
                    f"(needed by {missing.chain()})")
            if not self.allow_missing:
                raise InitkitError(f"{text}; install it, name its directory with "
                                   "--library-path, or pass --allow-missing")
            log.warning("%s; continuing without it (--allow-missing)", text)

    def _add_script(self, guest: str, head: bytes, label: str, depth: int) -> str:
        if depth >= _MAX_INTERPRETER_DEPTH:
            raise InitkitError(f"--binary {label}: more than {_MAX_INTERPRETER_DEPTH} "
                               "nested #! interpreters")
        line = head[2:].split(b"\n", 1)[0].decode("utf-8", "surrogateescape").strip()
        interpreter, _, argument = line.partition(" ")
        interpreter = interpreter.split("\t", 1)[0]
        if not interpreter.startswith("/"):
            raise InitkitError(f"--binary {label}: {guest} names interpreter {interpreter!r}, "
                               "which is not an absolute path")
        self.add_path(guest, f"--binary {label} (#! script)")
        invoked = "/" + self.relocation.relocate(guest).lstrip("/")
        self.add_program(interpreter, f"{label} (#! interpreter)", depth + 1)
        program = _env_program(interpreter, argument.strip())
        if program is not None:
            try:
                self.add_program(self.locate(program), f"{label} (via env)", depth + 1)
            except InitkitError as exc:
                log.warning("%s: %s; the script will need it on the guest's PATH", label, exc)
        return invoked

    # -- files, keeping symlinks ----------------------------------------------------
    def add_path(self, guest: str, why: str = "", *, elf: ElfInfo | None = None) -> str:
        """Add the file at ``guest`` at the same path, recreating each symlink met on the
        way and adding what it points to; return the image path of the final regular
        file. ``elf``: its ELF facts, for relocating the store paths the loader reads."""
        return self.files.add(guest, f"closure: {why}" if why else "closure", elf=elf)


def _env_program(interpreter: str, argument: str) -> str | None:
    """For ``#!/usr/bin/env [-S] NAME ...`` the NAME env will look up on PATH."""
    if posixpath.basename(interpreter) != "env" or not argument:
        return None
    words = argument.split()
    while words and (words[0].startswith("-") or "=" in words[0]):
        words.pop(0)
    return words[0] if words and "/" not in words[0] else None
