"""A directory tree seen as "/" (a sysroot, a chroot): guest paths to host paths.

Inside a sysroot an absolute symlink such as ``/usr/lib64/libz.so.1 -> /usr/lib64/libz.so.1.3``
must resolve inside the tree, not on the host, which plain ``open()`` would do. For the
host itself (root "/") every operation is the plain system call.
"""

from __future__ import annotations

import os
import posixpath
import stat

from initbuilder.linklimit import MAX_LINK_HOPS
from initkit.errors import InitkitError


class Sysroot:
    """Maps absolute guest paths to host paths, following symlinks inside the tree."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        text = os.path.abspath(os.fspath(root)) if root is not None else "/"
        if not os.path.isdir(text):
            raise InitkitError(f"--root {text}: not a directory; give the top of a sysroot tree")
        self.root = text
        self.is_host = text == "/"
        self._dirs: dict[str, str] = {"/": "/"}  # guest dir -> its symlink-free guest path

    def __repr__(self) -> str:
        return f"Sysroot({self.root!r})"

    def host(self, path: str) -> str:
        """Host path of the absolute guest ``path``, symlinks resolved inside the tree."""
        if self.is_host:
            return path
        return self.root + self.resolve(path) if path != "/" else self.root

    def host_literal(self, path: str) -> str:
        """Host path of an already symlink-free guest path (no lookups)."""
        return path if self.is_host else self.root.rstrip("/") + path

    def resolve(self, path: str) -> str:
        """Symlink-free absolute guest path of ``path`` (missing components kept as given)."""
        if self.is_host:
            return os.path.realpath(path)
        head, tail = posixpath.split(posixpath.join("/", path))
        parent = self._resolve_dir(head, 0)
        return self._follow(parent, tail, 0)

    def guest(self, host_path: str) -> str | None:
        """The guest path of a host path under this root, or None when it is outside."""
        if self.is_host:
            return host_path
        prefix = self.root.rstrip("/")
        if host_path == prefix:
            return "/"
        if host_path.startswith(prefix + "/"):
            return host_path[len(prefix):]
        return None

    def _resolve_dir(self, path: str, hops: int) -> str:
        done = self._dirs.get(path)
        if done is not None:
            return done
        head, tail = posixpath.split(path)
        parent = self._resolve_dir(head, hops)
        result = self._follow(parent, tail, hops)
        self._dirs[path] = result
        return result

    def _follow(self, parent: str, name: str, hops: int) -> str:
        if name in ("", "."):
            return parent
        if name == "..":
            return posixpath.dirname(parent)
        candidate = posixpath.join(parent, name)
        try:
            st = os.lstat(self.root + candidate)
        except OSError:
            return candidate
        if not stat.S_ISLNK(st.st_mode):
            return candidate
        if hops >= MAX_LINK_HOPS:
            raise InitkitError(f"{self.root}: {candidate}: too many levels of symbolic links")
        target = os.readlink(self.root + candidate)
        base = "/" if target.startswith("/") else parent
        # Walk the target component by component: ".." must apply after symlinks.
        current = base
        for part in target.split("/"):
            current = self._follow(current, part, hops + 1)
        return current
