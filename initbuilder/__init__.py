"""initbuilder: build deterministic cpio initrds (host side, no VM knowledge)."""

from __future__ import annotations

__version__ = "0.1.0"
