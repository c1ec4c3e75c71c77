"""Pure: the parsed command line -> the boot's steps and its one action.

Nothing here touches the OS; facts about the initrd (the module list, which shell
exists, the environment the kernel gave) come in as arguments, so every decision is
unit-tested without a VM. guest.boot carries the result out through guest.system.
"""

from __future__ import annotations

from guest import contract
from guest.cmdline import Cmdline

# mount(2) flags, from linux/fs.h (kept here so this module needs no ctypes).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MNT_DETACH = 0x2  # umount2(2)

NEW_ROOT = "/sysroot"
# Directories an init= switch carries into the new root (NixOS's stage 1 does the same).
CARRIED_MOUNTS = ("/dev", "/proc", "/sys", "/run")
NEEDS_BUSYBOX = "rebuild the initrd with `initbuilder build --busybox`"


class _Record:
    """Value semantics for the small step classes (no dataclasses: importing them is slow)."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _Record) and type(self) is type(other)
                and self._values() == other._values())

    def __hash__(self) -> int:
        return hash((type(self).__name__, *map(repr, self._values())))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


# -- steps ------------------------------------------------------------------------
class Mount(_Record):
    """mount(2) on ``target`` (created first). A ``fatal`` failure ends the boot with
    status 125 and ``hint``; any other failure is reported and the boot goes on."""

    __slots__ = ("data", "fatal", "flags", "fstype", "hint", "source", "target")

    def __init__(self, source: str, target: str, fstype: str | None, flags: int = 0,
                 data: str = "", *, fatal: bool = False, hint: str = "") -> None:
        self.source = source
        self.target = target
        self.fstype = fstype
        self.flags = flags
        self.data = data
        self.fatal = fatal
        self.hint = hint


class Console(_Record):
    """Make sure fds 0, 1 and 2 are open on ``path`` (the kernel opens them only if the
    initrd has the node; devtmpfs provides it)."""

    __slots__ = ("path",)

    def __init__(self, path: str = "/dev/console") -> None:
        self.path = path


class Symlink(_Record):
    """A convenience link such as /dev/fd; an existing one is left alone."""

    __slots__ = ("path", "target")

    def __init__(self, path: str, target: str) -> None:
        self.path = path
        self.target = target


class LinkAll(_Record):
    """Link each of ``paths`` to ``target`` (busybox's applets); a path that exists is
    left alone, so what the initrd has at that path wins."""

    __slots__ = ("paths", "target")

    def __init__(self, paths: tuple[str, ...], target: str) -> None:
        self.paths = paths
        self.target = target


class LoadModule(_Record):
    """finit_module(2) one .ko; a failure is reported with its errno, the boot goes on."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class MakeDir(_Record):
    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


# -- actions ------------------------------------------------------------------------
class ListTree(_Record):
    """Print every path under ``root``, like find(1); status 1 if some were unreadable."""

    __slots__ = ("root",)

    def __init__(self, root: str) -> None:
        self.root = root


class Spawn(_Record):
    """Run ``argv`` as a child in its own session with the console as its controlling
    terminal, wait for it (reaping orphans meanwhile) and take its status."""

    __slots__ = ("argv", "env", "what")

    def __init__(self, argv: tuple[str, ...], env: dict[str, str], what: str) -> None:
        self.argv = argv
        self.env = env
        self.what = what


class SwitchRoot(_Record):
    """Move the store and the API mounts into a tmpfs at ``new_root``, free the initrd,
    make the tmpfs the root and exec ``argv`` as PID 1 with ``env``."""

    __slots__ = ("argv", "env", "new_root")

    def __init__(self, new_root: str, argv: tuple[str, ...], env: dict[str, str]) -> None:
        self.new_root = new_root
        self.argv = argv
        self.env = env


class Serve(_Record):
    """Serve the control channel on the virtio-serial port ``port`` until the host says
    shutdown (guest/agent.py, in a forked child)."""

    __slots__ = ("port",)

    def __init__(self, port: str) -> None:
        self.port = port


class Fail(_Record):
    """Nothing to run: print ``message`` and report ``status``."""

    __slots__ = ("message", "status")

    def __init__(self, message: str, status: int) -> None:
        self.message = message
        self.status = status


Step = Mount | Console | Symlink | LinkAll | LoadModule | MakeDir
Action = ListTree | Spawn | SwitchRoot | Serve | Fail


class Plan(_Record):
    __slots__ = ("action", "debug", "echo", "nonce", "steps", "warnings")

    def __init__(self, steps: tuple[Step, ...], action: Action, nonce: str, debug: bool,
                 warnings: tuple[str, ...], echo: bool = True) -> None:
        self.steps = steps
        self.action = action
        self.nonce = nonce
        self.debug = debug
        self.warnings = warnings
        self.echo = echo  # False: the console must not echo input (it comes from a pipe)


def early_steps() -> tuple[Step, ...]:
    """The steps before the command line can be read (it lives in /proc)."""
    nosuid_nodev = MS_NOSUID | MS_NODEV
    return (
        # devtmpfs first: it holds /dev/console, which an initrd need not carry.
        Mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
        Console("/dev/console"),
        Mount("proc", "/proc", "proc", nosuid_nodev | MS_NOEXEC),
        Mount("sysfs", "/sys", "sysfs", nosuid_nodev | MS_NOEXEC),
        Mount("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777"),
        Mount("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755"),
        Mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666"),
        Symlink("/dev/fd", "/proc/self/fd"),
        Symlink("/dev/stdin", "/proc/self/fd/0"),
        Symlink("/dev/stdout", "/proc/self/fd/1"),
        Symlink("/dev/stderr", "/proc/self/fd/2"),
    )


def make_plan(cmdline: Cmdline, *, modules: str | None = None,
              shell: tuple[str, ...] | None = None,
              environ: dict[str, str] | None = None, applets: str | None = None) -> Plan:
    """The steps after early_steps() and the action the command line asks for.

    ``modules`` is the text of the load list, ``shell`` the argv prefix that runs the
    initrd's shell (None without one), ``environ`` the environment the kernel gave init,
    ``applets`` the text of the applet list.
    """
    environ = dict(environ or {})
    warnings = [f"unknown key {p.key!r} on the kernel command line; ignored"
                for p in (*cmdline.params, *cmdline.init_params)
                if p.key.startswith(contract.KEY_PREFIXES) and p.key not in contract.KNOWN_KEYS]
    nonce = cmdline.value(contract.NONCE_KEY)
    if nonce is None:
        nonce = contract.NO_NONCE
    elif not contract.valid_nonce(nonce):
        warnings.append(f"{contract.NONCE_KEY}={nonce!r} is not 16 hex digits; "
                        f"reporting with nonce {contract.NO_NONCE!r}")
        nonce = contract.NO_NONCE
    action = _action(cmdline, shell, environ)
    # Only an interactive shell is still useful without the store.
    store_needed = not (isinstance(action, Spawn) and action.what == "shell")
    store_needed = store_needed and not isinstance(action, Fail)
    steps: list[Step] = []
    applet_paths = contract.listed_paths(applets)
    if applet_paths:
        steps.append(LinkAll(applet_paths, contract.BUSYBOX))
    steps.extend(LoadModule(path) for path in contract.listed_paths(modules))
    steps.append(MakeDir(contract.STORE))
    steps.extend(_store_mounts(cmdline, fatal=store_needed))
    return Plan(tuple(steps), action, nonce, cmdline.has(contract.DEBUG_KEY), tuple(warnings),
                echo=not cmdline.has(contract.NOECHO_KEY))


def _store_mounts(cmdline: Cmdline, *, fatal: bool) -> list[Step]:
    test_dir = cmdline.value(contract.TEST_STORE_KEY)
    if test_dir:
        hint = f"{contract.TEST_STORE_KEY}={test_dir} must name a directory in the guest"
        return [
            Mount(test_dir, contract.STORE, None, MS_BIND, fatal=fatal, hint=hint),
            Mount("none", contract.STORE, None, MS_REMOUNT | MS_BIND | MS_RDONLY, fatal=fatal,
                  hint=hint),
        ]
    tag = cmdline.value(contract.TAG_KEY) or contract.DEFAULT_TAG
    hint = (f"is a virtiofs device with tag {tag!r} attached (hostrun does this), and is "
            "the virtiofs module in the initrd or built in?")
    return [Mount(tag, contract.STORE, "virtiofs", MS_RDONLY, fatal=fatal, hint=hint)]


def child_env(environ: dict[str, str]) -> dict[str, str]:
    """The clean environment of programs the init starts."""
    return {"PATH": contract.DEFAULT_PATH, "HOME": "/", "TERM": environ.get("TERM") or "linux"}


def _action(cmdline: Cmdline, shell: tuple[str, ...] | None,
            environ: dict[str, str]) -> Action:
    key = cmdline.first_of(contract.ACTION_KEYS)
    # The value as the host wrote it (guest/contract.py); only a blank one means none.
    value = (cmdline.value(key) or "") if key else ""
    if not value.strip():
        value = ""
    env = child_env(environ)
    if key == contract.FIND_KEY:
        return ListTree(contract.STORE)
    if key == contract.SHELL_KEY:
        if value:
            return Spawn(contract.exec_argv(value), env, "shell")
        if shell is None:
            return Fail("tvix.shell: the initrd has no shell (/bin/sh); "
                        f"{NEEDS_BUSYBOX}, or name one: tvix.shell=/nix/store/.../bin/bash",
                        contract.NOT_FOUND)
        return Spawn(shell, env, "shell")
    if key == contract.EXEC_KEY:
        if not value:
            return Fail('tvix.exec names no program; give tvix.exec=PATH or '
                        'tvix.exec="PATH ARG..."', contract.USAGE)
        return Spawn(contract.exec_argv(value), env, "program")
    if key == contract.RUN_KEY:
        if not value:
            return Fail("tvix.run names no command; give tvix.run=CMD", contract.USAGE)
        if shell is None:
            return Fail(f"tvix.run needs a shell to run {value!r}, but the initrd has none "
                        f"(/bin/sh); {NEEDS_BUSYBOX}, or use tvix.exec", contract.NOT_FOUND)
        return Spawn((*shell, "-c", value), env, "command")
    if key == contract.INIT_KEY:
        if not value:
            return Fail("init= names no program; give init=/nix/store/...-nixos-system-.../init",
                        contract.USAGE)
        return SwitchRoot(NEW_ROOT, (value, *cmdline.init_args()), environ)
    port = cmdline.value(contract.CHANNEL_KEY)
    if key is None and port is not None:
        if not port.strip():
            return Fail(f"{contract.CHANNEL_KEY} names no port; give "
                        f"{contract.CHANNEL_KEY}={contract.CHANNEL_PORT}", contract.USAGE)
        return Serve(port)
    return Fail("no action on the kernel command line (tvix.find, tvix.shell, tvix.exec=, "
                "tvix.run=, init=); nothing to do", contract.USAGE)
