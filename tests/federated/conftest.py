"""Fixtures of the federated tests: small federations over real robot data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dataspace.demo.federation import Federation, make_federation
from tests.conftest import UNITREE

#: three non-overlapping sessions of the Unitree G1 recording, 5 episodes each (~1.9k frames)
SMALL = [range(0, 5), range(40, 45), range(80, 85)]


@pytest.fixture
def federation(tmp_path: Path) -> Callable[..., Federation]:
    """Build a fresh 3-site federation (new sites, policies, contracts) under tmp_path."""
    count = [0]

    def build(**kw) -> Federation:
        count[0] += 1
        kw.setdefault("episodes_per_site", SMALL)
        return make_federation(tmp_path / f"fed{count[0]}", UNITREE, **kw)

    return build
