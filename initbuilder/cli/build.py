"""`initbuilder build`: the user's words -> a BuildSpec -> an initrd."""

from __future__ import annotations

from pathlib import Path

import click

from initbuilder.cli.closure import closure_options
from initbuilder.cli.kernel import kernel_options
from initbuilder.cpio import COMPRESSIONS
from initbuilder.spec import BuildSpec
from initbuilder.spec import build as run_build
from initkit.cli import Command, setup_logging


@click.command(cls=Command)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Where to write the initrd (atomically). Its suffix picks the compression: "
                   ".gz .bz2 .lzma .xz .lz4 .zst, anything else none.")
@click.option("--file", "files", multiple=True, metavar="HOST[:GUEST]",
              help="Add a host file, symlink or directory (recursively) at GUEST, by default "
                   "at its host path. Repeatable.")
@click.option("--busybox", "busybox", is_flag=False, flag_value="", default="auto",
              metavar="[PATH]",
              help="Add busybox as /bin/busybox plus a symlink per applet (with initkit's "
                   "init: /bin/sh, and the rest listed in /etc/initkit/applets for the init "
                   "to link at boot, which is faster). Without PATH the busybox on $PATH. "
                   "Default: added when one is on $PATH.")
@click.option("--no-busybox", is_flag=True, help="Leave busybox out.")
@click.option("--base", "bases", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Merge an existing initrd (compressed or not, concatenated archives too). "
                   "Repeatable.")
@closure_options
@kernel_options
@click.option("--no-init", is_flag=True,
              help="Leave out initkit's guest init and its Python runtime (/init).")
@click.option("--native-init/--no-native-init", "native_init", default=None,
              help="/init is initkit's native init (compiled from guest/native/init.c with "
                   "$CC, cc or gcc, cached), which runs tvix.exec, tvix.run and tvix.shell "
                   "without starting Python and hands every other command line to the Python "
                   "init. Default: when it can be compiled. --native-init: or fail; "
                   "--no-native-init: the Python init is /init.")
@click.option("--python", type=click.Path(path_type=Path, dir_okay=False),
              help="The Python interpreter to pack for the guest init (default: the one "
                   "running initbuilder).")
@click.option("--compress", "compression", type=click.Choice(COMPRESSIONS),
              help="Compression, overriding the output suffix.")
@click.option("--source-date-epoch", type=int, metavar="SECONDS",
              help="mtime of every entry (default: $SOURCE_DATE_EPOCH, else 0).")
@click.option("-v", "--verbose", count=True,
              help="-v: what was added from where and each phase's time; -vv: every entry "
                   "and subprocess.")
def build(output: Path, files: tuple[str, ...], busybox: str, no_busybox: bool,
          bases: tuple[Path, ...], binaries: tuple[str, ...], root: Path | None,
          library_path: tuple[str, ...], dlopen: str, allow_missing: bool,
          kernel: Path | None, modules_dir: Path | None, modules: tuple[str, ...],
          no_init: bool, native_init: bool | None, python: Path | None, compression: str | None,
          source_date_epoch: int | None, verbose: int) -> None:
    """Build a deterministic newc initrd at OUTPUT.

    The same inputs give the same bytes: entries are sorted, every mtime is the source
    date epoch, owners are 0:0 unless an input says otherwise, inodes are numbered in
    order and hard links stay hard links. Every initrd has the directories and device
    nodes an init needs (/dev/console, /dev/null, ...), written as cpio records, so no
    root is needed to build one.

    \b
    Examples:
      initbuilder build -o initrd.zst --busybox
      initbuilder build -o initrd.cpio --no-init --file ./etc:/etc --file /bin/busybox
    """
    setup_logging(verbose)
    spec = BuildSpec(
        files=list(files),
        busybox=None if no_busybox else busybox,
        bases=list(bases),
        binaries=list(binaries),
        root=root,
        library_path=list(library_path),
        dlopen=dlopen,
        allow_missing=allow_missing,
        kernel=kernel,
        modules_dir=modules_dir,
        modules=list(modules) or None,
        init=not no_init,
        native_init=native_init,
        python=python,
        compression=compression,
        source_date_epoch=source_date_epoch,
    )
    result = run_build(spec, output)
    report = result.report
    click.echo(f"{report.path}: {report.entries} entries, {report.size} bytes "
               f"({report.compression})")
    if result.modules:
        names = ' '.join(Path(m).name.removesuffix('.ko') for m in result.modules)
        click.echo(f"kernel modules, in load order: {names}")
