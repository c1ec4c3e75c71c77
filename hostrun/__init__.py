"""hostrun: boot a kernel + initrd in a micro-VM whose /nix/store is a virtiofs share.

The public Python API is hostrun.api, re-exported here: ``from hostrun import VmRunner``
(one boot, one action) or ``Machine`` (one boot, many commands over the control channel).
Importing this package is cheap and has no side effects (the pytest plugin relies on it):
the names load on first use, and neither click nor pytest ever does.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: this package's import stays free
if TYPE_CHECKING:
    from guest.contract import ExitStatus
    from hostrun.api import BootFailed, CommandFailed, Machine, VmResult, VmRunner
    from hostrun.channel import ChannelError, ExecResult

__all__ = ["BootFailed", "ChannelError", "CommandFailed", "ExecResult", "ExitStatus", "Machine",
           "VmResult", "VmRunner"]


def __getattr__(name: str) -> object:
    """Load a public name from hostrun.api when it is first asked for."""
    if name in __all__:
        from hostrun import api

        return getattr(api, name)
    raise AttributeError(f"module 'hostrun' has no attribute {name!r}")
