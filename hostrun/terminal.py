"""The user's terminal in raw mode for --shell, restored on every way out."""

from __future__ import annotations

import contextlib
import termios
import tty
from collections.abc import Iterator


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode (keys go to the guest as typed, ^C
    included) and restore its settings on exit; a no-op if ``fd`` is no terminal."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
