"""Which kernel command lines the native init (guest/native/init.c) carries out itself.

It hands every other line to the Python init. This is the C program's rule written again
in Python, for hostrun: a boot whose line the native init takes needs no Python runtime
in its initrd (2.7 MB instead of 12.8, ~30 ms less to copy and unpack under TCG).
tests/guest/test_native.py compares the two on every line it tries, generated ones
included, so a difference fails there and not in a boot.
"""

from __future__ import annotations

from guest import contract
from guest.cmdline import Param, words

# The keys under tvix./initkit. the native init knows; any other such key goes to Python.
NATIVE_KEYS = frozenset((contract.EXEC_KEY, contract.RUN_KEY, contract.SHELL_KEY,
                         contract.TAG_KEY, contract.NONCE_KEY, contract.NOECHO_KEY,
                         contract.TEST_STORE_KEY))
MAX_WORDS = 1024  # init.c's MAX_PARAMS
MAX_ARGV = 256  # init.c's MAX_ARGV


def native_takes(raw: bytes, *, shell: bool) -> bool:
    """True if the native init carries out the command line ``raw`` (/proc/cmdline's
    bytes) itself; ``shell``: whether the initrd has /bin/sh (or /bin/busybox)."""
    last = len(raw) - 1
    if any((byte < 0x20 or byte > 0x7E) and not (byte == 0x0A and i == last)
           for i, byte in enumerate(raw)):
        return False
    params = [param for _, param in words(raw)]
    if any(p.key == "--" and p.value is None for p in params) or len(params) > MAX_WORDS:
        return False
    for p in params:
        if "\n" in p.key or (p.value is not None and "\n" in p.value):
            return False
        if p.key == contract.INIT_KEY:
            return False
        if p.key.startswith(contract.KEY_PREFIXES) and p.key not in NATIVE_KEYS:
            return False
    nonce = _value(params, contract.NONCE_KEY)
    if nonce is not None and not contract.valid_nonce(nonce):
        return False
    present = {p.key for p in params}
    action = next((key for key in (contract.SHELL_KEY, contract.EXEC_KEY, contract.RUN_KEY)
                   if key in present), None)
    if action is None:
        return False
    value = _value(params, action) or ""
    if not value.strip(" "):
        value = ""
    if action == contract.RUN_KEY:
        return bool(value) and shell
    if not value:
        return action == contract.SHELL_KEY and shell
    return len(value.split(" ")) - value.split(" ").count("") <= MAX_ARGV


def _value(params: list[Param], key: str) -> str | None:
    """The last value given to ``key`` (None: absent, or a bare flag last), as init.c's
    value_of and guest/cmdline.py's Cmdline.value."""
    for param in reversed(params):
        if param.key == key:
            return param.value
    return None
