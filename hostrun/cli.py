"""`hostrun`: boot a kernel + initrd with /nix/store shared over virtiofs, run one thing,
exit with its status."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from guest import contract
from hostrun.action import Action, action_key, chosen_actions, without_actions
from initkit.cli import Command, setup_logging
from initkit.errors import InitkitError

# The seed runVM's environment variables; the matching flags win over them.
ENV_CPUS = "CH_NUM_CPUS"
ENV_MEMORY = "CH_MEM_SIZE"
ENV_CMDLINE = "CH_CMDLINE"

_EPILOG = """\b
Exit status: the guest program's (a signal N as 128+N), else
  2 usage or input error, nothing started     121 virtiofs daemon failed
  120 the machine ran short (disk full, quota, open files, I/O error)
  122 VMM failed                              123 guest gave no status
  124 --timeout expired    130 Ctrl-C    143 SIGTERM
\b
Environment: CH_NUM_CPUS, CH_MEM_SIZE, CH_CMDLINE (the seed's; flags win),
HOSTRUN_KERNEL (default --kernel), HOSTRUN_ACCEL (default --accel), INITKIT_CACHE.
"""


@click.command(cls=Command, epilog=_EPILOG,
               context_settings={"help_option_names": ["-h", "--help"],
                                 "allow_interspersed_args": False})
@click.option("--kernel", type=click.Path(path_type=Path),
              help="Kernel image: bzImage or vmlinux, or 'minimal' for initkit's own kernel "
                   "(`initbuilder kernel build`; built on first use, minutes). Default: "
                   "$HOSTRUN_KERNEL, else this Debian release's kernel, fetched into "
                   "the cache on first use.")
@click.option("--initrd", type=click.Path(path_type=Path),
              help="Initrd to boot. Default: initbuilder's for the kernel (its modules, the "
                   "guest init, busybox), built once and cached.")
@click.option("--store", type=click.Path(path_type=Path), default=Path("/nix/store"),
              show_default=True,
              help="Directory the guest sees as /nix/store (read-only); with --closure, "
                   "the host store its paths are taken from.")
@click.option("--closure", "closure", multiple=True, metavar="PATH",
              help="Repeatable: the guest's /nix/store holds exactly the closure of these "
                   "store paths (or links to them, such as ./result).")
@click.option("--substituter", "substituters", multiple=True, metavar="file:///DIR",
              help="Repeatable: a Nix binary cache directory for --closure paths that are "
                   "not in --store, tried in order (NARs verified, unpacked once into the "
                   "cache).")
@click.option("--find", is_flag=True, help="List the store (tvix.find).")
@click.option("--shell", is_flag=True,
              help="A shell in the guest; on a terminal keys go to it raw (Ctrl-] leaves).")
@click.option("--exec", "exec_path", metavar="PATH",
              help="Run PATH with the ARGs that follow. Put -- before ARGs that start with "
                   "a dash. With hostrun's own initrd (no --initrd) over the control "
                   "channel: any bytes, the program's stderr on hostrun's stderr; else "
                   "tvix.exec on the kernel command line.")
@click.option("--run", "run_cmd", metavar="CMD",
              help="Run CMD with /bin/sh -c (over the channel as --exec, else tvix.run).")
@click.option("--init", "init_path", metavar="PATH",
              help="Hand PID 1 to PATH from the store (init=).")
@click.option("--cpus", type=int, help=f"vCPUs (default: ${ENV_CPUS}, else 1).")
@click.option("--memory", metavar="SIZE", help=f"Guest memory, e.g. 512M, 2G (default: "
                                                f"${ENV_MEMORY}, else 512M).")
@click.option("--cmdline", metavar="EXTRA", help=f"Extra kernel command line (default: "
                                                 f"${ENV_CMDLINE}).")
@click.option("--timeout", type=float, metavar="S",
              help="Stop the VM after S seconds and exit 124.")
@click.option("--vmm", type=click.Choice(["auto", "qemu", "cloud-hypervisor"]),
              default="auto", show_default=True,
              help="auto: cloud-hypervisor where it and KVM are available, else QEMU.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]),
              help="QEMU accelerator (default: $HOSTRUN_ACCEL, else auto: KVM when /dev/kvm "
                   "opens and a probe boot under KVM prints within 2 s, else TCG emulation).")
@click.option("--daemon", default="auto", show_default=True, metavar="DAEMON",
              help="virtiofs daemon: auto|virtiofsd (detected: Rust on PATH, else QEMU's C "
                   "one), tvix-store, a virtiofsd path, or a command with {socket} {store} "
                   "(and {fd} to be handed a listening socket).")
@click.option("-v", "--verbose", count=True,
              help="-v: kernel messages and what hostrun chose; -vv: also every command.")
@click.argument("args", nargs=-1)
def main(kernel: Path | None, initrd: Path | None, store: Path, closure: tuple[str, ...],
         substituters: tuple[str, ...], find: bool, shell: bool,
         exec_path: str | None, run_cmd: str | None, init_path: str | None,
         cpus: int | None, memory: str | None, cmdline: str | None, timeout: float | None,
         vmm: str, accel: str | None, daemon: str, verbose: int,
         args: tuple[str, ...]) -> None:
    """Boot a kernel and initrd in a micro-VM whose /nix/store is a virtiofs share of
    --store, do one thing there, and exit with its status.

    \b
    Examples:
      hostrun --exec /nix/store/...-hello/bin/hello
      hostrun --store ./store --run 'ls /nix/store | wc -l'
      hostrun --closure ./result --exec /nix/store/...-hello/bin/hello
      hostrun --shell
    """
    from hostrun.plan import Request, plan
    from hostrun.session import run
    from hostrun.vmm import parse_memory

    setup_logging(verbose)
    chosen = _action(find, shell, exec_path, run_cmd, init_path, args)
    extra = cmdline if cmdline is not None else os.environ.get(ENV_CMDLINE, "")
    if chosen is not None:
        extra = without_actions(extra)  # the flag wins over an action in CH_CMDLINE
    else:
        key = action_key(extra)
        if key is None:
            raise InitkitError("nothing to do: pass --find, --shell, --exec PATH, --run CMD "
                               "or --init PATH (or put tvix.* in --cmdline / CH_CMDLINE)")
        shell = key == contract.SHELL_KEY  # the seed's way: CH_CMDLINE=tvix.shell is a shell
    # --exec and --run go over the control channel when the initrd is hostrun's own
    # (it serves one); a given --initrd may have no agent (--no-init, a foreign init),
    # and CH_CMDLINE's tvix.* words keep the console path.
    channel = chosen is not None and chosen.kind in ("exec", "run") and initrd is None
    request = Request(
        kernel=kernel, initrd=initrd, store=store, action=chosen, over_channel=channel,
        cpus=cpus if cpus is not None else _env_int(ENV_CPUS, 1),
        memory_mib=parse_memory(memory or os.environ.get(ENV_MEMORY) or "512M"),
        extra_cmdline=extra, timeout=timeout, vmm=vmm, accel=accel, daemon=daemon,
        verbose=verbose > 0, closure=list(closure), substituters=list(substituters),
    )
    spec = plan(request)
    if channel:
        from hostrun.oneshot import run_over_channel

        assert chosen is not None
        _leave(run_over_channel(spec, chosen, timeout))
    stdin_tty = os.isatty(0)
    interactive = shell and stdin_tty
    # A terminal's input goes to the guest only for --shell (elsewhere the host's echo
    # and the guest's would double every key); piped input always goes.
    stdin: int | None = 0 if (interactive or not stdin_tty) else None
    outcome = run(spec, stdin=stdin, interactive=interactive, live=os.isatty(1))
    if outcome.error:
        if interactive:
            sys.stderr.write("\r\n")
        sys.stderr.write(f"hostrun: {outcome.error}\n")
    _leave(outcome.code)


def _leave(code: int) -> NoReturn:
    if _as_program:
        # Everything hostrun started is stopped and removed by now; what is left is the
        # interpreter tearing down its modules, ~13 ms of every run's wall time.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):  # a closed pipe: nothing left to tell
                stream.flush()
        os._exit(code)
    sys.exit(code)


_as_program = False  # set by entry(): main() may also run in-process (click's CliRunner)


def entry() -> None:
    """The ``hostrun`` program: main(), which leaves by os._exit after a boot."""
    global _as_program
    _as_program = True
    main()


def _action(find: bool, shell: bool, exec_path: str | None, run_cmd: str | None,
            init_path: str | None, args: tuple[str, ...]) -> Action | None:
    actions = chosen_actions(find=find, shell=shell,
                             exec=None if exec_path is None else (exec_path, *args),
                             run=run_cmd, init=init_path)
    if len(actions) > 1:
        flags = " and ".join(f"--{action.kind}" for action in actions)
        raise InitkitError(f"{flags} each choose what the guest does; pass one")
    if args and exec_path is None:
        raise InitkitError(f"unexpected arguments {' '.join(args)!r}: only --exec PATH takes "
                           "arguments after it")
    return actions[0] if actions else None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise InitkitError(f"${name}={value!r} is not a whole number") from None
