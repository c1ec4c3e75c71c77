"""The native init (guest/native/init.c): compiled with the host's C compiler, cached.

/init is this static program when it can be built: it carries out the one-shot actions
itself (no interpreter starts: ~250 ms less per boot under TCG, docs/benchmarks.md) and
execs the Python init for every other command line (docs/guest.md, "Two inits"). The
names it shares with the host come from guest/contract.py as a generated header, so
the contract stays defined once. Without a compiler (or the static C library) the
Python init is /init, as before, and the build says so once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from guest import contract
from initbuilder.image import Image
from initkit.cache import CACHE_ELSEWHERE, cache_dir
from initkit.errors import InitkitError, writing
from initkit.files import private_scratch, scratch_beside

log = logging.getLogger("initkit.build")

SOURCE = Path(__file__).resolve().parent.parent / "guest" / "native" / "init.c"
# -Os and static: one small file with nothing for the loader to do at boot; stripped
# and without a build id, so the same compiler makes the same bytes (reproducible).
FLAGS = ("-std=gnu11", "-Os", "-static", "-s", "-Wall", "-Wextra", "-Wno-format-truncation",
         "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none")
_FORMAT = "initkit-native-init-1"  # bump when the cached layout changes
HOW_TO_GET = "apt-get install gcc libc6-dev"


class NativeUnavailable(InitkitError):
    """The native init was asked for and cannot be built (the reason says why)."""


@dataclass(frozen=True)
class NativeInit:
    """A built native init, or why there is none (``path`` None)."""

    path: Path | None
    why_not: str = ""


def contract_header() -> str:
    """The C header of the names guest/contract.py defines, as init.c uses them."""
    strings = {
        "EXEC_KEY": contract.EXEC_KEY, "RUN_KEY": contract.RUN_KEY,
        "SHELL_KEY": contract.SHELL_KEY, "TAG_KEY": contract.TAG_KEY,
        "NONCE_KEY": contract.NONCE_KEY, "NOECHO_KEY": contract.NOECHO_KEY,
        "TEST_STORE_KEY": contract.TEST_STORE_KEY,
        "INIT_KEY": contract.INIT_KEY, "NO_NONCE": contract.NO_NONCE,
        "DEFAULT_TAG": contract.DEFAULT_TAG, "STORE": contract.STORE,
        "APPLET_LIST": contract.APPLET_LIST, "MODULE_LIST": contract.MODULE_LIST,
        "BUSYBOX": contract.BUSYBOX, "SHELL": contract.SHELL,
        "DEFAULT_PATH": contract.DEFAULT_PATH, "PYTHON_INIT": contract.PYTHON_INIT,
        "CMDLINE_ENV": contract.CMDLINE_ENV, "STATUS_PREFIX": contract.PREFIX,
        "READY": contract.READY,
    }
    numbers = {
        "NONCE_LENGTH": contract.NONCE_LENGTH, "NOT_FOUND": contract.NOT_FOUND,
        "NOT_EXECUTABLE": contract.NOT_EXECUTABLE, "INIT_FAILED": contract.INIT_FAILED,
    }
    lines = ["/* Generated from guest/contract.py by initbuilder/nativeinit.py. */",
             "#define INITKIT_CONTRACT 1"]
    for name, text in strings.items():
        if not text.isascii() or any(c in text for c in '"\\\n'):
            raise ValueError(f"contract.{name} cannot be a plain C string: {text!r}")
        lines.append(f'#define CONTRACT_{name} "{text}"')
    lines += [f"#define CONTRACT_{name} {value}" for name, value in numbers.items()]
    lines.append(f"#define CONTRACT_GRACE_SECONDS {contract.GRACE_SECONDS!r}")
    return "\n".join(lines) + "\n"


def compiler() -> list[str] | None:
    """The C compiler's argv: $CC, else cc or gcc on $PATH; None if there is none."""
    given = os.environ.get("CC")
    if given:
        return shlex.split(given)
    for name in ("cc", "gcc"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def build_native(*, test: bool = False, output: Path | None = None) -> NativeInit:
    """The native init, compiled once per (source, contract, compiler, machine) and kept
    in the cache. ``test``: the parity build (tests/guest/test_native.py), which prints
    the plan for a command line instead of booting; ``output``: compile there, uncached."""
    cc = compiler()
    if cc is None:
        return NativeInit(None, f"no C compiler ($CC, cc or gcc; {HOW_TO_GET})")
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, check=False,
                                 timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return NativeInit(None, f"{shlex.join(cc)} does not run: {exc}")
    header = contract_header()
    flags = [*FLAGS, *(["-DINITKIT_NATIVE_TEST"] if test else [])]
    if test:  # a host program: dynamic, quick to link
        flags = [flag for flag in flags if flag not in ("-static", "-s")]
    if output is not None:
        with private_scratch("initkit-native-") as scratch:
            failure = _compile(cc, flags, header, output, scratch)
        return NativeInit(None if failure else output, failure or "")
    digest = hashlib.sha256(_FORMAT.encode() + b"\0")
    for part in (SOURCE.read_bytes(), header.encode(), "\0".join(flags).encode(),
                 shlex.join(cc).encode(), version, platform.machine().encode()):
        digest.update(hashlib.sha256(part).digest())
    entry = cache_dir("native-init") / f"{digest.hexdigest()[:32]}{'-test' if test else ''}"
    if entry.is_file():
        return NativeInit(entry)
    # Assembled in a scratch directory beside the entry, the compiler's own temporary
    # files included: nothing of it in $TMPDIR, and a killed build's is reaped later.
    with scratch_beside(entry, what="the native init", instead=CACHE_ELSEWHERE) as scratch:
        built = scratch / "init"
        failure = _compile(cc, flags, header, built, scratch)
        if failure:
            return NativeInit(None, failure)
        with writing(entry, "write the native init", instead=CACHE_ELSEWHERE):
            os.chmod(built, 0o755)
            os.replace(built, entry)
    return NativeInit(entry)


def _compile(cc: list[str], flags: list[str], header: str, output: Path,
             scratch: Path) -> str | None:
    """Compile SOURCE to ``output``, the header and the compiler's temporary files in
    ``scratch``; None, or the compiler's complaint in one line."""
    include = scratch / "contract.h"
    with writing(include, "write the native init's contract header"):
        include.write_text(header)
    argv = [*cc, *flags, "-include", str(include), "-o", str(output), str(SOURCE)]
    log.debug("run: %s", shlex.join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, check=False, timeout=300,
                              env={**os.environ, "TMPDIR": str(scratch)})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{shlex.join(cc)} did not run: {exc}"
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
    telling = [line for line in lines if "error" in line] or lines or ["(no message)"]
    return f"{shlex.join(cc)} failed: {telling[0].strip()}"


def add_native_init(image: Image) -> None:
    """The native init as /init and nothing of Python: for an initrd whose boots are all
    ones it carries out itself (guest/handover.py says which); with any other command
    line it says the Python init is missing and reports 125."""
    built = native_init()
    if built.path is None:
        raise NativeUnavailable(f"the native init cannot be built: {built.why_not}")
    image.add_file("init", host=built.path, mode=0o755, source=f"native init: {SOURCE}")


def native_init() -> NativeInit:
    """The native init for /init, or why there is none (a compiler's failure is a reason;
    a cache that cannot be written is an InitkitError, as for every cache entry)."""
    return build_native()
