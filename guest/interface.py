"""What the guest init asks of the operating system: the interface guest.boot is written
against, which guest.system.System implements and tests/guest/guestfake.py's recording
fake imitates; mypy checks both against it.

For type checkers: the init imports it only under ``if TYPE_CHECKING``, and it imports
typing only so, because typing costs at every boot under TCG and the runtime packs what
every guest module imports (initbuilder/runtime.py). Run, it defines a plain class.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Protocol
else:
    Protocol = object


class SystemInterface(Protocol):
    """The operating system as PID 1 uses it. Failures of the OS raise OSError."""

    # -- time and output
    def now(self) -> float:
        """Seconds since boot (CLOCK_BOOTTIME), the timeline the kernel log uses."""

    def init_exec_time(self) -> tuple[float, float] | None:
        """When the kernel exec'd init on now()'s timeline, and how far the kernel log's
        clock is ahead of now()'s (seconds), if the kernel log says."""

    def say(self, message: str) -> None:
        """One line for the user on the console, prefixed with who speaks."""

    def write_out(self, data: bytes) -> None:
        """Bytes to the console, unbuffered."""

    def set_echo(self, enabled: bool) -> None:
        """Turn the console's echo on or off."""

    def ensure_console(self, path: str) -> None:
        """Make fds 0-2 the console ``path`` and give Python streams on them."""

    # -- files
    def read_cmdline(self) -> bytes:
        """The kernel command line, as bytes."""

    def read_text(self, path: str) -> str | None:
        """A file's text, or None if it does not exist."""

    def environ(self) -> dict[str, str]:
        """The environment the kernel gave init."""

    def find_shell(self) -> tuple[str, ...] | None:
        """The argv prefix that runs the initrd's shell, or None without one."""

    def make_dir(self, path: str) -> None:
        """mkdir -p."""

    def symlink(self, path: str, target: str) -> None:
        """A symlink at ``path`` to ``target``, unless ``path`` exists."""

    def link_all(self, paths: tuple[str, ...], target: str) -> None:
        """Symlink each path to ``target``, leaving existing ones; the first failure
        raised after trying all."""

    def walk(self, root: bytes) -> Iterator[tuple[bytes, OSError | None]]:
        """(path, None) for ``root`` and everything under it, depth first, sorted, not
        following symlinks; (path, OSError) for what could not be read."""

    # -- mounts and modules
    def mount(self, source: str, target: str, fstype: str | None, flags: int,
              data: str) -> None:
        """mount(2); ``fstype`` None for binds, moves and remounts."""

    def umount(self, target: str, flags: int = 0) -> None:
        """umount2(2)."""

    def load_module(self, path: str) -> None:
        """Load a plain .ko; one already loaded counts as success."""

    # -- processes
    def catch_shutdown_signals(self) -> None:
        """From now on, poweroff/halt/reboot requests raise guest.system.ShutdownRequested."""

    def spawn(self, argv: tuple[str, ...], env: dict[str, str]) -> int:
        """Start ``argv`` in a new session on the console; its pid once exec succeeded."""

    def find_port(self, name: str, wait: float) -> str | None:
        """The device of the virtio-serial port called ``name`` (waiting up to ``wait``
        s for it to appear), or None."""

    def start_agent(self, device: str, serve: Callable[[int], int]) -> int:
        """Fork a child that runs ``serve`` on ``device``'s fd (the control channel's
        agent) and exits with its value; its pid."""

    def wait_any(self) -> tuple[int, int]:
        """Block until some child ends: (pid, wait status). ChildProcessError if none."""

    def end_all(self, grace: float) -> list[tuple[int, int]]:
        """SIGTERM every other process, SIGKILL what is left after ``grace`` s; what was
        reaped."""

    # -- switching root and powering off
    def exists(self, path: str) -> bool:
        """``path`` exists (a dangling symlink counts)."""

    def remove_tree_on_root(self, keep: str) -> int:
        """Delete the initramfs's files, sparing ``keep``; how many could not be."""

    def chdir(self, path: str) -> None:
        ...

    def chroot(self, path: str) -> None:
        ...

    def execve(self, argv: tuple[str, ...], env: dict[str, str]) -> None:
        """Replace this process; returns only by raising OSError."""

    def power_off(self) -> None:
        """Flush the console, sync, power off; returns only if the kernel refused."""
