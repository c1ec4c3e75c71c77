"""The one way initkit starts subprocesses: argv logged at debug level, clear errors.

``run()`` for a command whose end we wait for, ``run_lines()`` for a long one whose
lines are shown as they come, ``start()`` for a child that lives on beside us (a daemon,
a VMM) and that the caller stops.
"""

from __future__ import annotations

import errno
import logging
import shlex
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import IO

from initkit.errors import EnvironmentFault, InitkitError, WriteSite

log = logging.getLogger("initkit.process")

Arg = str | PathLike[str]
# What Popen takes for stdin, stdout and stderr: a constant (PIPE, DEVNULL...), an fd, a file.
Stream = int | IO[bytes] | IO[str] | None


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
    writes: WriteSite | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv and return the finished process; raise InitkitError if it cannot start
    or (with check) exits non-zero. ``hint`` is appended to the error: what to do.
    ``writes``: where it writes, so that a failure of the machine's (a full disk) is
    told as one (an EnvironmentFault naming that place), not as the program's."""
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
    except OSError as exc:
        raise cannot_start(exc, args[0], hint=hint) from exc
    except subprocess.TimeoutExpired as exc:
        raise InitkitError(f"{shlex.join(args)} did not finish within {timeout} s") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip()
        if writes is not None and (fault := writes.fault(err)) is not None:
            raise fault
        last = err.splitlines()[-1] if err else f"exit status {proc.returncode}"
        raise InitkitError(
            f"{shlex.join(args)} failed: {last}" + (f"; {hint}" if hint else "")
        )
    return proc


def run_lines(
    argv: Sequence[Arg],
    on_line: Callable[[str], None],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Arg | None = None,
    hint: str = "",
    keep: int = 200,
    writes: WriteSite | None = None,
) -> None:
    """Run argv, handing each line of its merged stdout and stderr to ``on_line`` as it
    comes (for long builds that show progress); raise InitkitError if it cannot start or
    exits non-zero, naming the line of its output that gives the error (or, with
    ``writes``, the machine's fault as run() does). The child
    is stopped and waited for if this process is interrupted, so nothing keeps writing
    after we return."""
    args = [str(a) for a in argv]
    log.debug("run: %s", shlex.join(args))
    tail: deque[str] = deque(maxlen=keep)
    try:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=None if env is None else dict(env),
                                cwd=cwd)
    except OSError as exc:
        raise cannot_start(exc, args[0], hint=hint) from exc
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            tail.append(line)
            on_line(line)
        code = proc.wait()
    finally:
        if proc.poll() is None:
            # Interrupted (^C reaches the child too, SIGTERM only us): stop it and wait,
            # so it cannot keep writing into a directory the caller is about to remove.
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if code != 0:
        if writes is not None and (fault := writes.fault("\n".join(tail))) is not None:
            raise fault
        # One line, as front ends print errors: the first compiler-style "error:" line
        # (the cause), else the last line that mentions an error (make's own "*** ...
        # Error 2" summary), else the last line.
        causes = [line for line in tail if "error:" in line.lower()]
        errors = [line for line in tail if "error" in line.lower()]
        cause = (causes[:1] or errors[-1:] or list(tail)[-1:] or [f"exit status {code}"])[0]
        cause = cause.strip()
        raise InitkitError(
            f"{shlex.join(args)} failed (exit status {code}): {cause}"
            + (f"; {hint}" if hint else "")
        )


def start(
    argv: Sequence[Arg],
    *,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    env: Mapping[str, str] | None = None,
    cwd: Arg | None = None,
    pass_fds: Sequence[int] = (),
    new_session: bool = False,
    preexec_fn: Callable[[], None] | None = None,
    what: str = "",
    hint: str = "",
) -> subprocess.Popen[bytes]:
    """Start argv as a child that runs on beside this process and return it; the caller
    waits for it or stops it. InitkitError if it cannot be started (``what`` names the
    program in the message: "virtiofs daemon"; ``hint`` says what to do); a failing
    ``preexec_fn`` raises subprocess.SubprocessError, as Popen does."""
    args = [str(a) for a in argv]
    log.debug("start: %s", shlex.join(args))
    try:
        return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr,
                                env=None if env is None else dict(env), cwd=cwd,
                                pass_fds=tuple(pass_fds), start_new_session=new_session,
                                preexec_fn=preexec_fn)
    except OSError as exc:
        raise cannot_start(exc, args[0], what=what, hint=hint) from exc


def cannot_start(exc: OSError, program: str, *, what: str = "", hint: str = "") -> InitkitError:
    """The error for ``program`` that could not be started: not found, not executable,
    or the machine out of processes, memory or file descriptors (an EnvironmentFault)."""
    name = f"{what} {program!r}" if what else repr(program)
    if isinstance(exc, FileNotFoundError):
        cause = "not found"
    elif isinstance(exc, PermissionError):
        cause = "permission denied (not executable)"
    else:
        cause = exc.strerror or str(exc)
    message = f"cannot run {name}: {cause}" + (f"; {hint}" if hint else "")
    if exc.errno in _ENVIRONMENT_ERRNOS:
        return EnvironmentFault(message)
    return InitkitError(message)


_ENVIRONMENT_ERRNOS = {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
