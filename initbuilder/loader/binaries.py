"""Putting programs into an Image: the file, its interpreter and its whole closure.

Every file lands at the path the loader opens it by, and every symlink met on the way
is kept as a symlink (with what it points to), so the guest loader walks the same
paths the host one does. Shebang scripts bring their interpreter (and, for
``#!/usr/bin/env NAME``, NAME). Files from /nix/store are relocated (initbuilder.loader.nixstore).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import stat
from collections.abc import Sequence
from pathlib import Path

from initbuilder.errors import InitkitError
from initbuilder.image import Image, Kind
from initbuilder.loader.closure import Resolver
from initbuilder.loader.elf import is_elf
from initbuilder.loader.linkmap import Closure, LoadedObject
from initbuilder.loader.nixstore import StoreRelocation, rewritten_copy

log = logging.getLogger("initkit.closure")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_LINK_HOPS = 40
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
        self._done: dict[str, str] = {}  # guest path walked -> image path of the file

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
        self.add_path(closure.main.path or closure.file, why or closure.file)
        for obj in closure.objects()[1:]:
            assert obj.path is not None
            self.add_path(obj.path, obj.rule)
            if obj.baseline:
                self.add_path(obj.baseline, "baseline copy of a glibc-hwcaps library")
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
            self.add_directory_path(directory, "default library directory")
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
    def add_path(self, guest: str, why: str = "") -> str:
        """Add the file at ``guest`` at the same path, recreating each symlink met on the
        way (in directories and at the end) and adding what it points to; return the
        image path of the final regular file."""
        if not guest.startswith("/"):
            guest = os.path.abspath(guest) if self.root.is_host else "/" + guest
        done = self._done.get(guest)
        if done is None:
            host_at, image_at = self._walk(guest, why)
            done = self._add_regular(host_at, image_at, guest, why)
            self._done[guest] = done
        return done

    def add_directory_path(self, guest: str, why: str = "") -> str:
        """Make directory ``guest`` exist in the image the way it exists in the tree."""
        _, image_at = self._walk(guest, why)
        return self.image.add_directory(self.relocation.relocate(image_at), source=why,
                                        weak=True)

    def _walk(self, guest: str, why: str) -> tuple[str, str]:
        """Follow ``guest`` in the tree, adding each symlink on the way; return the
        symlink-free tree path and where the entry goes in the image."""
        parts = [p for p in guest.split("/") if p]
        host_at = "/"  # symlink-free path in the tree
        image_at: str | None = "/"  # where entries go in the image, while in step
        literal: str | None = None  # the image keeps a directory where the tree has a link
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                host_at = posixpath.dirname(host_at)
                image_at = posixpath.dirname(image_at) if image_at else None
                continue
            host_next = posixpath.join(host_at, part)
            try:
                st = os.lstat(self.root.host_literal(host_next))
            except OSError as exc:
                raise InitkitError(f"{guest}: cannot add it: {host_next} "
                                   f"({exc.strerror})") from None
            if not stat.S_ISLNK(st.st_mode):
                host_at = host_next
                image_at = posixpath.join(image_at, part) if image_at else None
                continue
            hops += 1
            if hops > _MAX_LINK_HOPS:
                raise InitkitError(f"{guest}: too many levels of symbolic links")
            target = os.readlink(self.root.host_literal(host_next))
            if image_at is not None:
                link_at = posixpath.join(image_at, part)
                if self._keeps_directory(link_at):
                    # Put the entry below the image's directory, under the same names.
                    literal = posixpath.normpath(posixpath.join(link_at, *parts))
                    image_at = None
                else:
                    text = self.relocation.link_target(link_at, target)
                    self.image.add_symlink(self.relocation.relocate(link_at), text,
                                           source=why or guest)
            parts = [p for p in target.split("/") if p] + parts
            host_at = "/" if target.startswith("/") else host_at
            image_at = host_at if image_at is not None else None
        return host_at, image_at if image_at is not None else str(literal)

    def _keeps_directory(self, image_path: str) -> bool:
        rel = image_path.lstrip("/")
        entry = self.image.get(self.image.resolve(rel)) if rel else None
        if entry is None or entry.kind is not Kind.DIR:
            return False
        return not entry.weak or self._has_children(rel)

    def _has_children(self, rel: str) -> bool:
        prefix = rel + "/"
        return any(path.startswith(prefix) for path, _ in self.image.items())

    def _add_regular(self, host_at: str, image_at: str, guest: str, why: str) -> str:
        host = self.root.host_literal(host_at)
        st = os.stat(host)
        if not stat.S_ISREG(st.st_mode):
            raise InitkitError(f"{guest}: {host_at} is not a regular file")
        dest = self.relocation.relocate(image_at)
        rewritten = self._rewrite(host, host_at)
        source = f"closure: {why}" if why else "closure"
        if rewritten is not None:
            self.image.add_file(dest, host=rewritten, mode=stat.S_IMODE(st.st_mode),
                                source=f"{source} ({host_at}, store paths relocated)")
        else:
            self.image.add_file(dest, host=host, source=f"{source} ({host_at})")
        log.info("added %s%s", dest, f" ({why})" if why else "")
        return dest

    def _rewrite(self, host: str, host_at: str) -> os.PathLike[str] | None:
        """A copy with store paths relocated, when the loader would read any."""
        probe = self.resolver.tree.probe(host_at) if not self.root.is_host else \
            self.resolver.tree.probe(host)
        with open(host, "rb") as f:
            head = f.read(_SHEBANG_MAX)
            if head.startswith(b"#!"):
                end = head.find(b"\n")
                ranges = [(0, end if end >= 0 else len(head))]
            elif probe is not None and probe.info is not None:
                ranges = [r for r in (probe.info.interp_range, probe.info.dynstr_range) if r]
            else:
                return None
            chunks = []
            for offset, size in ranges:
                f.seek(offset)
                chunks.append(f.read(size))
        if not any(self.relocation.mentions_store(c) for c in chunks):
            return None
        with open(host, "rb") as f:
            data = f.read()
        new = self.relocation.rewrite(data, ranges)
        return rewritten_copy(new, host) if new is not None else None


def _env_program(interpreter: str, argument: str) -> str | None:
    """For ``#!/usr/bin/env [-S] NAME ...`` the NAME env will look up on PATH."""
    if posixpath.basename(interpreter) != "env" or not argument:
        return None
    words = argument.split()
    while words and (words[0].startswith("-") or "=" in words[0]):
        words.pop(0)
    return words[0] if words and "/" not in words[0] else None
