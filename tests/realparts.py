"""Real parts the tests use: skip when one is missing here, fail when CI=true.

CI installs everything, so a missing part there is a broken install step, never a skip.
Importable from every test module (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil

import pytest


def missing_part(reason: str) -> None:
    """Skip for a real part this machine lacks; under CI=true, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and a required part is missing: {reason}")
    pytest.skip(reason)


def need(*programs: str) -> str:
    """Each program must be on $PATH; returns the path of the last one."""
    found = ""
    for program in programs:
        found = shutil.which(program) or ""
        if not found:
            missing_part(f"{program} is not installed")
    return found
