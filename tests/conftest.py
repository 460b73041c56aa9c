"""Shared pytest fixtures. Plain helpers live in tests/fixtures_data.py so scripts can import them too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `from tests.fixtures_data import ...` must work whichever directory pytest was started from.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.fixtures_data import make_tiny_dataset  # noqa: E402

# The session-scoped `slurm_cluster` fixture (a real single-node Slurm, installed if missing).
pytest_plugins = ["tests.slurm_cluster"]


@pytest.fixture
def tiny_dataset(tmp_path_factory):
    """Factory: tiny_dataset(name="ds", **make_tiny_dataset kwargs) -> dataset dir in a fresh tmp dir."""

    def factory(name: str = "ds", **kwargs) -> Path:
        return make_tiny_dataset(tmp_path_factory.mktemp(name) / name, **kwargs)

    return factory
