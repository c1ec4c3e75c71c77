"""The pytest plugin as other projects get it: loaded through its entry point."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_plugin_is_registered_as_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {e.name: e.value for e in entry_points(group="pytest11")}
    assert names.get("initkit") == "hostrun.pytest_plugin", (
        "pyproject.toml needs [project.entry-points.pytest11] initkit = "
        "\"hostrun.pytest_plugin\" (then pip install -e .)")


def test_fixture_and_options_reach_a_foreign_test_suite(tmp_path: Path) -> None:
    (tmp_path / "test_foreign.py").write_text(textwrap.dedent("""\
        from pathlib import Path

        def test_runner(initkit_vm):
            assert initkit_vm.accel == "tcg"
            assert initkit_vm.kernel == Path("/boot/some-kernel")
            assert initkit_vm.timeout == 30.0
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--initkit-accel", "tcg", "--initkit-kernel", "/boot/some-kernel",
         "--initkit-timeout", "30", "test_foreign.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_plugin_import_is_cheap() -> None:
    """Loaded into every pytest session: it must not pull in hostrun's machinery."""
    code = ("import sys, hostrun.pytest_plugin; "
            "print(sorted(m for m in sys.modules if m.startswith(('hostrun.', 'initbuilder'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['hostrun.pytest_plugin']"
