"""`initbuilder`: the command-line front end."""

from __future__ import annotations

import click

from initbuilder import __version__
from initbuilder.cli.framework import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="initbuilder")
def main() -> None:
    """Build small, deterministic cpio initrds for micro-VMs.

    \b
    Typical use:
      initbuilder build -o initrd.zst --busybox      # an initrd with a shell
      initbuilder build -o initrd.zst --binary strace  # a program and its libraries
      initbuilder closure /usr/bin/qemu-img          # what the loader would load
      initbuilder ls initrd.zst                     # what is inside
      initbuilder kernel fetch                      # a kernel to boot (Debian's)
    """


def _register() -> None:
    from initbuilder.cli import build, closure, kernel, ls

    main.add_command(build.build)
    main.add_command(ls.ls)
    main.add_command(closure.closure)
    main.add_command(kernel.kernel)


_register()
