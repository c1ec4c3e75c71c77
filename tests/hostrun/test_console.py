"""The console filter and status scanner, fed the byte streams a serial console gives."""

from __future__ import annotations

import pytest

from guest.contract import ExitStatus
from hostrun.console import ConsoleFilter, StatusScanner

NONCE = "0123456789abcdef"
RECORD = f"\r\ninitkit-status:{NONCE}:exit=3\r\n".encode()


def shown(stream: bytes, *, chunk: int | None = None, **kwargs: bool) -> bytes:
    """Everything the filter shows for ``stream`` fed in ``chunk``-byte pieces."""
    filt = ConsoleFilter(NONCE, **kwargs)
    size = chunk or len(stream) or 1
    out = b"".join(filt.feed(stream[i : i + size]) for i in range(0, len(stream), size))
    return out + filt.flush(final=True)


@pytest.mark.parametrize("chunk", [None, 1, 2, 3, 7])
def test_program_bytes_come_out_exactly(chunk: int | None) -> None:
    stream = b"Hello, world!\r\n" + RECORD + b"[    1.300000] reboot: Power down\r\n"
    assert shown(stream, chunk=chunk) == b"Hello, world!\n"


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_output_without_final_newline_keeps_none(chunk: int | None) -> None:
    assert shown(b"no newline" + RECORD, chunk=chunk) == b"no newline"


def test_blank_lines_of_the_program_are_kept() -> None:
    assert shown(b"a\r\n\r\n\r\nb\r\n" + RECORD) == b"a\n\n\nb\n"


@pytest.mark.parametrize("chunk", [None, 1, 4])
def test_kernel_lines_hidden_unless_verbose(chunk: int | None) -> None:
    stream = (b"[    0.232747] PCI: Fatal: No config space\r\nout\r\n"
              b"[    1.2] late message\r\nmore\r\n" + RECORD)
    assert shown(stream, chunk=chunk) == b"out\nmore\n"
    verbose = shown(stream, chunk=chunk, show_kernel=True)
    assert verbose == (b"[    0.232747] PCI: Fatal: No config space\nout\n"
                       b"[    1.2] late message\nmore\n")


def test_kernel_line_between_output_and_record_keeps_exact_output() -> None:
    stream = b"done\r\n[    2.000001] virtiofs: something\r\n" + RECORD
    assert shown(stream) == b"done\n"


@pytest.mark.parametrize("text", [b"[INFO] starting\r\n", b"[1] item\r\n", b"[ 12 ] x\r\n",
                                  b"[]\r\n", b"initkit: running program\r\n",
                                  b"initkit-status:ffffffffffffffff:exit=0\r\n"])
def test_lookalikes_are_shown(text: bytes) -> None:
    assert shown(text + RECORD) == text.replace(b"\r\n", b"\n")


def test_raw_mode_keeps_crlf_and_carriage_returns() -> None:
    stream = b"/ # ls\r\nbin\r\n50%\r60%\r\n" + RECORD
    assert shown(stream, crlf=False) == b"/ # ls\r\nbin\r\n50%\r60%\r\n"
    assert shown(stream) == b"/ # ls\nbin\n50%\r60%\n"


def test_prompt_without_newline_is_shown_at_once() -> None:
    filt = ConsoleFilter(NONCE)
    assert filt.feed(b"/ # ") == b"/ # "
    assert not filt.holding


def test_held_start_is_released_by_flush() -> None:
    filt = ConsoleFilter(NONCE)
    assert filt.feed(b"ini") == b""
    assert filt.holding
    assert filt.flush() == b"ini"
    assert filt.feed(b"tial\r\n") == b"tial"


def test_record_split_across_reads_never_leaks() -> None:
    filt = ConsoleFilter(NONCE)
    out = b""
    for piece in (b"x\r", b"\n\r", b"\ninitkit-sta", b"tus:", NONCE.encode(), b":exit=0\r\n"):
        out += filt.feed(piece)
    assert out + filt.flush(final=True) == b"x\n"


def test_record_after_unfinished_line_is_cut_out() -> None:
    filt = ConsoleFilter(NONCE)
    out = filt.feed(b"abc")
    out += filt.feed(f"initkit-status:{NONCE}:exit=0\r\n".encode())
    assert out + filt.flush(final=True) == b"abc"


def test_userspace_output_ignores_kernel_lines() -> None:
    filt = ConsoleFilter(NONCE)
    filt.feed(b"[    0.1] hello\r\n\r\n")
    assert not filt.userspace_output
    filt.feed(b"/ # ")
    assert filt.userspace_output


@pytest.mark.parametrize(("line", "status"), [
    (b"initkit-status:%s:exit=0\n", ExitStatus.exited(0)),
    (b"initkit-status:%s:exit=255\r\n", ExitStatus.exited(255)),
    (b"initkit-status:%s:signal=9\r\n", ExitStatus.killed(9)),
])
def test_scanner_reads_status(line: bytes, status: ExitStatus) -> None:
    scanner = StatusScanner(NONCE)
    data = b"out\r\n" + line.replace(b"%s", NONCE.encode())
    for i in range(len(data)):
        scanner.feed(data[i : i + 1])
    assert scanner.status == status


@pytest.mark.parametrize("line", [
    b"initkit-status:ffffffffffffffff:exit=0\n",  # another run's nonce
    b"initkit-status:%s:exit=256\n",
    b"initkit-status:%s:exit=1",  # not finished
    b"initkit-status:%s:exited=0\n",
    b"initkit-status:%s:signal=0\n",  # no signal has the number 0
    b"initkit-status:%s:signal=128\n",  # nor above 127: waitpid cannot report it
    b"initkit-status:%s:exit=1 trailing\n",
])
def test_scanner_rejects_malformed_or_foreign(line: bytes) -> None:
    scanner = StatusScanner(NONCE)
    scanner.feed(line.replace(b"%s", NONCE.encode()))
    assert scanner.status is None


def test_scanner_sees_panic_and_init_start() -> None:
    scanner = StatusScanner(NONCE)
    scanner.feed(b"[    1.1] Run /init as init process\r\n[    1.5] Kernel panic - not sy")
    assert scanner.init_started and scanner.panic is None
    scanner.feed(b"ncing: Attempted to kill init! exitcode=0x00000100\r\n")
    assert scanner.panic == ("Kernel panic - not syncing: Attempted to kill init! "
                             "exitcode=0x00000100")


def test_scanner_sees_the_ready_record_and_the_filter_hides_it() -> None:
    scanner = StatusScanner(NONCE)
    shown = ConsoleFilter(NONCE, crlf=False)
    stream = f"\ninitkit-status:{NONCE}:rea".encode()
    scanner.feed(stream)
    out = shown.feed(stream)
    assert (scanner.ready, scanner.status) == (False, None)  # not `not`: mypy would narrow
    rest = f"dy\r\nHello\r\n\ninitkit-status:{NONCE}:exit=0\r\n".encode()
    scanner.feed(rest)
    out += shown.feed(rest) + shown.flush(final=True)
    assert scanner.ready and scanner.status == ExitStatus.exited(0)
    assert out == b"Hello\r\n"


def test_a_foreign_ready_record_opens_nothing() -> None:
    scanner = StatusScanner(NONCE)
    scanner.feed(b"\ninitkit-status:ffffffffffffffff:ready\r\n")
    assert not scanner.ready
