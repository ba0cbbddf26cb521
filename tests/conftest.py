"""Test set-up: make the repo root and tests/ importable; locate the shared real data (skip when absent)."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path to ../shared/data (LLFF fern, NeRF-synthetic lego); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module (restored afterwards): on a small shared CPU more threads mostly spin, and
    float32 sums (e.g. depths near the far plane, 1/disparity) stay the same from run to run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
