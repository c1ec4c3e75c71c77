"""The exit-status record the guest prints on the console for the host (docs/guest.md).

The record is ``\\ninitkit-status:<nonce>:exit=<N>\\n`` or ``...:signal=<N>\\n``;
``...:ready`` says the action is about to start (the host may send input from then on). The
leading newline puts it at the start of a line whatever the program printed last;
a host that hides the record removes both newlines with it and shows exactly the
program's bytes. The nonce comes from ``initkit.nonce=`` (16 hex digits), so output
that merely looks like a record, from another run, never matches.
"""

from __future__ import annotations

import posix  # not os: importing it costs every boot (guest/system.py)

PREFIX = "initkit-status"
NONCE_KEY = "initkit.nonce"
NO_NONCE = "none"
NONCE_LENGTH = 16
READY = "ready"
NOECHO_KEY = "initkit.noecho"  # the host's input is a pipe: the console must not echo it
_HEX = frozenset("0123456789abcdefABCDEF")

# Statuses the init reports itself, after shell conventions.
USAGE = 2  # the command line asks for nothing, or for something malformed
INIT_FAILED = 125  # the init could not prepare the action (a required mount, a bug)
NOT_EXECUTABLE = 126  # the program exists but exec() refused it
NOT_FOUND = 127  # no such program (or its ELF/#! interpreter is missing)


class ExitStatus:
    """How the action ended: ``exit`` with a code 0..255, or ``signal`` with its number."""

    __slots__ = ("kind", "number")

    def __init__(self, kind: str, number: int) -> None:
        if kind not in ("exit", "signal") or not 0 <= number <= 255:
            raise ValueError(f"invalid exit status {kind}={number}")
        self.kind = kind
        self.number = number

    @classmethod
    def exited(cls, code: int) -> ExitStatus:
        return cls("exit", code)

    @classmethod
    def killed(cls, signum: int) -> ExitStatus:
        return cls("signal", signum)

    @classmethod
    def from_wait(cls, status: int) -> ExitStatus:
        """Decode a waitpid() status of a child that has ended."""
        if posix.WIFSIGNALED(status):
            return cls.killed(posix.WTERMSIG(status))
        return cls.exited(posix.WEXITSTATUS(status))

    @property
    def success(self) -> bool:
        return self.kind == "exit" and self.number == 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExitStatus) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        return f"{self.kind}={self.number}"

    def __repr__(self) -> str:
        return f"ExitStatus({self.kind!r}, {self.number})"


def valid_nonce(text: str | None) -> bool:
    """True for exactly 16 hexadecimal digits."""
    return text is not None and len(text) == NONCE_LENGTH and all(c in _HEX for c in text)


def record(nonce: str, status: ExitStatus) -> bytes:
    """The bytes the guest writes to the console after the action."""
    return f"\n{PREFIX}:{nonce}:{status}\n".encode()


def ready_record(nonce: str) -> bytes:
    """The bytes the guest writes to the console right before the action starts: the
    host holds the user's input until then, because the serial port drops what arrives
    before the console is open and a program may read before it prints anything."""
    return f"\n{PREFIX}:{nonce}:{READY}\n".encode()


def parse_line(line: str, nonce: str) -> ExitStatus | None:
    """The status in one console line (trailing CR/LF allowed) for ``nonce``, else None."""
    text = line.rstrip("\r\n")
    head = f"{PREFIX}:{nonce}:"
    if not text.startswith(head):
        return None
    kind, sep, number = text[len(head):].partition("=")
    digits = number.isascii() and number.isdigit() and len(number) <= 3
    if not sep or kind not in ("exit", "signal") or not digits:
        return None
    try:
        return ExitStatus(kind, int(number))
    except ValueError:
        return None
