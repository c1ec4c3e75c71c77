"""The Rust virtiofsd's sandbox: the strongest mode that works here, decided once.

Fakes stand in for the decision's steps (a daemon that refuses a mode, hangs, or was
asked before); the real Rust daemon, where installed, shows the fallback for real: in a
plain chroot its namespace sandbox fails and hostrun settles on chroot.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from hostrun import virtiofs
from hostrun.virtiofs import RustVirtiofsd, probe_sandbox, sandbox_mode

HELP = "--shared-dir --fd --sandbox <sandbox> --readonly --log-level"

# Refuses the modes named in $FAKE_REFUSE as the real daemon does in a plain chroot,
# hangs without a word for those in $FAKE_HANG, and records every start in $FAKE_CALLS.
FAKE_RUST_DAEMON = textwrap.dedent("""\
    #!{python}
    import os, sys, time
    mode = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--sandbox="))
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(mode + "\\n")
    if mode in os.environ.get("FAKE_REFUSE", "").split(","):
        print("[ERROR virtiofsd] Error entering sandbox: CleanMount(Os {{ code: 22 }})",
              file=sys.stderr, flush=True)
        sys.exit(1)
    if mode not in os.environ.get("FAKE_HANG", "").split(","):
        print("[INFO  virtiofsd] Waiting for vhost-user socket connection...",
              file=sys.stderr, flush=True)
    time.sleep(60)
""")


@pytest.fixture
def fake_rust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import sys

    path = tmp_path / "virtiofsd"
    path.write_text(FAKE_RUST_DAEMON.format(python=sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls"))
    monkeypatch.setattr("hostrun.virtiofs.os.geteuid", lambda: 0)
    return path


def calls(tmp_path: Path) -> list[str]:
    try:
        return (tmp_path / "calls").read_text().split()
    except FileNotFoundError:
        return []


def test_namespace_when_it_works(fake_rust: Path, tmp_path: Path) -> None:
    assert sandbox_mode(str(fake_rust), HELP) == "namespace"
    assert calls(tmp_path) == ["namespace"]


def test_chroot_when_namespaces_fail(fake_rust: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_REFUSE", "namespace")
    assert sandbox_mode(str(fake_rust), HELP) == "chroot"
    assert calls(tmp_path) == ["namespace", "chroot"]


def test_none_when_chroot_fails_too(fake_rust: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_REFUSE", "namespace,chroot")
    assert sandbox_mode(str(fake_rust), HELP) == "none"
    assert calls(tmp_path) == ["namespace", "chroot", "none"]


def test_a_mode_that_never_gets_ready_counts_as_failed(
        fake_rust: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_HANG", "namespace")
    monkeypatch.setattr(virtiofs, "_PROBE_TIMEOUT", 0.5)
    ok, why = probe_sandbox(str(fake_rust), "namespace")
    assert (ok, why) == (False, "not ready within 0.5 s")
    assert sandbox_mode(str(fake_rust), HELP) == "chroot"


def test_the_verdict_is_remembered_not_probed_again(
        fake_rust: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_REFUSE", "namespace")
    store = tmp_path / "store"
    first = RustVirtiofsd(store, str(fake_rust), HELP)
    assert "--sandbox=chroot" in first.argv(tmp_path / "s", 3)
    assert calls(tmp_path) == ["namespace", "chroot"]
    monkeypatch.setenv("FAKE_REFUSE", "")  # would now pick namespace if it asked again
    second = RustVirtiofsd(store, str(fake_rust), HELP)
    assert "--sandbox=chroot" in second.argv(tmp_path / "s", 3)
    assert "--readonly" in second.argv(tmp_path / "s", 3)
    assert calls(tmp_path) == ["namespace", "chroot"]  # not started again


def test_without_root_no_probe_and_no_sandbox(fake_rust: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hostrun.virtiofs.os.geteuid", lambda: 1000)
    assert sandbox_mode(str(fake_rust), HELP) == "none"
    assert calls(tmp_path) == []


def test_a_daemon_without_the_option_gets_none(fake_rust: Path, tmp_path: Path) -> None:
    daemon = RustVirtiofsd(tmp_path, str(fake_rust), "--shared-dir --fd")
    assert not any(a.startswith("--sandbox") for a in daemon.argv(tmp_path / "s", 3))
    assert calls(tmp_path) == []


# -- the real daemon ---------------------------------------------------------------------
PLAIN_CHROOT = textwrap.dedent("""\
    #!/bin/sh
    # The real virtiofsd in a plain chroot: its root is a directory, not a mount point.
    exec unshare --mount --propagation private sh -ec '
      root="$0"
      for d in usr etc proc dev tmp; do mkdir -p "$root/$d"; mount --rbind "/$d" "$root/$d"; done
      for l in bin sbin lib lib64; do [ -e "$root/$l" ] || ln -s "usr/$l" "$root/$l"; done
      exec chroot "$root" {daemon} "$@"' {root} "$@"
""")


@pytest.mark.parametrize("mode", ["namespace", "chroot", "none"])
def test_real_daemon_enters_its_sandbox_in_a_container_like_root(
        rust_virtiofsd: str, root_only: None, mode: str) -> None:
    ok, why = probe_sandbox(rust_virtiofsd, mode, readonly=True)
    assert ok, why


def test_real_daemon_in_a_plain_chroot_falls_back_to_chroot(
        rust_virtiofsd: str, root_only: None, tmp_path: Path) -> None:
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespaces here to build a plain chroot in")
    wrapper = tmp_path / "in-plain-chroot"
    wrapper.write_text(PLAIN_CHROOT.format(daemon=os.path.realpath(rust_virtiofsd),
                                           root=tmp_path / "plainroot"))
    wrapper.chmod(0o755)
    ok, why = probe_sandbox(str(wrapper), "namespace")
    assert not ok and "sandbox" in why.lower(), why
    assert sandbox_mode(str(wrapper), HELP) == "chroot"
