"""Kernel configuration fragments: read them, lay them over a base .config, and check the
result, because Kconfig silently drops an option whose dependencies are not met.

A fragment is a .config excerpt: ``CONFIG_X=y``, ``CONFIG_X=m``, ``CONFIG_X="text"``,
``CONFIG_X=123`` or ``# CONFIG_X is not set``; other ``#`` lines are comments. initkit's
own fragment (``minimal_kernel.config`` in this package) gives each option a reason on
the comment line above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from initkit.errors import InitkitError, reading

FRAGMENT = Path(__file__).with_name("minimal_kernel.config")

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
NOT_SET = "n"  # the value of an option that is off, whichever way .config writes it


@dataclass(frozen=True)
class Option:
    """One option a fragment asks for, and where."""

    name: str  # CONFIG_...
    value: str  # "y", "m", "n", a number or a quoted string, as .config writes it
    source: str  # "file:line"


def parse_config(text: str, source: str) -> dict[str, Option]:
    """Options of a .config or fragment, by name; a later line wins, as in Kconfig.
    A line that is neither an option nor a comment is an error naming it."""
    options: dict[str, Option] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{source}:{number}"
        if match := _UNSET.match(line):
            options[match.group(1)] = Option(match.group(1), NOT_SET, where)
        elif match := _SET.match(line):
            value = match.group(2)
            if not value or (value[0] != '"' and " " in value):
                raise InitkitError(f"{where}: {line!r}: give one value (y, m, a number or a "
                                   "quoted string); put comments on a line of their own")
            options[match.group(1)] = Option(match.group(1), value, where)
        elif line and not line.startswith("#"):
            raise InitkitError(f"{where}: {line!r} is not a kernel option; write CONFIG_NAME=y "
                               "or '# CONFIG_NAME is not set'")
    return options


def read_fragment(path: Path) -> dict[str, Option]:
    """The options of a fragment file."""
    with reading(path, "kernel config fragment"):
        text = path.read_text()
    options = parse_config(text, str(path))
    if not options:
        raise InitkitError(f"kernel config fragment {path} sets no option; write lines "
                           "such as CONFIG_VIRTIO_FS=y")
    return options


def merge(base: str, wanted: dict[str, Option]) -> str:
    """``base`` (a .config) with every wanted option replaced or appended, as
    scripts/kconfig/merge_config.sh does; `make olddefconfig` then settles dependencies."""
    kept = []
    for line in base.splitlines():
        match = _SET.match(line) or _UNSET.match(line.strip())
        if match is None or match.group(1) not in wanted:
            kept.append(line)
    kept.append("# initkit: the fragments")
    for option in wanted.values():
        kept.append(f"# {option.name} is not set" if option.value == NOT_SET
                    else f"{option.name}={option.value}")
    return "\n".join(kept) + "\n"


def mismatches(wanted: dict[str, Option], final: dict[str, Option]) -> list[str]:
    """The wanted options the final .config does not hold as asked, each described
    ("CONFIG_X=y (from FILE:LINE) is not set"); empty when all came through."""
    found = []
    for option in wanted.values():
        got = final.get(option.name)
        value = got.value if got is not None else NOT_SET
        if value != option.value:
            state = "is not set" if value == NOT_SET else f"became {value}"
            found.append(f"{option.name}={option.value} (from {option.source}) {state}")
    return found


def check(wanted: dict[str, Option], config: Path) -> None:
    """InitkitError naming every wanted option that ``config`` (the final .config) lacks."""
    with reading(config, "kernel .config"):
        final = parse_config(config.read_text(), str(config))
    missing = mismatches(wanted, final)
    if missing:
        raise InitkitError(
            f"the kernel configuration {config} lost {len(missing)} option(s) of the "
            f"fragments: {'; '.join(missing)}. Kconfig drops an option whose dependencies "
            "are off and turns one on that another option selects: add the dependencies, or "
            "turn off what selects it, in a fragment (`make menuconfig`, then / and the "
            "option's name, shows 'Depends on' and 'Selected by')"
        )
