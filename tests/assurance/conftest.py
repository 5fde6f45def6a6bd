"""Fixtures of the assurance tests: a site with the real SO-101 recording enrolled."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataspace.connectors.enroll import enroll
from dataspace.site import Site, create_site
from tests.conftest import SO101


@pytest.fixture
def so101_site(tmp_path: Path) -> tuple[Site, str]:
    site = create_site(tmp_path / "site", org="holder")
    return site, enroll(site, SO101).dataset_id


def verify_site_log(site: Site) -> dict:
    """``dataspace audit verify SITE`` with the site's own keys; returns the JSON report."""
    import json

    from click.testing import CliRunner

    from dataspace.cli import cli

    trusted = site.root.parent / f"{site.root.name}.trusted"
    trusted.write_text(f"{site.vkey_path}\nactor {site.root / 'site.key.pub'}\n")
    r = CliRunner().invoke(
        cli,
        # self-consistency (the property under test): no witness runs in these tests
        [
            "audit", "verify", str(site.root), "--trusted-keys", str(trusted), "--json",
            "--allow-unanchored",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])
