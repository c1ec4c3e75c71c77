"""The one exception type for errors a user can cause, and the way inputs become one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

USER_ERROR_EXIT = 2  # the exit status of front ends for an InitkitError


class InitkitError(Exception):
    """A mistake in the user's input or environment.

    The message names the input and says what to do; front ends print it on one
    line without a traceback and exit with status 2. Bugs raise anything else.
    """


@contextmanager
def reading(path: str | os.PathLike[str], what: str = "") -> Iterator[None]:
    """Turn the OSError of opening or reading an input into an InitkitError that names
    it (``what`` says what the input is: "kernel image", "kernel module", ...)."""
    label = f"{what} {os.fspath(path)}" if what else os.fspath(path)
    try:
        yield
    except FileNotFoundError:
        raise InitkitError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise InitkitError(f"{label}: is a directory where a file is expected") from None
    except PermissionError:
        raise InitkitError(f"{label}: permission denied") from None
    except OSError as exc:
        raise InitkitError(f"{label}: {exc.strerror or exc}") from None
