"""The user's input to the guest console: held until the guest's tty is up, then relayed.

The guest's serial port drops what arrives before its tty is opened (the kernel clears
the UART's FIFO then), so nothing is sent until the guest shows signs of userspace. When
the input ends, ^D follows, which the guest tty turns into end-of-file for the program.
"""

from __future__ import annotations

import os
import selectors

ESCAPE = 0x1D  # Ctrl-]: leaves an interactive session (like telnet); ^C goes to the guest
EOF_CHAR = b"\x04"
BUFFER = 1 << 16  # bytes queued for a guest that does not read yet


def read_some(fd: int) -> bytes | None:
    """Bytes read, b"" at end of file, None when nothing is there after all."""
    try:
        return os.read(fd, 65536)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


class InputRelay:
    """Moves bytes from ``source`` (an fd, fixed bytes, or None) to the guest's console
    fd ``to_guest`` (non-blocking) through ``selector``, keys "input" and "to_guest"."""

    def __init__(self, selector: selectors.BaseSelector, source: int | bytes | None,
                 to_guest: int, *, interactive: bool) -> None:
        self.sel = selector
        self.to_guest = to_guest
        self.interactive = interactive
        self.pending = bytearray()
        self.fd: int | None = source if isinstance(source, int) else None
        self.open = self.fd is not None  # more input may come from self.fd
        if isinstance(source, bytes):
            self.pending += source + EOF_CHAR
        self.gate = False
        self.escaped = False  # the user typed Ctrl-] (interactive only)
        self._pollable = True
        self._reading = False
        self._writing = False
        os.set_blocking(to_guest, False)

    def update(self, guest_alive: bool) -> None:
        """Call once per loop turn: (un)subscribe to what can move now."""
        want = self.gate and self.open and len(self.pending) < BUFFER
        if want and self._pollable and not self._reading:
            assert self.fd is not None
            try:
                self.sel.register(self.fd, selectors.EVENT_READ, "input")
                self._reading = True
            except PermissionError:  # epoll refuses regular files and /dev/null
                self._pollable = False
        if want and not self._pollable:
            assert self.fd is not None
            self._take(read_some(self.fd))  # a file or /dev/null: reading never blocks
        elif not want:
            self._stop_reading()
        if self.gate and self.pending and guest_alive and not self._writing:
            self.sel.register(self.to_guest, selectors.EVENT_WRITE, "to_guest")
            self._writing = True

    @property
    def busy(self) -> bool:
        """True if unpollable input is left to read: the loop must not sleep."""
        return self.gate and self.open and not self._pollable and len(self.pending) < BUFFER

    def readable(self) -> None:
        """The source has bytes (selector key "input")."""
        assert self.fd is not None
        self._take(read_some(self.fd))

    def writable(self) -> None:
        """The guest console takes bytes (selector key "to_guest")."""
        try:
            del self.pending[: os.write(self.to_guest, self.pending)]
        except BlockingIOError:
            return
        except BrokenPipeError:
            self.pending.clear()
        if not self.pending:
            self.sel.unregister(self.to_guest)
            self._writing = False

    def _take(self, data: bytes | None) -> None:
        if data is None:
            return
        if self.interactive and ESCAPE in data:
            self.escaped = True
            data = data[: data.index(ESCAPE)]
        self.pending += data
        if data and not self.escaped:
            return
        self.open = False
        self._stop_reading()
        if not self.interactive:
            self.pending += EOF_CHAR

    def _stop_reading(self) -> None:
        if self._reading:
            assert self.fd is not None
            self.sel.unregister(self.fd)
            self._reading = False
