"""Fixtures of the assurance tests: a site with the real SO-101 recording enrolled."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataspace.connectors.enroll import enroll
from dataspace.connectors.site import Site
from tests.conftest import SO101


@pytest.fixture
def so101_site(tmp_path: Path) -> tuple[Site, str]:
    site = Site.init(tmp_path / "site", org="holder")
    return site, enroll(site, SO101).dataset_id
