"""Which process made a temporary file or directory, and whether it still runs.

A pid alone is reused; a pid with the process's start time (field 22 of
/proc/PID/stat, clock ticks since boot) names one process for the whole boot. Leftovers
of a process that is gone (killed with SIGKILL: nothing else leaves them) may be
removed; anything whose owner cannot be shown to be gone is kept.
"""

from __future__ import annotations

import os


class Owner:
    """A process named by its pid and its start time. (A plain class, not a dataclass:
    hostrun imports this before it starts the VMM, and making a dataclass costs ~0.5 ms.)"""

    __slots__ = ("pid", "start")

    def __init__(self, pid: int, start: int) -> None:
        self.pid = pid
        self.start = start

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Owner) and (self.pid, self.start) == (other.pid, other.start)

    def __hash__(self) -> int:
        return hash((self.pid, self.start))

    def __repr__(self) -> str:
        return f"Owner(pid={self.pid}, start={self.start})"

    @classmethod
    def current(cls) -> Owner:
        """This process (looked up once per pid, so a forked child gets its own)."""
        pid = os.getpid()
        if _current and _current[0].pid == pid:
            return _current[0]
        start = start_time(pid)
        me = cls(pid, start if start is not None else 0)
        _current[:] = [me]
        return me

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner written as ``str(owner)`` ("PID-START"), or None."""
        pid, sep, start = text.strip().partition("-")
        if not (sep and pid.isdigit() and start.isdigit()):
            return None
        return cls(int(pid), int(start))

    def __str__(self) -> str:
        return f"{self.pid}-{self.start}"

    def gone(self) -> bool:
        """True only if this process has certainly exited: no such pid, or the pid now
        belongs to a process started at another time. Unknown means alive."""
        if self.pid == os.getpid():
            return self != Owner.current()
        now = start_time(self.pid)
        if now is None:
            return _proc_works()
        return now != self.start


_current: list[Owner] = []


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


def _proc_works() -> bool:
    """Whether /proc shows this process (if not, nobody's death can be proven)."""
    return start_time(os.getpid()) is not None
