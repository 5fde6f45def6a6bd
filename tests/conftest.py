"""Fixtures shared by every test area: where the shared real data and vectors are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the checkout (CI lays a copy there); DATASPACE_SHARED overrides.
SHARED = Path(os.environ.get("DATASPACE_SHARED", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"
VECTORS = SHARED / "vectors"

SO101 = DATA / "so101-record-test-lerobot-v3"
BIMANUAL = DATA / "bimanual-open50-lerobot-v3"
UNITREE = DATA / "unitree-g1-lerobot-v2.1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared robot data not found at {DATA} (set DATASPACE_SHARED)")
    return DATA


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"shared test vectors not found at {VECTORS} (set DATASPACE_SHARED)")
    return VECTORS
