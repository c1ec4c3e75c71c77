"""The one exception type for errors a user can cause."""

from __future__ import annotations


class InitkitError(Exception):
    """A mistake in the user's input or environment.

    The message names the input and says what to do; front ends print it on one
    line without a traceback and exit with status 2. Bugs raise anything else.
    """
