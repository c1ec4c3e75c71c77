"""Click plumbing shared by initkit's front ends: user errors as one line, exit 2 (120
for a machine that ran short: errors.EnvironmentFault); -v logging; lazy subcommands."""

from __future__ import annotations

import errno
import importlib
import logging
import sys
from typing import Any, NoReturn

import click

from initkit.errors import InitkitError, write_error

# OS errors that are the machine's whatever raised them: a site that did not explain its
# own still gets one line, not a traceback (any other OSError is a bug and keeps it).
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE,
                   errno.ENFILE}


class _ReportsUserErrors(click.Command):
    """Print InitkitError as one line (no traceback) and exit with its code (2, or 120
    for an EnvironmentFault); bugs keep tracebacks. A mixin before click's Group or
    Command (a Command itself, so that its super().invoke is one)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InitkitError as exc:
            _fail(ctx, exc)
        except OSError as exc:
            # A copy or rename names its destination second: that is what was written.
            written = exc.filename2 or exc.filename
            if exc.errno not in _MACHINE_ERRNOS or not written:
                raise
            _fail(ctx, write_error(exc, written, "write"))


def _fail(ctx: click.Context, exc: InitkitError) -> NoReturn:
    click.echo(f"{ctx.find_root().info_name}: error: {exc}", err=True)
    sys.exit(exc.exit_code)


class Group(_ReportsUserErrors, click.Group):
    pass


class LazyGroup(Group):
    """A group whose subcommands are imported only when used, so that `--help` and the
    front ends that import this module (hostrun) do not pay for every command."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lazy = dict(lazy or {})  # name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


class Command(_ReportsUserErrors, click.Command):
    pass


def setup_logging(verbose: int) -> None:
    """-v shows what happens (INFO), -vv every subprocess argv too (DEBUG)."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
