"""The guest's serial console as the user sees it, and the exit status it carries.

Two jobs on one byte stream. ``StatusScanner`` reads the raw stream for the guest's
status record (``initkit-status:<nonce>:exit=N`` or ``:signal=N``, guest/contract.py) and for a
kernel panic; it never misses either, whatever the display does. ``ConsoleFilter``
decides what the user sees: it streams bytes as they come, holding back only the start
of a line that may still turn out to be a kernel message (``[    1.234567] ...``,
hidden unless verbose) or the status line (always hidden), and releases a held start
after a short idle time so a prompt is never stuck.
"""

from __future__ import annotations

import re

from guest import contract
from guest.contract import ExitStatus

_PANIC = re.compile(rb"Kernel panic - not syncing:[^\r\n]*")
_INIT_STARTED = re.compile(rb"Run \S+ as init process")
_MAX_SCAN_TAIL = 4096  # bytes kept between feeds to match a line split across reads
_MAX_RECORD = 64  # a record's text after its marker is a few bytes ("signal=15\r")


class StatusScanner:
    """Finds the guest's records (guest/contract.py) and kernel panics in the raw
    console stream."""

    def __init__(self, nonce: str) -> None:
        self._marker = contract.record_marker(nonce)
        self._tail = b""
        self.status: ExitStatus | None = None
        self.panic: str | None = None
        self.init_started = False
        self.ready = False  # the guest's action is about to start: input is safe to send

    def feed(self, data: bytes) -> None:
        buf = self._tail + data
        if self.status is None or not self.ready:
            self._records(buf)
        if self.panic is None:
            found = _PANIC.search(buf)
            # Only take the panic line once it is complete, for a whole message.
            if found is not None and buf.find(b"\n", found.end()) != -1:
                self.panic = found.group(0).decode(errors="replace").strip()
        if not self.init_started and _INIT_STARTED.search(buf):
            self.init_started = True
        self._tail = buf[-_MAX_SCAN_TAIL:]

    def _records(self, buf: bytes) -> None:
        """Read every complete record in ``buf``; the guest's parser decides the status."""
        start = buf.find(self._marker)
        while start != -1:
            begin = start + len(self._marker)
            end = buf.find(b"\n", begin, begin + _MAX_RECORD)
            if end == -1:
                start = buf.find(self._marker, begin)
                continue
            payload = buf[begin:end].removesuffix(b"\r").decode("ascii", "replace")
            if payload == contract.READY:
                self.ready = True
            elif self.status is None:
                self.status = contract.parse_status(payload)
            start = buf.find(self._marker, end)


_STAMP = re.compile(rb"\[ *\d+\.\d+\]")
_STAMP_PREFIX = re.compile(rb"\[ *(?:\d+(?:\.\d*)?)?\Z")


def _kernel_prefix_state(held: bytes) -> str:
    """Classify a line start against the kernel's ``[ secs.usecs] `` timestamp:
    "no" (cannot be one), "maybe" (a prefix of one) or "yes" (a complete one)."""
    if _STAMP.match(held):
        return "yes"
    return "maybe" if _STAMP_PREFIX.match(held) else "no"


class ConsoleFilter:
    """Turns the raw console stream into what the user sees, live.

    Works on lines. A line's start is held until it can be told apart from a kernel
    message (hidden unless ``show_kernel``) and from the status record, which is hidden
    with the newline just before it (the guest writes "\\n" + record + "\\n", so the
    user gets exactly the program's bytes). A shown line's newline is therefore held
    until the next line shows it is not the record's. ``crlf`` turns the tty's "\\r\\n"
    into "\\n" (off in --shell mode, where the host terminal is raw).
    """

    def __init__(self, nonce: str, *, show_kernel: bool = False, crlf: bool = True) -> None:
        self._marker = contract.record_marker(nonce)
        self._show_kernel = show_kernel
        self._crlf = crlf
        self._held = b""  # start of the current line, not yet classified
        self._mode = "start"  # start: classifying | pass: showing | drop: hiding
        self._newline = b""  # the last shown line's newline, not yet shown
        self._cr = False  # a "\\r" ended the last input: maybe half of "\\r\\n"
        self.userspace_output = False  # a byte that is no kernel message has arrived

    @property
    def holding(self) -> bool:
        """True while bytes wait for more input to be classified."""
        return bool(self._held or self._newline or self._cr)

    def feed(self, data: bytes) -> bytes:
        """Take raw console bytes; return the bytes to show now."""
        out: list[bytes] = []
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._cr = True
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            end = len(data) if nl == -1 else nl + 1
            self._segment(data[pos:end], nl != -1, out)
            pos = end
        return b"".join(out)

    def flush(self, *, final: bool = False) -> bytes:
        """Show what is held (on idle in a terminal, and with ``final`` at the end),
        except what turns out to be hidden."""
        out: list[bytes] = []
        if self._held:
            held, self._held = self._held, b""
            self._mode = "start"
            self._segment(held, False, out, complete=True)
        if self._newline:
            out.append(self._newline_bytes())
            self._newline = b""
        if self._cr and (final or self._mode == "pass"):
            out.append(b"\r")
            self._cr = False
        return b"".join(out)

    def _segment(self, seg: bytes, has_nl: bool, out: list[bytes], *,
                 complete: bool = False) -> None:
        """One piece of a line, ending with its newline when ``has_nl``."""
        text, newline = _split_newline(seg) if has_nl else (seg, b"")
        if self._mode == "pass":
            cut = text.find(self._marker)
            if cut != -1:  # a record on an unfinished line: hide it all the same
                out.append(text[:cut])
                self._mode = "start" if has_nl else "drop"
                return
            out.append(text)
            self._end_line(newline, has_nl)
            return
        if self._mode == "drop":
            if has_nl:
                self._mode = "start"
            return
        self._held += seg
        verdict = self._classify(self._held, complete=has_nl or complete)
        if verdict == "hold":
            return
        held, self._held = self._held, b""
        text, newline = _split_newline(held) if has_nl else (held, b"")
        if verdict == "record":
            self._newline = b""  # the record's own leading newline
            self._mode = "start" if has_nl else "drop"
        elif verdict == "hide":
            self._mode = "start" if has_nl else "drop"
        else:
            if self._newline:
                out.append(self._newline_bytes())
                self._newline = b""
            out.append(text)
            self._mode = "pass"
            self._end_line(newline, has_nl)

    def _end_line(self, newline: bytes, has_nl: bool) -> None:
        if has_nl:
            self._newline = newline
            self._mode = "start"

    def _newline_bytes(self) -> bytes:
        return b"\n" if self._crlf else self._newline

    def _classify(self, held: bytes, *, complete: bool) -> str:
        """"show", "hide" (kernel message), "record" or "hold" (cannot tell yet) for a
        line start; ``complete`` means no more bytes of this line will come."""
        if held.startswith(self._marker):
            return "record"
        if not complete and self._marker.startswith(held):
            return "hold"
        kernel = _kernel_prefix_state(held)
        if kernel == "yes":
            return "show" if self._show_kernel else "hide"
        if kernel == "maybe" and not complete:
            return "hold"
        if held.strip(b"\r\n"):
            self.userspace_output = True
        return "show"


def _split_newline(seg: bytes) -> tuple[bytes, bytes]:
    """A line's text and its newline ("\\r\\n" or "\\n")."""
    if seg.endswith(b"\r\n"):
        return seg[:-2], b"\r\n"
    return seg[:-1], b"\n"
