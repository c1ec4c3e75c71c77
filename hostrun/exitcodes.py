"""hostrun's exit codes: the guest program's status, or one of hostrun's own failures."""

from __future__ import annotations

import enum
import signal

from initkit.errors import ENVIRONMENT_EXIT, USER_ERROR_EXIT


class ExitCode(enum.IntEnum):
    """Codes hostrun uses for its own outcomes (a guest program may use them too;
    the one-line message on stderr tells which it was)."""

    USER_ERROR = USER_ERROR_EXIT  # bad flag, missing kernel or store: nothing was started
    # The machine ran short (no space left, too many open files, an I/O error) while
    # hostrun made its files: the same command works once that is fixed.
    ENVIRONMENT = ENVIRONMENT_EXIT
    DAEMON_FAILED = 121  # the virtiofs daemon did not start or died during the run
    VMM_FAILED = 122  # the VMM could not start or exited with an error
    NO_STATUS = 123  # the guest gave no status line: kernel panic, init crash, power-off
    TIMEOUT = 124  # --timeout expired (the code timeout(1) uses)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it)
    TERMINATED = 143  # SIGTERM (128 + SIGTERM)


def signal_exit_code(signum: int) -> int:
    """A status for "killed by signal N", as a shell reports it: 128 + N."""
    return 128 + signum


def exit_code_for_host_signal(signum: int) -> int:
    """The code hostrun exits with when it is stopped by ``signum`` (SIGINT -> 130)."""
    if signum == signal.SIGINT:
        return ExitCode.INTERRUPTED
    if signum == signal.SIGTERM:
        return ExitCode.TERMINATED
    return signal_exit_code(signum)
