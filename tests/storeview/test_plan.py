"""--closure and --substituter as hostrun's plan takes them, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from nar_writer import nar, regular, write_cache_entry

from hostrun.plan import Request, plan
from initkit.errors import InitkitError


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "vmlinuz"  # plan() only needs it to exist before the store view
    path.write_bytes(b"\x7fELF")
    return path


def test_substituter_without_closure(kernel: Path) -> None:
    with pytest.raises(InitkitError, match="--substituter is where --closure paths come from"):
        plan(Request(kernel=kernel, substituters=["file:///tmp"]))


def test_tvix_store_serves_its_own_store(kernel: Path) -> None:
    with pytest.raises(InitkitError, match="--closure: the daemon tvix-store serves its own"):
        plan(Request(kernel=kernel, daemon="tvix-store",
                     closure=["/nix/store/0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs"]))


def test_a_missing_store_dir_is_an_empty_one_with_closure(kernel: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Without --closure a missing --store is an error; with it, the paths may all come
    from a substituter (the VMM choice after the view is stubbed out: nothing boots)."""
    import hostrun.plan as plan_module

    name = "0c1ml0w7cbk1yr2x6q6x9fl0fnx0qxr8-docs"
    write_cache_entry(tmp_path / "cache", name, nar(regular(b"docs")))
    with pytest.raises(InitkitError, match="no such directory"):
        plan(Request(kernel=kernel, store=tmp_path / "none", daemon="sh -c 'x' {socket}"))

    class Stop(Exception):
        pass

    def stop(*args: object) -> None:
        raise Stop

    monkeypatch.setattr(plan_module, "choose_vmm", stop)
    with pytest.raises(Stop):
        plan(Request(kernel=kernel, store=tmp_path / "none", daemon="sh -c 'x' {socket}",
                     closure=[f"/nix/store/{name}"],
                     substituters=[f"file://{tmp_path / 'cache'}"]))
