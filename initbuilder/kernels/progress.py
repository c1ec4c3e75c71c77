"""Progress of a kernel build from kbuild's quiet lines ("  CC      kernel/fork.o"):
the phase it is in and a count of objects, against the largest count a build of this
object tree has had (a whole build's).

A build takes minutes, so its user is told what is happening; every line make prints is
also kept in a log file in the object tree, which a failure's message names.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

_QUIET = re.compile(r"^\s+([A-Z][A-Z0-9_]*(?: \[M\])?)\s+(\S+)")
_OBJECT_TAGS = {"CC", "AS", "CC [M]"}
_LINK_TAGS = {"KSYMS", "SORTTAB", "SYSMAP", "KSYMS [M]"}
_ORDER = ("compile", "link", "bzImage", "modules")
REPORT_EVERY = 20.0  # seconds between count lines within a phase


def phase_of(tag: str, target: str) -> str | None:
    """The phase a kbuild line belongs to, or None when it says nothing new."""
    if tag.endswith("[M]") or tag == "MODPOST":
        return "modules"
    if target.startswith("arch/x86/boot/"):
        return "bzImage"
    if tag in _LINK_TAGS or (tag == "LD" and target.startswith(".tmp_vmlinux")) or \
            (tag == "LD" and target == "vmlinux"):
        return "link"
    if tag in _OBJECT_TAGS or tag in {"AR", "LD", "HOSTCC", "HOSTLD", "GEN", "UPD"}:
        return "compile"
    return None


class BuildProgress:
    """Turns make's lines into a few progress lines for ``report``."""

    def __init__(self, report: Callable[[str], None], objects: Path, show_make: bool) -> None:
        self.report = report
        self.show_make = show_make
        self.log_path = objects / "initkit-build.log"
        self._count_path = objects / ".initkit-object-count"
        self._log: TextIO | None = None
        self.objects = 0
        self.current = ""
        self.started = time.monotonic()
        self._last_report = self.started
        try:
            self.goal: int | None = int(self._count_path.read_text())
        except (OSError, ValueError):
            self.goal = None

    def phase(self, name: str) -> None:
        """Enter a phase and say so."""
        if name != self.current:
            self.current = name
            self._say(f"kernel build: {name}")

    def line(self, text: str) -> None:
        """One line of make's output."""
        if self._log is None:
            self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in finish()
        self._log.write(text + "\n")
        if self.show_make:
            self.report(text)
        match = _QUIET.match(text)
        if match is None:
            return
        tag, target = match.groups()
        if tag in _OBJECT_TAGS:
            self.objects += 1
        phase = phase_of(tag, target)
        # Phases only move forward (make -j interleaves a little); configure's own host
        # programs are not the compile phase.
        if phase is not None and self.current in _ORDER and \
                _ORDER.index(phase) > _ORDER.index(self.current):
            self.phase(phase)
        elif time.monotonic() - self._last_report >= REPORT_EVERY:
            self._say(f"kernel build: {self.current}: {self._count()}")

    def finish(self) -> None:
        """The build went through: remember its object count for the next one's goal."""
        if self._log is not None:
            self._log.close()
        if self.objects > (self.goal or 0):
            # The largest count seen is a whole build's: an upper bound for the next one,
            # which may rebuild only part (kbuild's own dependency tracking decides).
            self._count_path.write_text(f"{self.objects}\n")
        self._say(f"kernel build: done, {self._count()}")

    def _count(self) -> str:
        goal = f" of at most ~{self.goal}" if self.goal else ""
        took = time.monotonic() - self.started
        return f"{self.objects} objects{goal}, {int(took // 60)}m{int(took % 60):02d}s"

    def _say(self, text: str) -> None:
        self._last_report = time.monotonic()
        if not self.show_make:
            self.report(text)
