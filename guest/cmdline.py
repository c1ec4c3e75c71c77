"""The kernel command line, split by the kernel's own rules (lib/cmdline.c next_arg).

Parsing works on bytes, as the kernel does: its isspace() also counts 0xA0 as a space,
and a NUL ends the string. Pieces are decoded as UTF-8 with surrogateescape, so any
byte reaches exec() unchanged. Malformed input never raises; it yields what parses.
"""

from __future__ import annotations

# The kernel's isspace(): the C locale's six, plus 0xA0 (its ctype table is Latin-1).
_SPACES = frozenset(b" \t\n\v\f\r\xa0")
_QUOTE = 0x22
_EQUALS = 0x3D


class Param:
    """One ``key`` or ``key=value``; ``value`` is None for a bare flag, "" for ``key=``."""

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: str | None) -> None:
        self.key = key
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Param) and (self.key, self.value) == (other.key, other.value)

    def __hash__(self) -> int:
        return hash((self.key, self.value))

    def __repr__(self) -> str:
        return f"Param({self.key!r}, {self.value!r})"

    def word(self) -> str:
        """The parameter as the kernel hands it to init: ``key=value`` or ``key``."""
        return self.key if self.value is None else f"{self.key}={self.value}"


class Cmdline:
    """The kernel's part and the part after ``--`` (which the kernel leaves to init).

    Lookups read both parts, since init is who both are addressed to; a key given
    more than once takes its last value, as most kernel parameters do.
    """

    __slots__ = ("init_params", "params")

    def __init__(self, params: tuple[Param, ...] = (), init_params: tuple[Param, ...] = ()):
        self.params = params
        self.init_params = init_params

    def __repr__(self) -> str:
        return f"Cmdline({self.params!r}, {self.init_params!r})"

    def _all(self) -> tuple[Param, ...]:
        return self.params + self.init_params

    def has(self, key: str) -> bool:
        """True if ``key`` appears, as a flag or with a value."""
        return any(p.key == key for p in self._all())

    def value(self, key: str) -> str | None:
        """The last value given to ``key``; None if absent or only a bare flag."""
        for param in reversed(self._all()):
            if param.key == key:
                return param.value
        return None

    def first_of(self, keys: tuple[str, ...]) -> str | None:
        """The first of ``keys`` that appears (``keys`` in priority order), else None."""
        return next((key for key in keys if self.has(key)), None)

    def init_args(self) -> list[str]:
        """The words after ``--``, as the kernel passes them to init's argv."""
        return [p.word() for p in self.init_params]


def parse(raw: bytes | str) -> Cmdline:
    """Split a command line (the bytes of /proc/cmdline) into parameters."""
    params: list[Param] = []
    init_params: list[Param] = []
    target = params
    for _, param in words(raw):
        if target is params and param.value is None and param.key == "--":
            target = init_params
            continue
        target.append(param)
    return Cmdline(tuple(params), tuple(init_params))


def words(raw: bytes | str) -> list[tuple[str, Param]]:
    """Each argument as written (quotes kept) with what it parses to, ``--`` included:
    for a host that edits a command line by the guest's rules."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    nul = data.find(b"\0")
    if nul >= 0:
        data = data[:nul]
    found: list[tuple[str, Param]] = []
    pos = _skip_spaces(data, 0)
    while pos < len(data):
        key, value, end = _next_arg(data, pos)
        param = Param(_decode(key), None if value is None else _decode(value))
        found.append((_decode(data[pos:end]), param))
        pos = _skip_spaces(data, end)
    return found


def _decode(piece: bytes) -> str:
    return piece.decode("utf-8", "surrogateescape")


def _skip_spaces(data: bytes, pos: int) -> int:
    while pos < len(data) and data[pos] in _SPACES:
        pos += 1
    return pos


def _next_arg(data: bytes, pos: int) -> tuple[bytes, bytes | None, int]:
    """One argument from ``pos``: (key, value or None, where the argument ends)."""
    quoted = data[pos] == _QUOTE
    if quoted:
        pos += 1
    in_quote = quoted
    start = pos
    # Offset of the first '=' from start; 0 means none, so a leading '=' stays in the
    # key exactly as in the kernel.
    equals = 0
    end = pos
    while end < len(data):
        char = data[end]
        if char in _SPACES and not in_quote:
            break
        if equals == 0 and char == _EQUALS:
            equals = end - start
        if char == _QUOTE:
            in_quote = not in_quote
        end += 1
    last_is_quote = end > start and data[end - 1] == _QUOTE
    if equals == 0:
        key_end = end - 1 if quoted and last_is_quote else end
        key, value = data[start:key_end], None
    else:
        key = data[start:start + equals]
        value_start, value_end = start + equals + 1, end
        if value_start < end and data[value_start] == _QUOTE:
            value_start += 1
            if last_is_quote:
                value_end = end - 1
        elif quoted and last_is_quote:
            value_end = end - 1
        value = data[value_start:max(value_start, value_end)]
    return key, value, end
