"""The control channel's protocol, shared by the guest agent and the host client.

Framed, versioned, binary (docs/guest.md, "The control channel"). A frame is
``length:u32 | kind:u8 | stream:u32 | payload``, big-endian, ``length`` counting what
follows it. Structured payloads are a fixed list of fields per kind (``SCHEMAS``),
integers as LEB128 varints and byte strings length-prefixed, so argv elements, paths
and environment pairs travel as arbitrary bytes. Data kinds carry raw bytes.

No imports at all: the guest loads this at boot under TCG, where each import costs.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (slow at boot)
if TYPE_CHECKING:
    from typing import Any

MAGIC = b"initkit-wire"
VERSION = 1  # the newest version this module speaks
MIN_VERSION = 1  # the oldest
SOFTWARE = "initkit"

HEADER = 9  # length (4), kind (1), stream (4)
_LENGTH = 4
# The largest frame anyone may announce (the length field's value, header included
# minus the length itself): exec's argv and environment must fit in one frame, and the
# kernel's own limit on them (ARG_MAX) is 2 MiB by default.
HARD_MAX_FRAME = 1 << 22
# Until the peer's hello has arrived, frames are limited to this.
HELLO_MAX_FRAME = 1 << 12
DEFAULT_MAX_FRAME = HARD_MAX_FRAME
# Bytes of data a receiver accepts per request and direction before granting more.
DEFAULT_WINDOW = 1 << 20
# The most data one data frame carries (a sender's choice; never more than the window).
CHUNK = 1 << 16
MAX_STREAM = (1 << 32) - 1
SESSION = 0  # the stream of hello, shutdown and session-wide errors

# -- kinds ----------------------------------------------------------------------------
HELLO = 1  # both ways, first frame of each side
EXEC = 2  # host -> guest: start a command on a new stream
STDIN = 3  # host -> guest: data for the command's stdin
STDIN_EOF = 4  # host -> guest: close its stdin
STDOUT = 5  # guest -> host: data the command wrote to stdout
STDERR = 6  # guest -> host: ... to stderr
EXIT = 7  # guest -> host: the command's own process ended (last frame of the stream)
KILL = 8  # host -> guest: send a signal to the stream's process group / cancel a transfer
PUT = 9  # host -> guest: a file (or a directory as a tar stream) follows as DATA, END
DATA = 10  # both ways: transfer data
END = 11  # both ways: end of a transfer (from the guest: the last frame of the stream)
GET = 12  # host -> guest: send a file (or a directory as a tar stream) as DATA, END
WINDOW = 13  # both ways: the sender of this frame accepts ``increment`` more data bytes
ERROR = 14  # both ways: the request failed (last frame of the stream); on SESSION: fatal
SHUTDOWN = 15  # host -> guest: end every request and stop serving; the guest echoes it
PING = 16  # host -> guest, echoed back with the same payload (liveness, round trips)

NAMES = {HELLO: "hello", EXEC: "exec", STDIN: "stdin", STDIN_EOF: "stdin-eof",
         STDOUT: "stdout", STDERR: "stderr", EXIT: "exit", KILL: "kill", PUT: "put",
         DATA: "data", END: "end", GET: "get", WINDOW: "window", ERROR: "error",
         SHUTDOWN: "shutdown", PING: "ping"}
# Kinds whose payload is raw bytes, counted against the flow-control window.
DATA_KINDS = frozenset((STDIN, STDOUT, STDERR, DATA))
RAW_KINDS = frozenset((STDIN, STDOUT, STDERR, DATA, PING))

# exec's stdin modes
STDIN_NONE = 0  # /dev/null
STDIN_BYTES = 1  # the exec frame's ``input`` field, then end of file
STDIN_STREAM = 2  # STDIN frames, then STDIN_EOF
# put/get kinds
FILE = 0
TREE = 1  # a directory, as an uncompressed tar stream

# Field types: u unsigned varint, f flag (0/1), y bytes, t UTF-8 text, Y list of bytes,
# P list of (bytes, bytes) pairs, U list of unsigned.
SCHEMAS: dict[int, tuple[tuple[str, str], ...]] = {
    HELLO: (("magic", "y"), ("min_version", "u"), ("max_version", "u"),
            ("max_frame", "u"), ("window", "u"), ("software", "t")),
    EXEC: (("argv", "Y"), ("env", "P"), ("replace_env", "f"), ("cwd", "y"),
           ("stdin", "u"), ("input", "y"), ("timeout_ms", "u"), ("keep_background", "f")),
    STDIN_EOF: (),
    EXIT: (("code", "u"), ("signal", "u"), ("timed_out", "f"), ("background", "U"),
           ("background_killed", "f"), ("elapsed_us", "u"), ("error", "t")),
    KILL: (("signal", "u"),),
    PUT: (("path", "y"), ("mode", "u"), ("what", "u")),
    END: (("size", "u"), ("mode", "u")),
    GET: (("path", "y"), ("what", "u")),
    WINDOW: (("increment", "u"),),
    ERROR: (("message", "t"),),
    SHUTDOWN: (),
}
_DEFAULTS = {"u": 0, "f": False, "y": b"", "t": "", "Y": (), "P": (), "U": ()}


class ProtocolError(Exception):
    """The peer broke the protocol (a malformed or oversized frame, a bad field)."""


# -- frames ---------------------------------------------------------------------------
def frame(kind: int, stream: int, payload: bytes = b"") -> bytes:
    """One whole frame."""
    return ((len(payload) + HEADER - _LENGTH).to_bytes(4, "big") + bytes((kind,))
            + stream.to_bytes(4, "big") + payload)


def message(kind: int, stream: int, **fields: Any) -> bytes:
    """A frame of a structured kind; fields left out take their type's zero value."""
    return frame(kind, stream, encode(kind, fields))


class FrameReader:
    """Cuts a byte stream into frames. A length beyond ``max_frame`` is a protocol
    error raised before anything is allocated for it; so is a frame too short to hold
    its header. The buffer never holds more than one frame plus one read."""

    __slots__ = ("_buffer", "max_frame")

    def __init__(self, max_frame: int = HELLO_MAX_FRAME) -> None:
        self._buffer = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def next(self) -> tuple[int, int, bytes] | None:
        """The next whole frame as (kind, stream, payload), or None until one is in."""
        buffer = self._buffer
        if len(buffer) < _LENGTH:
            return None
        length = int.from_bytes(buffer[:_LENGTH], "big")
        if length > self.max_frame:
            raise ProtocolError(f"a frame of {length} bytes, over the limit of "
                                f"{self.max_frame}")
        if length < HEADER - _LENGTH:
            raise ProtocolError(f"a frame of {length} bytes, too short for its header")
        end = _LENGTH + length
        if len(buffer) < end:
            return None
        kind = buffer[_LENGTH]
        stream = int.from_bytes(buffer[_LENGTH + 1:HEADER], "big")
        payload = bytes(buffer[HEADER:end])
        del buffer[:end]  # bytearray deletes at the front without copying the rest
        return kind, stream, payload


# -- fields ---------------------------------------------------------------------------
def encode(kind: int, fields: dict[str, Any]) -> bytes:
    """The payload of a structured kind. Unknown field names are a bug (KeyError)."""
    schema = SCHEMAS[kind]
    unknown = set(fields) - {name for name, _ in schema}
    if unknown:
        raise KeyError(f"{NAMES.get(kind, kind)} has no fields {sorted(unknown)}")
    out = bytearray()
    for name, code in schema:
        value = fields.get(name, _DEFAULTS[code])
        if code == "u":
            _put_uint(out, value)
        elif code == "f":
            out.append(1 if value else 0)
        elif code == "y":
            _put_bytes(out, value)
        elif code == "t":
            _put_bytes(out, value.encode("utf-8", "surrogateescape"))
        elif code == "Y":
            _put_uint(out, len(value))
            for item in value:
                _put_bytes(out, item)
        elif code == "P":
            _put_uint(out, len(value))
            for key, item in value:
                _put_bytes(out, key)
                _put_bytes(out, item)
        else:  # "U"
            _put_uint(out, len(value))
            for item in value:
                _put_uint(out, item)
    return bytes(out)


def decode(kind: int, payload: bytes) -> dict[str, Any]:
    """The fields of a structured kind. Bytes after the known fields are ignored (a
    newer peer of the same version may append fields); anything malformed or missing
    is a ProtocolError."""
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise ProtocolError(f"frame kind {kind} has no fields to decode")
    fields: dict[str, Any] = {}
    pos = 0
    try:
        for name, code in schema:
            if code == "u":
                fields[name], pos = _get_uint(payload, pos)
            elif code == "f":
                flag = payload[pos]
                if flag > 1:
                    raise ProtocolError(f"flag {name} is {flag}")
                fields[name], pos = flag == 1, pos + 1
            elif code == "y":
                fields[name], pos = _get_bytes(payload, pos)
            elif code == "t":
                raw, pos = _get_bytes(payload, pos)
                fields[name] = raw.decode("utf-8", "replace")
            elif code == "Y":
                count, pos = _get_count(payload, pos)
                items = []
                for _ in range(count):
                    item, pos = _get_bytes(payload, pos)
                    items.append(item)
                fields[name] = items
            elif code == "P":
                count, pos = _get_count(payload, pos)
                pairs = []
                for _ in range(count):
                    key, pos = _get_bytes(payload, pos)
                    item, pos = _get_bytes(payload, pos)
                    pairs.append((key, item))
                fields[name] = pairs
            else:  # "U"
                count, pos = _get_count(payload, pos)
                numbers = []
                for _ in range(count):
                    number, pos = _get_uint(payload, pos)
                    numbers.append(number)
                fields[name] = numbers
    except IndexError:
        raise ProtocolError(f"{NAMES.get(kind, kind)} frame ends inside its fields"
                            ) from None
    return fields


def _put_uint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError(f"negative value {value} for an unsigned field")
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, value: bytes) -> None:
    _put_uint(out, len(value))
    out += value


def _get_uint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ProtocolError("a number longer than 64 bits")


def _get_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _get_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolError(f"a field of {length} bytes runs past the frame's end")
    return data[pos:end], end


def _get_count(data: bytes, pos: int) -> tuple[int, int]:
    count, pos = _get_uint(data, pos)
    if count > len(data) - pos:  # every item takes at least one byte
        raise ProtocolError(f"a list of {count} items in a shorter frame")
    return count, pos


# -- the handshake --------------------------------------------------------------------
def hello(max_frame: int = DEFAULT_MAX_FRAME, window: int = DEFAULT_WINDOW,
          software: str = SOFTWARE) -> bytes:
    """This side's hello frame: what it speaks and what it accepts."""
    return message(HELLO, SESSION, magic=MAGIC, min_version=MIN_VERSION,
                   max_version=VERSION, max_frame=max_frame, window=window,
                   software=software)


class Peer:
    """What the other side's hello said, checked, and the version both will speak."""

    __slots__ = ("max_frame", "software", "version", "window")

    def __init__(self, version: int, max_frame: int, window: int, software: str) -> None:
        self.version = version
        self.max_frame = max_frame
        self.window = window
        self.software = software


def accept_hello(kind: int, stream: int, payload: bytes) -> Peer:
    """Check the peer's first frame; ProtocolError says why it cannot be spoken to."""
    if kind != HELLO or stream != SESSION:
        raise ProtocolError(f"the first frame is {NAMES.get(kind, kind)!s} on stream "
                            f"{stream}, not a hello: is the other end an initkit agent?")
    fields = decode(HELLO, payload)
    if fields["magic"] != MAGIC:
        raise ProtocolError(f"the hello's magic is {fields['magic']!r}, not {MAGIC!r}")
    version = min(VERSION, fields["max_version"])
    if version < max(MIN_VERSION, fields["min_version"]):
        raise ProtocolError(
            f"no common protocol version: this side speaks {MIN_VERSION}..{VERSION}, "
            f"the other ({fields['software']}) {fields['min_version']}.."
            f"{fields['max_version']}; use the same initkit on both sides")
    if not HEADER - _LENGTH + CHUNK <= fields["max_frame"] <= HARD_MAX_FRAME:
        raise ProtocolError(f"the peer's frame limit {fields['max_frame']} is outside "
                            f"{HEADER - _LENGTH + CHUNK}..{HARD_MAX_FRAME}")
    if fields["window"] < 1:
        raise ProtocolError("the peer's window is 0")
    return Peer(version, fields["max_frame"], fields["window"], fields["software"])


def data_limit(peer: Peer) -> int:
    """The most data one frame to ``peer`` may carry."""
    return min(CHUNK, peer.max_frame - (HEADER - _LENGTH))
