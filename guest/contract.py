"""The host<->guest contract: every name, path and record that crosses the VM's boundary.

One definition for both sides. The guest init reads its kernel command line with these
keys, the files initbuilder writes at these paths, and reports on the console in the
record format below; hostrun builds the command line and reads the console with the same
definitions; initbuilder writes the files. Standard library only (``posix``, which every
Python on Linux has loaded already): the init imports this at every boot (docs/guest.md).

The status record is ``\\ninitkit-status:<nonce>:exit=<N>\\n`` or ``...:signal=<N>\\n``;
``...:ready`` says the action is about to start (the host may send input from then on).
The leading newline puts it at the start of a line whatever the program printed last; a
host that hides the record removes both newlines with it and shows exactly the program's
bytes. The nonce comes from ``initkit.nonce=`` (16 hex digits), so output that merely
looks like a record, from another run, never matches.
"""

from __future__ import annotations

import posix  # not os: importing it costs every boot (guest/system.py)

# -- the kernel command line (parsed by guest/cmdline.py, the kernel's own rules) ----------
FIND_KEY = "tvix.find"
SHELL_KEY = "tvix.shell"
EXEC_KEY = "tvix.exec"
RUN_KEY = "tvix.run"
INIT_KEY = "init"
# Highest priority first: the first of these present on the command line is the action.
ACTION_KEYS = (FIND_KEY, SHELL_KEY, EXEC_KEY, RUN_KEY, INIT_KEY)
TAG_KEY = "tvix.tag"  # the virtiofs tag to mount on STORE (default DEFAULT_TAG)
NONCE_KEY = "initkit.nonce"
NOECHO_KEY = "initkit.noecho"  # the host's input is a pipe: the console must not echo it
DEBUG_KEY = "initkit.debug"
TEST_STORE_KEY = "initkit.test.store"  # test only: bind this directory on STORE instead
# Serve the control channel (guest/agent.py) on the virtio-serial port of this name. The
# action when no key of ACTION_KEYS is present: the host then drives the guest over it.
CHANNEL_KEY = "initkit.channel"
KNOWN_KEYS = frozenset((*ACTION_KEYS, TAG_KEY, NONCE_KEY, NOECHO_KEY, DEBUG_KEY,
                        TEST_STORE_KEY, CHANNEL_KEY))
# Keys under these prefixes belong to the contract: an unknown one is a typo to warn about.
KEY_PREFIXES = ("tvix.", "initkit.")
# x86's COMMAND_LINE_SIZE (2048) less its NUL. QEMU and the kernel cut a longer line
# short without a word, so the end of it (where the action is) would be lost.
CMDLINE_MAX_BYTES = 2047


def exec_argv(value: str) -> tuple[str, ...]:
    """The argv that a ``tvix.exec=`` or ``tvix.shell=`` value stands for: its words."""
    return tuple(value.split())


# -- what the initrd and the host provide -----------------------------------------------
DEFAULT_TAG = "tvix"  # the virtiofs tag the host attaches the store with
STORE = "/nix/store"  # where the guest mounts it
# The virtio-serial port hostrun attaches the control channel as (its name= property).
CHANNEL_PORT = "org.initkit.control"
# The channel on a VMM whose virtio-console has one console port and no port names
# (cloud-hypervisor's --console socket=): the guest has it as this tty. An
# initkit.channel value that is a path under /dev names such a device.
CHANNEL_CONSOLE = "/dev/hvc0"
# What the agent writes on a console channel once the tty is raw (no echo, no line
# editing, 8 bits through): the host sends its hello only after it, so nothing the host
# sends can reach the tty while it would still echo or edit it.
CONSOLE_READY = b"\ninitkit-agent-ready\n"


def is_console_channel(name: str) -> bool:
    """Whether an initkit.channel value names a console device, not a named port."""
    return name.startswith("/dev/")
# Where the kernel lists virtio-serial ports: <dir>/vportNpM/name holds the port's name,
# and devtmpfs has its device as /dev/vportNpM.
VIRTIO_PORTS = "/sys/class/virtio-ports"
# The kernel modules to load, in order (initbuilder/modules.py writes it).
MODULE_LIST = "/etc/initkit/modules"
# Busybox applet paths the init links to BUSYBOX at boot (initbuilder writes the list
# instead of archive entries: see initbuilder/sources.py add_busybox).
APPLET_LIST = "/etc/initkit/applets"
BUSYBOX = "/bin/busybox"
SHELL = "/bin/sh"  # the shell the init runs first (else BUSYBOX sh)
# When /init is the native init (guest/native/init.c), the Python init's #! script is
# here, and the native one execs it for every command line it does not carry out itself.
PYTHON_INIT = "/usr/lib/initkit/python-init"
# Test only: the command line the Python init reads instead of /proc's.
CMDLINE_ENV = "INITKIT_TEST_CMDLINE"
# Seconds stray processes get between SIGTERM and SIGKILL once the action is over.
GRACE_SECONDS = 1.0
# PATH of the programs the init starts, and the one initbuilder finds named programs on.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def listed_paths(listing: str | None) -> tuple[str, ...]:
    """The paths of a list file (MODULE_LIST, APPLET_LIST): one a line; blanks and
    #comments skipped."""
    if not listing:
        return ()
    lines = (line.strip() for line in listing.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


# -- the status record on the console ----------------------------------------------------
PREFIX = "initkit-status"
NO_NONCE = "none"
NONCE_LENGTH = 16
READY = "ready"
_HEX = frozenset("0123456789abcdefABCDEF")

# Statuses the init reports itself, after shell conventions.
USAGE = 2  # the command line asks for nothing, or for something malformed
INIT_FAILED = 125  # the init could not prepare the action (a required mount, a bug)
NOT_EXECUTABLE = 126  # the program exists but exec() refused it
NOT_FOUND = 127  # no such program (or its ELF/#! interpreter is missing)


class ExitStatus:
    """How the action ended: ``exit`` with a code 0..255, or ``signal`` with its number
    (1..127, what waitpid can report)."""

    __slots__ = ("kind", "number")

    def __init__(self, kind: str, number: int) -> None:
        valid = (0 <= number <= 255 if kind == "exit"
                 else 1 <= number <= 127 if kind == "signal" else False)
        if not valid:
            raise ValueError(f"invalid exit status {kind}={number}")
        self.kind = kind
        self.number = number

    @classmethod
    def exited(cls, code: int) -> ExitStatus:
        return cls("exit", code)

    @classmethod
    def killed(cls, signum: int) -> ExitStatus:
        return cls("signal", signum)

    @classmethod
    def from_wait(cls, status: int) -> ExitStatus:
        """Decode a waitpid() status of a child that has ended."""
        if posix.WIFSIGNALED(status):
            return cls.killed(posix.WTERMSIG(status))
        return cls.exited(posix.WEXITSTATUS(status))

    @property
    def success(self) -> bool:
        return self.kind == "exit" and self.number == 0

    @property
    def exit(self) -> int | None:
        """The exit code, or None if a signal ended the program."""
        return self.number if self.kind == "exit" else None

    @property
    def signal(self) -> int | None:
        """The signal that ended the program, or None if it exited."""
        return self.number if self.kind == "signal" else None

    @property
    def code(self) -> int:
        """The status as a shell reports it: N, or 128+N for a signal."""
        return self.number if self.kind == "exit" else 128 + self.number

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExitStatus) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        return f"{self.kind}={self.number}"

    def __repr__(self) -> str:
        return f"ExitStatus({self.kind!r}, {self.number})"


def valid_nonce(text: str | None) -> bool:
    """True for exactly 16 hexadecimal digits."""
    return text is not None and len(text) == NONCE_LENGTH and all(c in _HEX for c in text)


def record_marker(nonce: str) -> bytes:
    """What every record of the run with ``nonce`` starts with: ``initkit-status:<nonce>:``."""
    return f"{PREFIX}:{nonce}:".encode()


def record(nonce: str, status: ExitStatus) -> bytes:
    """The bytes the guest writes to the console after the action."""
    return b"\n" + record_marker(nonce) + f"{status}\n".encode()


def ready_record(nonce: str) -> bytes:
    """The bytes the guest writes to the console right before the action starts: the
    host holds the user's input until then, because the serial port drops what arrives
    before the console is open and a program may read before it prints anything."""
    return b"\n" + record_marker(nonce) + f"{READY}\n".encode()


def parse_status(payload: str) -> ExitStatus | None:
    """The status a record's text after its marker names (``exit=3``), else None."""
    kind, sep, number = payload.partition("=")
    digits = number.isascii() and number.isdigit() and len(number) <= 3
    if not sep or kind not in ("exit", "signal") or not digits:
        return None
    try:
        return ExitStatus(kind, int(number))
    except ValueError:
        return None


def parse_line(line: str, nonce: str) -> ExitStatus | None:
    """The status in one console line (trailing CR/LF allowed) for ``nonce``, else None."""
    text = line.rstrip("\r\n")
    head = f"{PREFIX}:{nonce}:"
    if not text.startswith(head):
        return None
    return parse_status(text[len(head):])
