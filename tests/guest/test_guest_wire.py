"""guest.wire: frames, fields and the handshake of the control channel."""

from __future__ import annotations

import pytest

from guest import wire


def test_frame_layout_is_length_kind_stream_payload() -> None:
    data = wire.frame(wire.STDOUT, 7, b"abc")
    assert data == (8).to_bytes(4, "big") + bytes([wire.STDOUT]) + (7).to_bytes(4, "big") + b"abc"


def test_frames_come_out_whole_whatever_the_reads() -> None:
    stream = b"".join(wire.frame(wire.DATA, n, bytes([n]) * n) for n in range(1, 40))
    for step in (1, 3, 64, len(stream)):
        reader = wire.FrameReader(1 << 12)
        got = []
        for start in range(0, len(stream), step):
            reader.feed(stream[start:start + step])
            while (item := reader.next()) is not None:
                got.append(item)
        assert got == [(wire.DATA, n, bytes([n]) * n) for n in range(1, 40)]
        assert reader.pending == 0


def test_an_oversized_length_is_refused_before_its_body_arrives() -> None:
    reader = wire.FrameReader(1 << 12)
    reader.feed((1 << 31).to_bytes(4, "big"))  # nothing else: no body is awaited
    with pytest.raises(wire.ProtocolError, match="over the limit of 4096"):
        reader.next()


def test_a_frame_too_short_for_its_header_is_refused() -> None:
    reader = wire.FrameReader()
    reader.feed((2).to_bytes(4, "big") + b"xx")
    with pytest.raises(wire.ProtocolError, match="too short"):
        reader.next()


ARGV = [b"prog", b"", b"a b", b"\xff\xfe\n\"'", b"x" * 100_000]


def test_structured_fields_round_trip_arbitrary_bytes() -> None:
    fields = {"argv": ARGV, "env": [(b"K\xff", b"v=\n"), (b"E", b"")], "replace_env": True,
              "cwd": b"/t\xffmp", "stdin": wire.STDIN_BYTES, "input": bytes(range(256)),
              "timeout_ms": 2**40, "keep_background": False}
    assert wire.decode(wire.EXEC, wire.encode(wire.EXEC, fields)) == {
        **fields, "env": [(b"K\xff", b"v=\n"), (b"E", b"")]}
    exit_fields = wire.decode(wire.EXIT, wire.encode(wire.EXIT, {"code": 137, "signal": 9,
                                                                 "background": [1, 2**31]}))
    assert exit_fields["background"] == [1, 2**31] and exit_fields["error"] == ""
    assert exit_fields["timed_out"] is False and exit_fields["code"] == 137


def test_unknown_fields_are_a_bug_and_appended_ones_are_ignored() -> None:
    with pytest.raises(KeyError, match="argvv"):
        wire.encode(wire.EXEC, {"argvv": []})
    payload = wire.encode(wire.KILL, {"signal": 15}) + b"a newer peer's field"
    assert wire.decode(wire.KILL, payload) == {"signal": 15}


@pytest.mark.parametrize("payload", [
    b"", b"\x05a", b"\x80\x80", b"\xff" * 11, b"\x01\x02",
])
def test_malformed_fields_are_protocol_errors(payload: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.decode(wire.EXEC, payload)


def test_a_list_longer_than_its_frame_is_refused_without_allocating() -> None:
    payload = b"\xff\xff\xff\xff\x0f"  # argv of 2**32-1 items in five bytes
    with pytest.raises(wire.ProtocolError, match="shorter frame"):
        wire.decode(wire.EXEC, payload)


def _hello(**fields: object) -> tuple[int, int, bytes]:
    reader = wire.FrameReader()
    defaults: dict[str, object] = {"magic": wire.MAGIC, "min_version": 1, "max_version": 1,
                                   "max_frame": 1 << 20, "window": 1 << 16,
                                   "software": "test"}
    reader.feed(wire.message(wire.HELLO, wire.SESSION, **{**defaults, **fields}))
    got = reader.next()
    assert got is not None
    return got


def test_hello_agrees_on_the_newest_common_version() -> None:
    peer = wire.accept_hello(*_hello(max_version=9))
    assert peer.version == wire.VERSION and peer.window == 1 << 16
    assert wire.data_limit(peer) == wire.CHUNK


@pytest.mark.parametrize(("fields", "message"), [
    ({"magic": b"nope"}, "magic"),
    ({"min_version": 5, "max_version": 7}, "no common protocol version"),
    ({"max_frame": 100}, "frame limit"),
    ({"max_frame": wire.HARD_MAX_FRAME + 1}, "frame limit"),
    ({"window": 0}, "window"),
])
def test_hello_refusals_say_why(fields: dict[str, object], message: str) -> None:
    with pytest.raises(wire.ProtocolError, match=message):
        wire.accept_hello(*_hello(**fields))


def test_the_first_frame_must_be_a_hello() -> None:
    with pytest.raises(wire.ProtocolError, match="not a hello"):
        wire.accept_hello(wire.EXEC, 1, b"")


def test_wire_imports_nothing() -> None:
    """The guest loads it at boot: not even struct."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(wire.__file__).read_text())
    imported = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    assert all(isinstance(node, ast.ImportFrom) and node.module == "typing"
               for node in imported)  # only under TYPE_CHECKING
