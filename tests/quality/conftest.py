"""Fixtures for the quality tests: a site with real LeRobot data enrolled once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataspace.connectors.enroll import enroll
from dataspace.connectors.site import Site

DATA = Path("/work/shared/data")


@pytest.fixture(scope="session")
def real_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Site, dict[str, str]]:
    """A site holding so101 (4 episodes) and unitree-g1 (100 episodes), enrolled for real."""
    site = Site.init(tmp_path_factory.mktemp("q") / "site", org="quality-test")
    ids = {}
    for name in ("so101-record-test-lerobot-v3", "unitree-g1-lerobot-v2.1"):
        ids[name.split("-")[0]] = enroll(site, DATA / name).dataset_id
    return site, ids
