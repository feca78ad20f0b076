"""Shared fixtures: location of the shared real data (skip with a reason when absent)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/dicom_factory.py and friends

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real data not found at {SHARED_DATA} (it sits beside the checkout in CI)")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: one intra-op thread is many times faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
