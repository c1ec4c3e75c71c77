"""hostrun's private directory: one per run, 0700, for the daemon's socket and the logs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from initkit.errors import writing
from initkit.files import TMPDIR_ELSEWHERE

PREFIX = "hostrun-"
# sun_path holds 107 bytes and a NUL; the socket is <base>/hostrun-XXXXXXXX/virtiofs.sock.
_SOCKET_ROOM = 107 - len("/hostrun-12345678/virtiofs.sock")


def base_dir() -> str:
    """Where private directories go: $TMPDIR (tempfile's choice), or /tmp when that is
    too long for a socket path under it."""
    base = tempfile.gettempdir()
    return base if len(os.fsencode(base)) <= _SOCKET_ROOM else "/tmp"


def private_dir() -> Path:
    """A fresh 0700 directory for the socket and logs."""
    base = base_dir()
    with writing(base, "make hostrun's private directory in", instead=TMPDIR_ELSEWHERE):
        return Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
