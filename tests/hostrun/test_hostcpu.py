"""The host facts hostrun measures: the TSC rate a TCG guest sees, and /dev/kvm."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hostrun import hostcpu


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="rdtsc is x86-64 only")
def test_tsc_rate_is_measured_and_plausible() -> None:
    khz = hostcpu._measure_tsc_khz()
    assert khz is not None and 200_000 < khz < 10_000_000  # 0.2 .. 10 GHz
    again = hostcpu._measure_tsc_khz()
    assert again is not None and abs(again - khz) / khz < 0.01
    reported = hostcpu._cpuinfo_tsc_khz()
    flags = Path("/proc/cpuinfo").read_text()
    if reported is not None and " hypervisor" in flags:
        # A VM's vCPU reports the TSC rate as "cpu MHz"; bare metal may report the
        # current clock instead, so compare only here.
        assert abs(reported - khz) / khz < 0.02


def test_tsc_rate_remembered_per_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def measure() -> int:
        calls.append(1)
        return 1_234_567

    monkeypatch.setattr(hostcpu, "_cached", [])
    assert hostcpu._remembered("test-boot", measure) == 1_234_567
    assert hostcpu._remembered("test-boot", measure) == 1_234_567
    assert len(calls) == 1


def test_kvm_opens_is_false_for_a_missing_device() -> None:
    assert hostcpu.kvm_opens("/nonexistent/kvm") is False
    assert hostcpu.kvm_opens("/dev/null") is False  # opens, but is no KVM
