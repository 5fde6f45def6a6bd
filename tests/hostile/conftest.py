"""Fixtures of the hostile-server suite: sites over the bundled sample, a hostile server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hostile.harness import HostileServer, federation


@pytest.fixture
def hostile(tmp_path: Path) -> Callable[..., HostileServer]:
    """``hostile(**contract terms)``: one new site with one contract, and a hostile server."""
    count = [0]

    def build(**kw) -> HostileServer:
        count[0] += 1
        fed = federation(tmp_path / f"fed{count[0]}", **kw)
        server = HostileServer(fed.sites[0], fed.contract_ids)
        server.fed = fed  # type: ignore[attr-defined]
        return server

    return build
