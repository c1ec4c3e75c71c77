"""Where initkit keeps what it can reuse between runs (kernels, vmlinux, initrds)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """$INITKIT_CACHE, else $XDG_CACHE_HOME/initkit, else ~/.cache/initkit; created 0700."""
    root = os.environ.get("INITKIT_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "initkit")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
