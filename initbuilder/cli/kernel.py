"""`initbuilder kernel`: inspect kernel images, extract vmlinux, fetch or build a kernel,
list modules."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from initkit.cli import Command, Group, setup_logging

F = TypeVar("F", bound=Callable[..., Any])


def kernel_options(func: F) -> F:
    """Add --kernel, --modules-dir and --module (repeatable) to a command; its function
    receives ``kernel: Path | None``, ``modules_dir: Path | None``, ``modules: tuple[str]``."""
    func = click.option(
        "--module", "modules", multiple=True, metavar="NAME",
        help="A kernel module to load at boot (name or alias, e.g. fs-virtiofs), closed over "
             "its dependencies. Repeatable. Default with --kernel/--modules-dir: virtiofs, "
             "virtio_mmio and virtio_pci.",
    )(func)
    func = click.option(
        "--modules-dir", type=click.Path(path_type=Path, file_okay=False),
        help="The kernel's lib/modules/VERSION directory (default: found next to --kernel, "
             "else /lib/modules/VERSION).",
    )(func)
    func = click.option(
        "--kernel", type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="The kernel image the initrd is for (bzImage, vmlinux, Image); its version "
             "picks the modules tree.",
    )(func)
    return func


@click.group(cls=Group)
def kernel() -> None:
    """Kernel images and modules: inspect, extract vmlinux, fetch Debian's kernel.

    \b
    Examples:
      initbuilder kernel fetch                      # this Debian release's kernel, cached
      initbuilder kernel fetch --release trixie     # Debian 13's 6.12, on any release
      initbuilder kernel build                      # initkit's minimal kernel, cached
      initbuilder kernel info "$(initbuilder kernel fetch --print bzimage)"
      initbuilder kernel vmlinux vmlinuz -o vmlinux  # for PVH boots (QEMU microvm)
      initbuilder kernel modules --kernel vmlinuz    # the virtiofs load list
    """


@kernel.command(cls=Command)
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--header-only", is_flag=True,
              help="Do not decompress a bzImage's payload (PVH note then unknown).")
def info(image: Path, as_json: bool, header_only: bool) -> None:
    """Show an image's format, kernel version, payload compression and PVH entry."""
    from initbuilder.kernels.formats import kernel_info

    found = kernel_info(image, payload=not header_only)
    pvh = found.pvh if not (header_only and found.format == "bzImage") else None
    fields: dict[str, Any] = {
        "path": str(found.path),
        "format": found.format,
        "version": found.version,
        "version_string": found.version_string,
        "compression": found.compression,
        "boot_protocol": found.boot_protocol,
        "machine": found.machine,
        "pvh": pvh,
        "pvh_entry": None if found.pvh_entry is None else f"{found.pvh_entry:#x}",
    }
    if as_json:
        click.echo(json.dumps(fields, indent=1))
        return
    for key, value in fields.items():
        if key == "pvh":
            value = "unknown" if value is None else "yes" if value else "no"
        if value is not None:
            click.echo(f"{key + ':':16}{value}")


@kernel.command(cls=Command)
@click.argument("bzimage", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the vmlinux (default: print the cached copy's path).")
@click.option("-v", "--verbose", count=True)
def vmlinux(bzimage: Path, output: Path | None, verbose: int) -> None:
    """Extract the ELF vmlinux from BZIMAGE, for PVH boots.

    The result is cached by the bzImage's content hash, so a second call is instant.
    Payloads compressed with gzip, xz, zstd, lz4, lzma or bzip2 are understood.
    """
    from initbuilder.kernels.formats import extract_vmlinux

    setup_logging(verbose)
    click.echo(extract_vmlinux(bzimage, output))


_PRINTABLE = ("package", "version", "bzimage", "vmlinux", "modules-dir", "root")


@kernel.command(cls=Command)
@click.option("--package", metavar="NAME",
              help="The Debian package, e.g. linux-image-6.1.0-28-amd64 or "
                   "linux-image-6.12.57+deb13-amd64 (default: $INITKIT_KERNEL_PACKAGE, else "
                   "the newest cached of the release, else what linux-image-amd64 depends on).")
@click.option("--release", type=click.Choice(["bookworm", "trixie"]),
              help="Debian release whose kernel to fetch (default: this machine's). Another "
                   "release is asked through a private apt state in the cache; the system's "
                   "apt set-up is not touched.")
@click.option("--refresh", is_flag=True, help="Ask apt for its newest kernel even when one "
                                              "is cached.")
@click.option("--cache", type=click.Path(path_type=Path, file_okay=False),
              help="Where to unpack kernels (default: the initkit cache, kernels/).")
@click.option("--deb", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Unpack this kernel .deb (already downloaded) instead of asking apt.")
@click.option("--print", "print_field", type=click.Choice(_PRINTABLE),
              help="Print only this one value (for $(...) in scripts).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-v", "--verbose", count=True)
def fetch(package: str | None, release: str | None, refresh: bool, cache: Path | None,
          deb: Path | None, print_field: str | None, as_json: bool, verbose: int) -> None:
    """Fetch Debian's kernel package into the cache and print where it is.

    Runs `apt-get download` and `dpkg-deb -x`: nothing is installed and no package
    scripts run. The vmlinux for PVH boots is extracted too. A second call is instant
    and needs no network.
    """
    from initbuilder.kernels.fetch import fetch_debian_kernel, unpack_kernel_deb
    from initbuilder.kernels.formats import extract_vmlinux

    setup_logging(verbose)
    if deb is not None:
        fetched = unpack_kernel_deb(deb, cache)
    else:
        fetched = fetch_debian_kernel(cache, package, refresh=refresh, release=release)
    fields = {
        "package": f"{fetched.package}={fetched.package_version}",
        "version": fetched.version,
        "bzimage": str(fetched.bzimage),
        "vmlinux": str(extract_vmlinux(fetched.bzimage)),
        "modules-dir": str(fetched.modules_dir),
        "root": str(fetched.root),
    }
    _show(fields, print_field, as_json)


@kernel.command(cls=Command)
@kernel_options
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--host-paths", is_flag=True,
              help="Print the module files on the host instead of the guest paths.")
@click.option("-v", "--verbose", count=True)
def modules(kernel: Path | None, modules_dir: Path | None, modules: tuple[str, ...],
            names: tuple[str, ...], host_paths: bool, verbose: int) -> None:
    """Print the load list for NAMEs (and --module), dependencies first.

    This is what `initbuilder build` writes to /etc/initkit/modules. Without names,
    the virtiofs set. Built-in modules need no file: they are reported on stderr.
    """
    from initbuilder.kernels.modules import DEFAULT_MODULES, find_tree, load_list, resolve

    setup_logging(verbose)
    tree = find_tree(kernel, modules_dir)
    wanted = [*names, *modules] or list(DEFAULT_MODULES)
    resolution = resolve(tree, wanted)
    if host_paths:
        lines = [str(m.path) for m in resolution.load_order]
    else:
        lines = load_list(tree, resolution.load_order)
    for line in lines:
        click.echo(line)
    if resolution.builtin:
        click.echo(f"built into {tree.version}: {', '.join(resolution.builtin)}", err=True)


_BUILT_FIELDS = ("version", "bzimage", "vmlinux", "config", "modules-dir", "root", "source")


@kernel.command(cls=Command)
@click.option("--source", type=click.Path(path_type=Path, exists=True),
              help="A kernel tree (built in place, out of tree) or a source tarball. Default: "
                   "Debian's linux-source-X.Y for this release, installed if missing.")
@click.option("--config-fragment", "fragments", multiple=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True), metavar="FILE",
              help="Options over initkit's own fragment (CONFIG_X=y lines; a later one wins). "
                   "Repeatable.")
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False),
              help="Also copy bzImage, vmlinux and config into this directory.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), metavar="N",
              help="Parallel compile jobs (default: every core).")
@click.option("--rebuild", is_flag=True,
              help="Run make even when the kernel is cached (after editing a --source tree).")
@click.option("--check", is_flag=True,
              help="Only check the fragments: install and unpack the source, configure it "
                   "and name every option Kconfig dropped; compile nothing (seconds).")
@click.option("--cached", is_flag=True,
              help="Only look: print the cached kernel, or exit 1 if it is not built. Installs "
                   "and builds nothing.")
@click.option("--print", "print_field", type=click.Choice(_BUILT_FIELDS),
              help="Print only this one value (for $(...) in scripts).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("-v", "--verbose", count=True, help="Show make's own lines.")
def build(source: Path | None, fragments: tuple[Path, ...], output: Path | None,
          jobs: int | None, rebuild: bool, check: bool, cached: bool, print_field: str | None,
          as_json: bool, verbose: int) -> None:
    """Build a kernel for initkit's VMs: tinyconfig plus initkit's fragment.

    Everything the guest init and hostrun need is built in, so initrds for it carry
    no modules. The build is cached by source version, fragments, compiler and
    architecture: a second call prints the paths at once. The first takes minutes
    (about 13 on 2 cores); progress goes to stderr.

    \b
    Examples:
      initbuilder kernel build                       # Debian's source, initkit's fragment
      initbuilder kernel build --print bzimage       # the one path
      initbuilder kernel build --config-fragment extra.config
      initbuilder kernel build --cached || echo "not built yet"
      initbuilder kernel build --check --config-fragment extra.config
      hostrun --kernel minimal ...                   # boots it (builds it if needed)
    """
    import contextlib
    import shutil

    from initbuilder.kernels.build import build_kernel, configure_only, lookup
    from initkit.errors import writing
    from initkit.files import private_scratch, replacing

    setup_logging(verbose)
    if check:
        with private_scratch("initkit-kconfig-") as tmp:
            configure_only(source, fragments, tmp / "objects",
                           report=lambda text: click.echo(text, err=True))
        click.echo("initbuilder: Kconfig kept every option of the fragments; nothing was "
                   "compiled", err=True)
        return
    if cached:
        built = lookup(source, fragments)
        if built is None:
            click.echo("initbuilder: this kernel is not built yet; run `initbuilder kernel "
                       "build`" + (" with the same options" if source or fragments else ""),
                       err=True)
            raise SystemExit(1)
    else:
        built = build_kernel(source, fragments, jobs=jobs, rebuild=rebuild,
                             report=lambda text: click.echo(text, err=True),
                             show_make=verbose > 0)
    if output is not None:
        # On failure, what this run made (directories, files that were not there) goes.
        made = [parent for parent in (output, *output.parents) if not parent.exists()]
        written: list[Path] = []
        try:
            with writing(output, "make the output directory"):
                output.mkdir(parents=True, exist_ok=True)
            for name, path in (("bzImage", built.bzimage), ("vmlinux", built.vmlinux),
                               ("config", built.config)):
                what = f"the kernel's {name}"
                existed = (output / name).exists()
                with replacing(output / name, what=what) as tmp, \
                        writing(output / name, f"write {what}"):
                    shutil.copyfile(path, tmp)
                if not existed:
                    written.append(output / name)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            for directory in made:  # innermost first
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
    fields = built.fields()
    _show(fields, print_field, as_json)


def _show(fields: dict[str, str], print_field: str | None, as_json: bool) -> None:
    """One field (--print), a JSON object (--json), or "key: value" lines."""
    if print_field:
        click.echo(fields[print_field])
    elif as_json:
        click.echo(json.dumps(fields, indent=1))
    else:
        for key, value in fields.items():
            click.echo(f"{key + ':':13}{value}")
