"""Fixtures of the policy tests: a site with the real SO-101 dataset enrolled, a consumer."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dataspace.audit.events import Event, parse_event
from dataspace.connectors.enroll import enroll
from dataspace.policy.odrl import build_policy
from dataspace.policy.policies import publish_policy
from dataspace.site import Site, create_site
from dataspace.site.identity import Identity, load_private_key, new_identity
from dataspace.site.log import open_site_log
from dataspace.site.store import get_dataset
from tests.conftest import SO101

#: a fixed "now" for library tests (contracts and policies are dated relative to it)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def _enrolled_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policy-template") / "site"
    site = create_site(root, org="acme", name="acme-site")
    enroll(site, SO101)
    return root


@dataclass
class World:
    site: Site
    dataset_id: str
    fingerprint: str
    alice: Identity
    alice_key: Path
    bob: Identity
    bob_key: Path

    def publish(self, manual: bool = False, now: datetime = NOW, **kw):
        args = dict(
            dataset_id=self.dataset_id,
            fingerprint=self.fingerprint,
            assigner=self.site.identity.key_b64,
            epsilon=8.0,
            delta=1e-5,
            purposes=["research", "benchmarking"],
            consumers=[self.alice.key_b64],
            until=NOW + timedelta(days=30),
            max_rounds=10,
            templates=["mlp"],
            manual_approval=manual,
        )
        args.update(kw)
        return publish_policy(self.site, build_policy(**args), now=now)

    def events(self, kind: str | None = None) -> list[Event]:
        log = open_site_log(self.site, writable=False)
        evs = [parse_event(e) for e in log.entries(0, log.size)]
        return [e for e in evs if kind is None or e.kind == kind]

    def key(self, who: str = "alice"):
        return load_private_key(self.alice_key if who == "alice" else self.bob_key)


@pytest.fixture
def world(_enrolled_template: Path, tmp_path: Path) -> World:
    root = tmp_path / "site"
    shutil.copytree(_enrolled_template, root)
    site = Site.open(root)
    rec = get_dataset(site, "so101-record-test-lerobot-v3")
    alice = new_identity(tmp_path / "alice.key", "alice", "consumer")
    bob = new_identity(tmp_path / "bob.key", "bob", "consumer")
    return World(
        site=site,
        dataset_id=rec.dataset_id,
        fingerprint=rec.fingerprint,
        alice=alice,
        alice_key=tmp_path / "alice.key",
        bob=bob,
        bob_key=tmp_path / "bob.key",
    )
