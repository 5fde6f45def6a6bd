"""Fixtures for the quality tests: a site with LeRobot data enrolled once per session."""

from __future__ import annotations

import pytest

from dataspace.connectors.enroll import enroll
from dataspace.site import Site, create_site
from tests.conftest import SO101, UNITREE


@pytest.fixture(scope="session")
def real_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Site, dict[str, str]]:
    """A site holding so101 (the generated stand-in, 4 episodes) and unitree-g1 (the real
    recording, 100 episodes), enrolled for real."""
    site = create_site(tmp_path_factory.mktemp("q") / "site", org="quality-test")
    ids = {}
    for root in (SO101, UNITREE):
        ids[root.name.split("-")[0]] = enroll(site, root).dataset_id
    return site, ids
