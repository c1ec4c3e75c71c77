"""A kernel build's progress from kbuild's quiet lines: phases move forward, objects are
counted, make's lines go to the log (and to the user only with -v)."""

from __future__ import annotations

from pathlib import Path

from initbuilder.kernels.progress import BuildProgress, phase_of

LINES = """\
  SYNC    include/config/auto.conf
  HOSTCC  scripts/basic/fixdep
  CC      init/main.o
  AS      arch/x86/entry/entry_64.o
  AR      init/built-in.a
  CC      kernel/fork.o
  LD      .tmp_vmlinux.kallsyms1
  CC      lib/late.o
  KSYMS   .tmp_vmlinux.kallsyms1.S
  LD      vmlinux
  BUILD   arch/x86/boot/bzImage
Kernel: arch/x86/boot/bzImage is ready  (#1)
  MODPOST modules-only.symvers
  CC [M]  drivers/thermal/intel/x86_pkg_temp_thermal.mod.o
  LD [M]  drivers/thermal/intel/x86_pkg_temp_thermal.ko
""".splitlines()


def test_phase_of_kbuild_lines() -> None:
    assert phase_of("CC", "kernel/fork.o") == "compile"
    assert phase_of("LD", "vmlinux") == "link"
    assert phase_of("KSYMS", ".tmp_vmlinux.kallsyms1.S") == "link"
    assert phase_of("BUILD", "arch/x86/boot/bzImage") == "bzImage"
    assert phase_of("LD [M]", "drivers/x.ko") == "modules"
    assert phase_of("INSTALL", "x") is None


def test_progress_reports_phases_in_order_and_counts_objects(tmp_path: Path) -> None:
    said: list[str] = []
    progress = BuildProgress(said.append, tmp_path, show_make=False)
    progress.phase("compile")
    for line in LINES:
        progress.line(line)
    progress.finish()
    assert said[:4] == [f"kernel build: {p}" for p in ("compile", "link", "bzImage", "modules")]
    assert progress.objects == 5  # CC, AS, CC, CC (late, counted in link), CC [M]
    assert said[-1].startswith("kernel build: done, 5 objects")
    assert progress.log_path.read_text().splitlines() == LINES
    # The next build counts against this one.
    again: list[str] = []
    BuildProgress(again.append, tmp_path, show_make=False).finish()
    assert "of at most ~5" in again[-1]


def test_verbose_shows_makes_lines_instead(tmp_path: Path) -> None:
    said: list[str] = []
    progress = BuildProgress(said.append, tmp_path, show_make=True)
    progress.phase("compile")
    for line in LINES:
        progress.line(line)
    assert said == LINES
