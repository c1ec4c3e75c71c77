"""guest.cmdline: the kernel's splitting rules, including its odd corners."""

from __future__ import annotations

import pytest

from guest.cmdline import Cmdline, Param, parse


def pairs(cmdline: Cmdline) -> list[tuple[str, str | None]]:
    return [(p.key, p.value) for p in cmdline.params]


def test_flags_values_and_trailing_newline() -> None:
    got = parse(b"console=ttyS0 quiet tvix.find initkit.nonce=00ff\n")
    assert pairs(got) == [("console", "ttyS0"), ("quiet", None), ("tvix.find", None),
                          ("initkit.nonce", "00ff")]


def test_spaces_of_every_kind_separate() -> None:
    assert pairs(parse(b"  a\tb\nc\x0bd\x0ce\rf  ")) == [
        (k, None) for k in "abcdef"
    ]


def test_double_quotes_keep_spaces_and_are_removed() -> None:
    got = parse(b'tvix.exec="/nix/store/x-hello/bin/hello --greeting hi" quiet')
    assert got.value("tvix.exec") == "/nix/store/x-hello/bin/hello --greeting hi"
    assert got.has("quiet")


def test_quote_around_the_whole_parameter() -> None:
    # The kernel accepts "key=value with spaces" quoted as a whole, too.
    got = parse(b'"tvix.run=echo a  b" x')
    assert pairs(got) == [("tvix.run", "echo a  b"), ("x", None)]


def test_quote_in_the_middle_of_a_value_stays() -> None:
    # Only a quote opening the value is stripped (with the closing one); inner ones stay.
    got = parse(b'tvix.run=echo" a b" next')
    assert pairs(got) == [("tvix.run", 'echo" a b"'), ("next", None)]


def test_unterminated_quote_runs_to_the_end() -> None:
    got = parse(b'a=1 tvix.run="echo hi there')
    assert pairs(got) == [("a", "1"), ("tvix.run", "echo hi there")]


def test_empty_value_differs_from_a_flag() -> None:
    got = parse(b"tvix.shell= tvix.find")
    assert got.value("tvix.shell") == ""
    assert got.has("tvix.find") and got.value("tvix.find") is None
    assert parse(b'k=""').value("k") == ""
    assert parse(b'k="').value("k") == ""


def test_repeated_key_takes_the_last_value() -> None:
    got = parse(b"init=/a tvix.exec=/one tvix.exec=/two init=/b")
    assert got.value("tvix.exec") == "/two"
    assert got.value("init") == "/b"


def test_repeated_key_last_flag_wins_over_earlier_value() -> None:
    got = parse(b"k=v k")
    assert got.has("k") and got.value("k") is None


def test_only_the_first_equals_splits() -> None:
    assert pairs(parse(b"tvix.run=a=b==c")) == [("tvix.run", "a=b==c")]


def test_leading_equals_stays_in_the_key_as_in_the_kernel() -> None:
    assert pairs(parse(b"=x =")) == [("=x", None), ("=", None)]


def test_double_dash_ends_the_kernels_part() -> None:
    got = parse(b'quiet -- single tvix.x="a b" -- more')
    assert pairs(got) == [("quiet", None)]
    assert got.init_params == (Param("single", None), Param("tvix.x", "a b"),
                               Param("--", None), Param("more", None))
    assert got.init_args() == ["single", "tvix.x=a b", "--", "more"]


def test_lookups_read_the_init_part_too() -> None:
    got = parse(b"tvix.tag=a -- tvix.find tvix.tag=b")
    assert got.has("tvix.find")
    assert got.value("tvix.tag") == "b"


def test_a_quoted_double_dash_is_still_the_separator() -> None:
    # parse_args() compares the key after next_arg() stripped the quotes.
    got = parse(b'a "--" x')
    assert pairs(got) == [("a", None)]
    assert got.init_args() == ["x"]


def test_nul_ends_the_line() -> None:
    assert pairs(parse(b"a b\0c d")) == [("a", None), ("b", None)]


def test_0xa0_is_a_space_to_the_kernel() -> None:
    # lib/ctype.c marks 0xA0 as space: it splits even inside UTF-8 (U+00E0 is C3 A0).
    assert [p.key for p in parse(b"a\xa0b").params] == ["a", "b"]
    assert len(parse("x=\u00e0".encode()).params) == 1  # C3 ends "x", A0 separates
    assert parse("x=\u00e0".encode()).value("x") == "\udcc3"


@pytest.mark.parametrize("raw", [
    b"", b"   ", b"\n", b'"', b'""', b"=", b'="', b'"=', b"\xff\xfe\x80", b"\x00",
    bytes(range(256)), b'a="b c" "d=e f', b"-- --", b"--",
])
def test_garbage_never_raises(raw: bytes) -> None:
    got = parse(raw)
    for param in (*got.params, *got.init_params):
        assert isinstance(param.key, str)
        assert param.value is None or isinstance(param.value, str)


def test_garbage_bytes_round_trip_to_the_same_bytes() -> None:
    got = parse(b"tvix.exec=/nix/store/\xff\xfe-x/bin/y")
    value = got.value("tvix.exec")
    assert value is not None
    assert value.encode("utf-8", "surrogateescape") == b"/nix/store/\xff\xfe-x/bin/y"


def test_str_input_is_accepted() -> None:
    assert parse("a=\u00e9 b").value("a") == "\u00e9"


def test_absent_key() -> None:
    got = parse(b"a=1")
    assert not got.has("b")
    assert got.value("b") is None
