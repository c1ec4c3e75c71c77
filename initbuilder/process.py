"""The one way initkit runs subprocesses: logged argv, clear errors."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from os import PathLike

from initbuilder.errors import InitkitError

log = logging.getLogger("initkit.process")

Arg = str | PathLike[str]


def run(
    argv: Sequence[Arg],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Arg | None = None,
    timeout: float | None = None,
    hint: str = "",
) -> subprocess.CompletedProcess[bytes]:
    """Run argv and return the finished process; raise InitkitError if it cannot start
    or (with check) exits non-zero. ``hint`` is appended to the error: what to do."""
    args = [str(a) for a in argv]
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=capture,
            env=None if env is None else dict(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise InitkitError(
            f"cannot run {args[0]!r}: not found" + (f"; {hint}" if hint else "")
        ) from exc
    except PermissionError as exc:
        raise InitkitError(f"cannot run {args[0]!r}: permission denied") from exc
    except subprocess.TimeoutExpired as exc:
        raise InitkitError(f"{shlex.join(args)} did not finish within {timeout} s") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip()
        last = err.splitlines()[-1] if err else f"exit status {proc.returncode}"
        raise InitkitError(
            f"{shlex.join(args)} failed: {last}" + (f"; {hint}" if hint else "")
        )
    return proc
