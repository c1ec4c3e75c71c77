"""What the console scripts' entry points share: each loads its CLI under a guard
(hostrun/program.py, initbuilder/program.py).

A Ctrl-C that lands while the interpreter is still importing a command's modules (click,
the loader, hostrun's session: tens of milliseconds) raises KeyboardInterrupt outside
anything of the command's own, and Python would print a traceback. Here it ends the
program as an interrupt does later: one line and exit 130. (A SIGTERM then needs nothing:
its default action ends the process, which a shell reports as 143.) Nothing but the
standard library is imported before the guard.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


def launch(name: str, load: Callable[[], Callable[[], object]]) -> None:
    """Run what ``load()`` returns; a KeyboardInterrupt while loading it is one line."""
    try:
        target = load()
    except KeyboardInterrupt:
        try:
            sys.stderr.write(f"{name}: interrupted\n")
            sys.stderr.flush()
        finally:
            os._exit(INTERRUPTED_EXIT)
    target()
