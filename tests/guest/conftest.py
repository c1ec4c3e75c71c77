"""Fixtures of the guest tests: the recording fake System."""

from __future__ import annotations

import pytest
from guestfake import FakeSystem


@pytest.fixture
def fake() -> FakeSystem:
    return FakeSystem()
