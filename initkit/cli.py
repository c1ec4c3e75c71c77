"""Click plumbing shared by initkit's front ends: user errors as one line, exit 2 (120
for a machine that ran short: errors.EnvironmentFault), usage errors as one line too;
-v logging; lazy subcommands."""

from __future__ import annotations

import errno
import importlib
import logging
import signal
import sys
from typing import Any, NoReturn

import click

from initkit.errors import InitkitError, write_error

# OS errors that are the machine's whatever raised them: a site that did not explain its
# own still gets one line, not a traceback (any other OSError is a bug and keeps it).
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE,
                   errno.ENFILE}


class _OneLineUsageError(click.UsageError):
    """A usage error (a bad flag, a missing argument, a path click refused) shown as one
    line like every other error, with where help is, instead of click's usage block."""

    def show(self, file: Any = None) -> None:
        root = self.ctx.find_root().info_name if self.ctx else None
        where = f" (see {self.ctx.command_path} --help)" if self.ctx else ""
        click.echo(f"{root or 'error'}: error: {self.format_message()}{where}", err=True)


# Shown as they are: ours, and a bare group name's help (no arguments is a request for it).
_KEEP = (_OneLineUsageError, getattr(click.exceptions, "NoArgsIsHelpError", _OneLineUsageError))


class _ReportsUserErrors(click.Command):
    """Print InitkitError as one line (no traceback) and exit with its code (2, or 120
    for an EnvironmentFault); usage errors as one line, exit 2; ^C as 130; bugs keep
    tracebacks. A mixin before click's Group or Command (a Command itself, so that its
    super().invoke is one)."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            if isinstance(exc, _KEEP):
                raise
            raise _OneLineUsageError(exc.format_message(), exc.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # an unknown subcommand, say
            if isinstance(exc, _KEEP):
                raise
            raise _OneLineUsageError(exc.format_message(), exc.ctx or ctx) from None
        except InitkitError as exc:
            _fail(ctx, exc)
        except KeyboardInterrupt:
            # click would print "Aborted!" and exit 1; a shell's ^C code, as hostrun's
            # own handler gives once the VM runs.
            click.echo(f"{ctx.find_root().info_name}: interrupted", err=True)
            sys.exit(128 + signal.SIGINT)
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
