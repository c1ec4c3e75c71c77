"""`initbuilder`: the command-line front end."""

from __future__ import annotations

import click

from initbuilder import __version__
from initkit.cli import LazyGroup

_COMMANDS = {
    "build": "initbuilder.cli.build:build",
    "ls": "initbuilder.cli.ls:ls",
    "closure": "initbuilder.cli.closure:closure",
    "kernel": "initbuilder.cli.kernel:kernel",
}


@click.group(cls=LazyGroup, lazy=_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
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

    \b
    Exit status: 0 done; 1 `kernel build --cached` found no build; 2 a usage or
    input error (one line says which and what to do); 120 the machine ran short
    (disk full, quota, open files, I/O error); 130 interrupted (Ctrl-C).
    """

