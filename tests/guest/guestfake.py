"""A recording stand-in for guest.system.System, for the pure dispatch tests.

mypy checks it against guest.interface.SystemInterface, as it does the real System
(see the end of this file), so the fake cannot drift from what the init calls.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guest.interface import SystemInterface


def wait_status_exit(code: int) -> int:
    """The waitpid() status of a child that called exit(code)."""
    return (code & 0xFF) << 8


def wait_status_signal(signum: int) -> int:
    """The waitpid() status of a child killed by ``signum``."""
    return signum & 0x7F


class FakeSystem:
    """guest.interface.SystemInterface, as guest.system.System implements it; records
    every call, fails on request."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []
        self.said: list[str] = []
        self.out = bytearray()
        self.cmdline = b""
        self.files: dict[str, str] = {}
        self.env = {"HOME": "/", "TERM": "linux"}
        self.shell: tuple[str, ...] | None = ("/bin/sh",)
        self.existing: set[str] = set()
        self.mount_errors: dict[str, int] = {}  # target -> errno
        self.module_errors: dict[str, int] = {}  # path -> errno
        self.spawn_errno: int | None = None
        self.execve_errno: int | None = errno.ENOENT
        self.child_pid = 100
        self.ports: dict[str, str] = {}  # virtio-serial port name -> device
        self.agent_errno: int | None = None
        # What wait_any returns, in order: (pid, status) or an exception to raise.
        self.waits: list[tuple[int, int] | BaseException] = []
        self.tree: list[tuple[bytes, OSError | None]] = []
        self.clock = 10.0

    def _record(self, name: str, *args: object) -> None:
        self.calls.append((name, args))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def now(self) -> float:
        self.clock += 0.001
        return self.clock

    def init_exec_time(self) -> tuple[float, float] | None:
        return 9.5, 0.013

    def say(self, message: str) -> None:
        self.said.append(message)

    def write_out(self, data: bytes) -> None:
        self.out += data

    def set_echo(self, enabled: bool) -> None:
        self._record("set_echo", enabled)

    def ensure_console(self, path: str) -> None:
        self._record("ensure_console", path)

    def read_cmdline(self) -> bytes:
        self._record("read_cmdline")
        return self.cmdline

    def read_text(self, path: str) -> str | None:
        return self.files.get(path)

    def environ(self) -> dict[str, str]:
        return dict(self.env)

    def find_shell(self) -> tuple[str, ...] | None:
        return self.shell

    def make_dir(self, path: str) -> None:
        self._record("make_dir", path)

    def symlink(self, path: str, target: str) -> None:
        self._record("symlink", path, target)

    def link_all(self, paths: tuple[str, ...], target: str) -> None:
        self._record("link_all", paths, target)

    def walk(self, root: bytes) -> Iterator[tuple[bytes, OSError | None]]:
        self._record("walk", root)
        yield from self.tree

    def mount(self, source: str, target: str, fstype: str | None, flags: int,
              data: str) -> None:
        self._record("mount", source, target, fstype, flags, data)
        if target in self.mount_errors:
            err = self.mount_errors[target]
            raise OSError(err, os.strerror(err), target)

    def umount(self, target: str, flags: int = 0) -> None:
        self._record("umount", target, flags)

    def load_module(self, path: str) -> None:
        self._record("load_module", path)
        if path in self.module_errors:
            err = self.module_errors[path]
            raise OSError(err, os.strerror(err), path)

    def catch_shutdown_signals(self) -> None:
        self._record("catch_shutdown_signals")

    def spawn(self, argv: tuple[str, ...], env: dict[str, str]) -> int:
        self._record("spawn", argv, env)
        if self.spawn_errno is not None:
            raise OSError(self.spawn_errno, os.strerror(self.spawn_errno), argv[0])
        return self.child_pid

    def find_port(self, name: str, wait: float) -> str | None:
        self._record("find_port", name, wait)
        return self.ports.get(name)

    def start_agent(self, device: str, serve: Callable[[int], int]) -> int:
        self._record("start_agent", device)
        if self.agent_errno is not None:
            raise OSError(self.agent_errno, os.strerror(self.agent_errno), device)
        return self.child_pid

    def wait_any(self) -> tuple[int, int]:
        self._record("wait_any")
        if not self.waits:
            raise ChildProcessError(errno.ECHILD, "No child processes")
        got = self.waits.pop(0)
        if isinstance(got, BaseException):
            raise got
        return got

    def end_all(self, grace: float) -> list[tuple[int, int]]:
        self._record("end_all", grace)
        return []

    def exists(self, path: str) -> bool:
        return path in self.existing

    def remove_tree_on_root(self, keep: str) -> int:
        self._record("remove_tree_on_root", keep)
        return 0

    def chdir(self, path: str) -> None:
        self._record("chdir", path)

    def chroot(self, path: str) -> None:
        self._record("chroot", path)

    def execve(self, argv: tuple[str, ...], env: dict[str, str]) -> None:
        self._record("execve", argv, env)
        if self.execve_errno is not None:
            raise OSError(self.execve_errno, os.strerror(self.execve_errno), argv[0])

    def power_off(self) -> None:
        self._record("power_off")


if TYPE_CHECKING:
    # The check: a method missing here, or one whose signature differs from the
    # interface's, is a mypy error on this line.
    _CHECKED: type[SystemInterface] = FakeSystem
