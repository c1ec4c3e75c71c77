"""initkit's guest init: PID 1 of the VM (standard library only; see docs/guest.md)."""

from __future__ import annotations
