"""Real parts the tests use: skip when one is missing here, fail when CI=true.

CI installs everything, so a missing part there is a broken install step, never a skip.
Importable from every test module (tests/ is on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest


def missing_part(reason: str) -> NoReturn:
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


def unpack_with_cpio(initrd: Path, into: Path) -> Path:
    """Unpack ``initrd`` (uncompressed newc) into the new directory ``into`` with GNU
    cpio: a reader independent of ours, which keeps hard links and modes. Returns ``into``."""
    cpio = need("cpio")
    into.mkdir()
    with initrd.open("rb") as stream:
        subprocess.run([cpio, "-idm", "--quiet", "--no-absolute-filenames"], stdin=stream,
                       cwd=into, check=True, capture_output=True, timeout=120)
    return into
