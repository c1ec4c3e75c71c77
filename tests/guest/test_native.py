"""The native init (guest/native/init.c) decides as the Python init does, or hands over.

Its parity build prints the plan it makes for a command line; every plan it would carry
out itself must be the one guest/plan.py makes (argv, nonce, tag, echo, whether the store
is required), and what it does not understand must go to the Python init. Its messages'
pieces (errno names, Python's repr) are compared with CPython's own. Booting it for real
is tests/e2e/test_native_boot.py.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from realparts import missing_part

from guest import contract
from guest.cmdline import parse
from guest.handover import native_takes
from guest.plan import MS_REMOUNT, Mount, Spawn, make_plan
from initbuilder import nativeinit
from initbuilder.image import Image
from initbuilder.runtime import _add_inits
from initkit.errors import InitkitError

SHELLS: dict[str, tuple[str, ...] | None] = {
    "/bin/sh": ("/bin/sh",), "/bin/busybox": ("/bin/busybox", "sh"), "-": None}
NONCE = "0123456789abcdef"


@pytest.fixture(scope="module")
def parity() -> Path:
    if nativeinit.compiler() is None:
        missing_part(f"no C compiler ({nativeinit.HOW_TO_GET})")
    built = nativeinit.build_native(test=True)
    assert built.path is not None, built.why_not
    return built.path


def c_plans(binary: Path, cases: list[tuple[str, bytes]]) -> list[list[str]]:
    data = b"".join(shell.encode() + b"\0" + raw + b"\0" for shell, raw in cases)
    out = subprocess.run([binary, "--plan"], input=data, capture_output=True, check=True,
                         timeout=60).stdout.decode()
    plans = [block.splitlines() for block in out.split("end\n")[:-1]]
    assert len(plans) == len(cases)
    return plans


def python_plan(shell: str, raw: bytes) -> list[str] | None:
    """What the Python init plans, in the parity build's words; None where the native
    init must not be the one to act (a warning to print, debug, no spawn...)."""
    plan = make_plan(parse(raw), shell=SHELLS[shell], environ={}, applets=None, modules=None)
    if plan.warnings or plan.debug or not isinstance(plan.action, Spawn):
        return None
    mounts = [s for s in plan.steps if isinstance(s, Mount) and s.target == contract.STORE]
    kinds = [m.fstype or ("remount" if m.flags & MS_REMOUNT else "bind") for m in mounts]
    return ["native", f"nonce={plan.nonce}", f"echo={int(plan.echo)}",
            f"store={int(mounts[0].fatal)}", *(f"mount={kind}:{m.source}"
                                              for kind, m in zip(kinds, mounts, strict=True)),
            *(f"argv={arg}" for arg in plan.action.argv)]


NATIVE = [
    ("/bin/sh", b"console=ttyS0 tvix.exec=/nix/store/x-hello/bin/hello\n"),
    ("/bin/sh", f'tvix.exec="/nix/store/x/bin/p a  b" initkit.nonce={NONCE}'.encode()),
    ("/bin/sh", b'tvix.run="echo hi; exit 3" initkit.noecho quiet'),
    ("/bin/busybox", b"tvix.run=true"),
    ("/bin/sh", b"tvix.shell"),
    ("-", b"tvix.shell=/nix/store/x-bash/bin/bash"),
    ("/bin/sh", b'"tvix.exec=/p x" tvix.tag=other'),
    ("/bin/sh", b"tvix.tag= tvix.exec=/p tvix.run=ignored"),
    ("/bin/sh", b"initkit.nonce tvix.exec=/p"),
    ("/bin/sh", b"tvix.exec=/first tvix.exec=/last"),
    ("/bin/sh", b"tvix.exec=/p initkit.test.store=/t"),
    ("/bin/sh", b"tvix.shell initkit.test.store="),
]
PYTHON = [
    ("/bin/sh", b"tvix.find"),
    ("/bin/sh", b"init=/nix/store/x/init"),
    ("/bin/sh", b"initkit.channel=org.initkit.control"),
    ("/bin/sh", b"tvix.exec=/p initkit.debug"),
    ("/bin/sh", b"tvix.exec=/p tvix.typo"),
    ("/bin/sh", b"tvix.exec=/p -- single"),
    ("/bin/sh", "tvix.exec=/p\u2003x".encode()),
    ("/bin/sh", b"tvix.exec=/p\tx"),
    ("/bin/sh", b"tvix.exec=/p initkit.nonce=xyz"),
    ("/bin/sh", b"tvix.exec= "),
    ("/bin/sh", b"tvix.exec"),
    ("-", b"tvix.run=true"),
    ("-", b"tvix.shell"),
    ("/bin/sh", b"console=ttyS0"),
    ("/bin/sh", b"x " * 1100 + b"tvix.exec=/p"),  # more words than it keeps
    ("/bin/sh", b'tvix.exec="/p' + b" a" * 300 + b'"'),  # more arguments than it takes
]


def _takes(shell: str, raw: bytes) -> bool:
    """guest/handover.py's answer, which hostrun chooses its initrd by."""
    return native_takes(raw, shell=shell != "-")


def test_the_one_shot_actions_are_carried_out_natively(parity: Path) -> None:
    for case, got in zip(NATIVE, c_plans(parity, NATIVE), strict=True):
        assert got == python_plan(*case), case
        assert _takes(*case), case


def test_everything_else_goes_to_the_python_init(parity: Path) -> None:
    for case, got in zip(PYTHON, c_plans(parity, PYTHON), strict=True):
        assert got == ["python"], case
        assert not _takes(*case), case


def _random_word(rng: random.Random) -> str:
    keys = ["tvix.exec", "tvix.run", "tvix.shell", "tvix.tag", "initkit.nonce",
            "initkit.noecho", "tvix.find", "init", "console", "quiet", "tvix.x", "--", "",
            "initkit.test.store"]
    values = [NONCE, "/p", "/nix/store/x/bin/p a  b", "", " ", "echo 'a b'; exit 3", "x=y",
              '\\', "ttyS0", "\t", "\xa0", "\u00e9", '"', "a\"b"]
    key = rng.choice(keys)
    if rng.random() < 0.3:
        return key
    value = rng.choice(values) + (rng.choice(values) if rng.random() < 0.2 else "")
    quoting = rng.random()
    if quoting < 0.3 or (" " in value and quoting < 0.8):
        return f'{key}="{value}"'
    if quoting < 0.4:
        return f'"{key}={value}"'
    return f"{key}={value}"


def test_random_command_lines_agree_or_go_to_python(parity: Path) -> None:
    rng = random.Random(1)
    cases = []
    for _ in range(4000):
        words = [_random_word(rng) for _ in range(rng.randint(1, 6))]
        raw = rng.choice([" ", "  ", " \n"]).join(words) + rng.choice(["", "\n", " "])
        encoding = "latin-1" if rng.random() < 0.5 else "utf-8"
        cases.append((rng.choice(list(SHELLS)), raw.encode(encoding, "replace")))
    native = 0
    for case, got in zip(cases, c_plans(parity, cases), strict=True):
        assert _takes(*case) == (got != ["python"]), case  # handover.py is init.c's rule
        if got != ["python"]:
            native += 1
            assert got == python_plan(*case), case
    assert native > 150  # the generator does reach the native path


def test_errno_names_and_texts_are_cpythons(parity: Path) -> None:
    out = subprocess.run([parity, "--errno"], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        number, text = line.split(" ", 1)
        code = int(number)
        if code not in errno.errorcode:
            continue  # glibc knows a name this CPython does not
        assert text == f"errno {code} {errno.errorcode[code]} ({os.strerror(code)})"


@pytest.mark.parametrize("text", ["tvix", "a'b", 'a"b', "a'\"b", "back\\slash", ""])
def test_quoted_names_are_pythons_repr(parity: Path, text: str) -> None:
    out = subprocess.run([parity, "--repr", text], capture_output=True, text=True, check=True)
    assert out.stdout == repr(text) + "\n"


def test_the_native_init_compiles_warning_free_and_reproducibly(tmp_path: Path) -> None:
    cc = nativeinit.compiler()
    if cc is None:
        missing_part(f"no C compiler ({nativeinit.HOW_TO_GET})")
    header = tmp_path / "contract.h"
    header.write_text(nativeinit.contract_header())
    strict = subprocess.run([*cc, *nativeinit.FLAGS, "-Werror", "-include", str(header), "-o",
                             str(tmp_path / "strict"), str(nativeinit.SOURCE)],
                            capture_output=True, text=True)
    assert strict.returncode == 0, strict.stderr
    first = nativeinit.build_native(output=tmp_path / "a")
    second = nativeinit.build_native(output=tmp_path / "b")
    assert first.path is not None and second.path is not None, first.why_not
    assert first.path.read_bytes() == second.path.read_bytes()
    with first.path.open("rb") as f:  # static: nothing for a loader to find in the initrd
        assert not [seg for seg in ELFFile(f).iter_segments() if seg["p_type"] == "PT_INTERP"]


def test_without_a_compiler_the_python_init_is_init(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    built = nativeinit.native_init()
    assert built.path is None and "/nonexistent/cc" in built.why_not
    image = Image()
    _add_inits(image, b"#!python-init\n", None)
    assert image["init"].data == b"#!python-init\n"
    assert image.get(contract.PYTHON_INIT.lstrip("/")) is None
    assert "the Python init is /init" in caplog.text and "/nonexistent/cc" in caplog.text
    with pytest.raises(InitkitError, match=r"native init cannot be built.*nonexistent"):
        _add_inits(Image(), b"#!python-init\n", True)


def test_a_compiler_that_fails_is_a_reason_and_leaves_no_cache_entry(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INITKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "false")
    built = nativeinit.native_init()
    assert built.path is None and built.why_not.startswith("false failed")
    assert list((tmp_path / "cache" / "native-init").iterdir()) == []


def test_with_a_compiler_init_is_native_and_the_python_init_is_beside_it(parity: Path) -> None:
    image = Image()
    _add_inits(image, b"#!python-init\n", None)
    init = image["init"]
    assert init.host is not None and init.host.read_bytes().startswith(b"\x7fELF")
    assert image[contract.PYTHON_INIT.lstrip("/")].data == b"#!python-init\n"
    plain = Image()
    _add_inits(plain, b"#!python-init\n", False)
    assert plain["init"].data == b"#!python-init\n"


def test_a_guest_python_of_another_machine_gets_the_python_init(
        parity: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The compiler makes the native init for this host; a --python for another machine
    (run here through binfmt) must not get it as its /init."""
    host = Path(os.path.realpath(sys.executable))
    data = bytearray(host.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # e_machine: EM_AARCH64
    other = tmp_path / "python3-aarch64"
    other.write_bytes(bytes(data))
    image = Image()
    _add_inits(image, b"#!python-init\n", None, machine_of=other)
    assert image["init"].data == b"#!python-init\n"
    assert "compiled for EM_X86_64" in caplog.text and "is for EM_AARCH64" in caplog.text
    same = Image()
    _add_inits(same, b"#!python-init\n", None, machine_of=host)
    assert same["init"].host is not None
