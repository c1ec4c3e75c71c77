"""virtiofs daemons: one class per daemon, one interface (start, wait, alive, stop, log).

Where a daemon takes an inherited socket (``--fd=N``: both virtiofsd flavours do),
hostrun binds and listens itself before starting it, so the VMM can connect at once:
no polling and no race. Other daemons create their socket at a path; hostrun then
waits until the kernel lists it as listening (/proc/net/unix), never connecting to it,
because a vhost-user daemon serves exactly one connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from hostrun.procs import child_setup, stop_process
from initkit import process
from initkit.errors import InitkitError, writing
from initkit.files import TMPDIR_ELSEWHERE, identity, private_scratch, remember

if TYPE_CHECKING:
    from hostrun.storeview.mounts import ViewMounts

log = logging.getLogger("initkit.hostrun")

SOCKET_NAME = "virtiofs.sock"
LOG_NAME = "virtiofsd.log"
C_VIRTIOFSD = "/usr/lib/qemu/virtiofsd"  # QEMU <= 7.2 ships the C daemon here
_UNIX_ACCEPTCON = 0x00010000  # /proc/net/unix "Flags" of a listening socket


class DaemonFailed(Exception):
    """The daemon exited or never became ready; the message includes its log."""


class VirtiofsDaemon(ABC):
    """A vhost-user-fs backend serving one directory tree on one socket."""

    name: str  # each class's own; a custom daemon's names its program
    # Request queues the daemon serves (the hiprio queue not counted).
    max_request_queues: ClassVar[int] = 1
    uses_store: ClassVar[bool] = True

    def __init__(self, store: Path) -> None:
        self.store = store
        self.socket_path: Path | None = None
        self.log_path: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        # A store view the daemon makes on its store dir in its own mount namespace
        # before it starts (--closure; hostrun/storeview/mounts.py).
        self.view: ViewMounts | None = None

    def serve_view(self, root: Path, mounts: ViewMounts | None) -> None:
        """Serve the store view at ``root`` instead of the store (``mounts``: what the
        daemon mounts there first; None: the directory is the view)."""
        self.store = root
        self.view = mounts

    # -- what differs per daemon --------------------------------------------------
    @abstractmethod
    def argv(self, socket_path: Path, fd: int | None) -> list[str]:
        """The daemon's command line; ``fd`` is the listening socket when passes_fd."""

    def passes_fd(self) -> bool:
        """True if the daemon takes an inherited listening socket."""
        return True

    def env(self) -> dict[str, str] | None:
        """The daemon's environment (None: hostrun's own, passed through)."""
        return None

    def readonly_view(self) -> bool:
        """True if hostrun must make the store read-only for the daemon (it cannot)."""
        return False

    # -- lifecycle ---------------------------------------------------------------
    def start(self, workdir: Path) -> None:
        """Start serving on ``workdir``/virtiofs.sock (``workdir`` private, 0700)."""
        self.socket_path = workdir / SOCKET_NAME
        self.log_path = workdir / LOG_NAME
        listener: socket.socket | None = None
        if self.passes_fd():
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with writing(self.socket_path, "make the virtiofs socket",
                             instead=TMPDIR_ELSEWHERE):
                    listener.bind(str(self.socket_path))
                    listener.listen(1)
            except BaseException:
                listener.close()
                raise
        fd = listener.fileno() if listener else None
        argv = self.argv(self.socket_path, fd)
        try:
            with writing(self.log_path, "make the virtiofs daemon's log",
                         instead=TMPDIR_ELSEWHERE):
                logfile = open(self.log_path, "wb")  # noqa: SIM115 - closed below
            with logfile:
                self.process = process.start(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    pass_fds=(fd,) if fd is not None else (),
                    env=self.env(),
                    new_session=True,  # ^C on the terminal is hostrun's to handle
                    preexec_fn=child_setup(
                        readonly=self.store if self.readonly_view() and not self.view else None,
                        view=self.view),
                    what="virtiofs daemon", hint="install it or choose another with --daemon",
                )
        except subprocess.SubprocessError as exc:
            raise DaemonFailed(self._failure(f"could not be started ({exc})")) from None
        finally:
            # Only the daemon may hold the listener now: if it dies, connecting fails
            # at once instead of waiting in a backlog nobody will accept.
            if listener is not None:
                listener.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once the socket accepts connections; DaemonFailed if the daemon exits
        first or ``timeout`` seconds pass."""
        assert self.process is not None and self.socket_path is not None
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            if self.process.poll() is not None:
                raise DaemonFailed(self._failure(f"exited with status {self.process.returncode}"
                                                 " before serving"))
            if self.passes_fd() or _is_listening(self.socket_path):
                return
            if time.monotonic() >= deadline:
                raise DaemonFailed(self._failure(
                    f"did not create its socket {self.socket_path} within {timeout:g} s"))
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 1.0) -> None:
        """Stop the daemon (and anything it forked) and remove its socket."""
        if self.process is not None:
            stop_process(self.process, grace=grace, term=signal.SIGTERM)
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)

    def log_text(self, limit: int = 4000) -> str:
        """The tail of what the daemon printed."""
        if self.log_path is None:
            return ""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode(errors="replace").strip()

    def failure(self, what: str) -> str:
        """A message for a daemon failure: what happened plus the tail of its log."""
        return self._failure(what)

    def _failure(self, what: str) -> str:
        text = self.log_text()
        tail = "\n".join(text.splitlines()[-15:])
        return f"virtiofs daemon {self.name} {what}" + (f"; its log:\n{tail}" if tail else
                                                        " (it printed nothing)")


def _is_listening(path: Path) -> bool:
    """True once /proc/net/unix lists a listening socket bound at ``path``."""
    target = os.fsencode(os.path.abspath(path))
    try:
        with open("/proc/net/unix", "rb") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return os.path.exists(path)  # no procfs: the file is the best sign there is
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) == 8 and fields[7] == target and int(fields[3], 16) & _UNIX_ACCEPTCON:
            return True
    return False


# -- the daemons -------------------------------------------------------------------
class CVirtiofsd(VirtiofsDaemon):
    """The C virtiofsd that QEMU shipped up to 7.2 (``-o source=DIR``, ``--fd=N``)."""

    name = "virtiofsd (C)"

    def __init__(self, store: Path, binary: str = C_VIRTIOFSD) -> None:
        super().__init__(store)
        self.binary = binary

    def argv(self, socket_path: Path, fd: int | None) -> list[str]:
        return [self.binary, f"--fd={fd}", "-o", f"source={self.store}",
                "-o", "cache=auto", "-o", "log_level=warn"]

    def readonly_view(self) -> bool:
        # It has no read-only option; as root hostrun gives it a read-only bind mount.
        return os.geteuid() == 0


class RustVirtiofsd(VirtiofsDaemon):
    """The Rust virtiofsd (``--shared-dir DIR``, ``--fd=N``, ``--readonly`` if new enough),
    in the strongest sandbox this machine lets it enter (see ``sandbox``)."""

    name = "virtiofsd (Rust)"

    def __init__(self, store: Path, binary: str, help_text: str = "") -> None:
        super().__init__(store)
        self.binary = binary
        self.help_text = help_text
        self._sandbox: list[str | None] = []

    @property
    def sandbox(self) -> str | None:
        """``--sandbox`` mode: namespace where it works, else chroot (root), else none;
        None for a daemon without the option. Decided once per machine (sandbox_mode)."""
        if not self._sandbox:
            self._sandbox.append(sandbox_mode(self.binary, self.help_text))
        return self._sandbox[0]

    def argv(self, socket_path: Path, fd: int | None) -> list[str]:
        argv = [self.binary, f"--fd={fd}", "--shared-dir", str(self.store), "--cache=auto"]
        if "--readonly" in self.help_text:
            argv.append("--readonly")
        if self.sandbox is not None:
            argv.append(f"--sandbox={self.sandbox}")
        if "--log-level" in self.help_text:
            argv.append("--log-level=warn")
        return argv

    def readonly_view(self) -> bool:
        return "--readonly" not in self.help_text and os.geteuid() == 0


# -- the Rust daemon's sandbox --------------------------------------------------------
# Strongest first. "namespace" (the default) pivots into the shared directory inside new
# mount, pid and network namespaces; it fails where the root it starts from is no mount
# point (a plain chroot: "Error entering sandbox: CleanMount(... EINVAL)") or namespaces
# are refused (some containers). "chroot" needs root; "none" always works.
SANDBOXES = ("namespace", "chroot", "none")
_READY_LINE = b"Waiting for vhost-user socket connection"
_PROBE_TIMEOUT = 5.0


def sandbox_mode(binary: str, help_text: str) -> str | None:
    """The strongest sandbox ``binary`` can enter here, found by starting it once per
    mode and remembered per binary and host boot, so only the first run pays (~10 ms)."""
    if "--sandbox" not in help_text:
        return None
    if os.geteuid() != 0:
        return "none"  # namespace and chroot need root (or a user namespace set up for it)
    from initkit.cache import cache_dir

    note = cache_dir("hostrun", "sandbox") / _identity_key(binary, _boot_id())
    with contextlib.suppress(OSError):
        known = note.read_text().partition("\n")[0].strip()
        if known in SANDBOXES:
            log.debug("virtiofsd sandbox: %s (remembered in %s)", known, note)
            return known
    failures: list[str] = []
    chosen = "none"
    for mode in SANDBOXES:
        ok, why = probe_sandbox(binary, mode, readonly="--readonly" in help_text)
        if ok:
            chosen = mode
            break
        failures.append(f"--sandbox={mode}: {why}")
        log.info("virtiofsd cannot enter its %s sandbox here (%s); trying the next", mode, why)
    log.info("virtiofsd sandbox: %s (decided once for this machine; remembered in %s)",
             chosen, note)
    remember(note, chosen + "\n" + "".join(f"# {f}\n" for f in failures))
    return chosen


def probe_sandbox(binary: str, mode: str, *, readonly: bool = False) -> tuple[bool, str]:
    """Start ``binary`` on a scratch socket and directory with ``--sandbox=mode``:
    (True, "") once it waits for a connection, else (False, what it said)."""
    with private_scratch("hostrun-sandbox-") as tmp:
        shared = Path(tmp, "shared")
        shared.mkdir()
        argv = [binary, f"--socket-path={tmp}/probe.sock", f"--shared-dir={shared}",
                f"--sandbox={mode}", "--log-level=info"]
        if readonly:
            argv.append("--readonly")
        try:
            proc = process.start(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, new_session=True,
                                 preexec_fn=child_setup())
        except InitkitError as exc:
            return False, str(exc)
        assert proc.stdout is not None
        output = b""
        try:
            deadline = time.monotonic() + _PROBE_TIMEOUT
            os.set_blocking(proc.stdout.fileno(), False)
            while _READY_LINE not in output:
                if time.monotonic() > deadline:
                    return False, f"not ready within {_PROBE_TIMEOUT:g} s"
                chunk = _read_within(proc.stdout.fileno(), deadline)
                if chunk == b"":  # closed: it exited
                    proc.wait()
                    break
                output = (output + (chunk or b""))[-8192:]
            if _READY_LINE in output:
                return True, ""
            last = output.decode(errors="replace").strip().splitlines()
            return False, (last[-1] if last else f"exited with status {proc.returncode}")
        finally:
            stop_process(proc, grace=1.0)
            proc.stdout.close()


def _read_within(fd: int, deadline: float) -> bytes | None:
    """What ``fd`` has before ``deadline`` (b"" at end of file, None if nothing yet)."""
    import select

    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        return None
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown-boot"


def _identity_key(binary: str, *extra: str) -> str:
    """A cache key for what a note says about one binary file (its identity)."""
    return hashlib.sha256(f"{identity(os.path.abspath(binary))}:{':'.join(extra)}"
                          .encode()).hexdigest()[:32]


class TvixStore(VirtiofsDaemon):
    """``tvix-store virtiofs -l SOCKET`` as the seed runs it: serves tvix's own store
    (BLOB_/DIRECTORY_/PATH_INFO_SERVICE_ADDR pass through in the environment)."""

    name = "tvix-store"
    uses_store = False

    def __init__(self, store: Path, binary: str = "tvix-store") -> None:
        super().__init__(store)
        self.binary = binary

    def passes_fd(self) -> bool:
        return False

    def argv(self, socket_path: Path, fd: int | None) -> list[str]:
        # -l lets the guest list /nix/store itself (tvix.find needs that).
        return [self.binary, "virtiofs", "-l", str(socket_path)]


class CustomDaemon(VirtiofsDaemon):
    """A command template with ``{socket}``, ``{store}`` and optionally ``{fd}`` (then
    hostrun passes a listening socket instead of waiting for one)."""

    name = "custom daemon"

    def __init__(self, store: Path, template: str) -> None:
        super().__init__(store)
        self.template = template
        try:
            self.words = shlex.split(template)
        except ValueError as exc:
            raise InitkitError(f"--daemon {template!r}: {exc}") from None
        if not self.words or not any("{socket}" in w or "{fd}" in w for w in self.words):
            raise InitkitError(f"--daemon {template!r}: a custom command must contain "
                               "{socket} (or {fd})")
        self.name = f"custom daemon {self.words[0]}"

    def passes_fd(self) -> bool:
        return "{fd}" in self.template

    def argv(self, socket_path: Path, fd: int | None) -> list[str]:
        values = {"socket": str(socket_path), "store": str(self.store), "fd": str(fd)}
        try:
            return [w.format(**values) for w in self.words]
        except (KeyError, IndexError, ValueError) as exc:
            raise InitkitError(f"--daemon {self.template!r}: unknown or malformed "
                               f"placeholder {exc}; use {{socket}}, {{store}}, {{fd}}") from None


# -- choosing one --------------------------------------------------------------------
def classify_virtiofsd(binary: str, store: Path) -> VirtiofsDaemon | None:
    """Tell the C virtiofsd from the Rust one by its --help, which differ (remembered
    per binary file, so later runs need not start it twice)."""
    text = _help_text(binary)
    if text is None:
        return None
    if "--shared-dir" in text:
        return RustVirtiofsd(store, binary, text)
    if "source=" in text:
        return CVirtiofsd(store, binary)
    return None


def _help_text(binary: str) -> str | None:
    from initkit.cache import cache_dir

    try:
        key = _identity_key(binary)
    except OSError:
        return None
    note = cache_dir("hostrun", "daemon-help") / key
    with contextlib.suppress(OSError):
        return note.read_text()
    try:
        proc = process.run([binary, "--help"], timeout=10, check=False)
    except InitkitError:
        return None
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    remember(note, text)
    return text


def _virtiofsd_candidates() -> list[str]:
    from shutil import which

    found = [which("virtiofsd"), "/usr/libexec/virtiofsd", C_VIRTIOFSD]
    seen: list[str] = []
    for path in found:
        if path and os.access(path, os.X_OK) and path not in seen:
            seen.append(path)
    return seen


def choose_daemon(spec: str, store: Path) -> VirtiofsDaemon:
    """``--daemon``: auto | virtiofsd | tvix-store | a virtiofsd binary's path |
    a command template with {socket}."""
    if "{" in spec:
        return CustomDaemon(store, spec)
    if spec == "tvix-store":
        return TvixStore(store)
    if spec in ("auto", "virtiofsd"):
        for candidate in _virtiofsd_candidates():
            daemon = classify_virtiofsd(candidate, store)
            if daemon is not None:
                return daemon
        raise InitkitError(
            "no virtiofsd found (looked on PATH, in /usr/libexec and at "
            f"{C_VIRTIOFSD}); install one (Debian: apt-get install virtiofsd, or "
            "qemu-system-x86 <= 7.2) or name one with --daemon PATH"
        )
    if os.sep in spec:
        if not os.access(spec, os.X_OK):
            raise InitkitError(f"--daemon {spec}: no such executable")
        daemon = classify_virtiofsd(spec, store)
        if daemon is None:
            raise InitkitError(f"--daemon {spec}: not a virtiofsd this hostrun knows (its "
                               "--help names neither --shared-dir nor -o source=); pass "
                               "a command template with {socket} and {store} instead")
        return daemon
    raise InitkitError(f"--daemon {spec!r}: use auto, virtiofsd, tvix-store, a virtiofsd "
                       "path, or a command template containing {socket}")
