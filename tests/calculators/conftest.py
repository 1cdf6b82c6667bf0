"""Make ``calc_helpers`` importable from the test modules (pytest runs with --import-mode=importlib)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def lj():
    from molequi.models.lj import LennardJones

    return LennardJones()
