"""A ready federation for demos, tests and benchmarks: N sites, one dataset split
over them, a usage policy per shard and an agreed contract per site.

Uses only the public APIs of the other areas: :func:`dataspace.site.create_site`, the policy
area's ``build_policy`` / ``publish_policy`` / ``negotiate`` and
:func:`dataspace.connectors.shards.shard_to_sites`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.auth.client import call, signed_client
from dataspace.connectors.publisher import hub_record, publish_request
from dataspace.connectors.shards import shard_to_sites
from dataspace.policy.contracts import OfferRequest, load_contract, negotiate
from dataspace.policy.odrl import build_policy
from dataspace.policy.policies import publish_policy
from dataspace.policy.terms import ContractTerms
from dataspace.site import Site, create_site
from dataspace.site.identity import Identity, load_private_key, new_identity
from dataspace.site.store import list_datasets


@dataclass(frozen=True)
class Federation:
    sites: list[Site]
    dataset_ids: list[str]
    contract_ids: list[str]
    consumer: Identity
    consumer_key: Ed25519PrivateKey


def grant(
    site: Site,
    dataset_id: str,
    consumer: Identity,
    consumer_key: Ed25519PrivateKey,
    *,
    epsilon: float,
    delta: float = 1e-5,
    rounds: int = 10,
    template: str = "bc-mlp",
    budget: float | None = None,
    purpose: str = "robot-policy-training",
) -> str:
    """Publish a policy on ``dataset_id`` and agree a contract; returns its id."""
    with site.db(read_only=True) as con:
        (fp,) = con.execute(
            "SELECT fingerprint FROM datasets WHERE dataset_id = ?", [dataset_id]
        ).fetchone()  # type: ignore[misc]
    until = datetime.now(UTC) + timedelta(days=30)
    publish_policy(
        site,
        build_policy(
            dataset_id=dataset_id,
            fingerprint=fp,
            assigner=site.identity.key_b64,
            epsilon=budget if budget is not None else epsilon,
            delta=delta,
            until=until,
            max_rounds=rounds,
            templates=[template],
        ),
    )
    contract = negotiate(
        site,
        OfferRequest(
            dataset_id=dataset_id,
            consumer=consumer,
            terms=ContractTerms(
                purpose=purpose,
                epsilon=epsilon,
                rounds=rounds,
                until=until - timedelta(days=1),
                template=template,
                delta=delta,
            ),
        ),
        consumer_key,
    )
    return contract.terms.contract_id


def make_federation(
    root: Path | str,
    source: Path | str,
    n_sites: int = 3,
    *,
    epsilon: float = 8.0,
    delta: float = 1e-5,
    rounds: int = 10,
    template: str = "bc-mlp",
    episodes_per_site: Sequence[range] | None = None,
) -> Federation:
    """``n_sites`` new sites under ``root`` sharing ``source`` by episode ranges."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sites = [
        create_site(root / f"site-{i}", f"holder-{i}", name=f"holder-{i}") for i in range(n_sites)
    ]
    ids = shard_to_sites(source, sites, episodes_per_site)
    key_path = root / "consumer.key"
    consumer = new_identity(key_path, name="robotco", role="consumer")
    key = load_private_key(key_path)
    cids = [
        grant(s, d, consumer, key, epsilon=epsilon, delta=delta, rounds=rounds, template=template)
        for s, d in zip(sites, ids, strict=True)
    ]
    return Federation(sites, ids, cids, consumer, key)


def publish_to_hub(hub_url: str, fed: Federation) -> None:
    """What each holder's connector sends the hub at start, without running one: its
    catalog entries and its agreed contract (signed with the site's key)."""
    for site, cid in zip(fed.sites, fed.contract_ids, strict=True):
        with signed_client(hub_url, site.key) as c:
            for rec in list_datasets(site):
                call(c, "POST", "/v1/catalog", json=publish_request(site, rec, None))
            call(c, "POST", "/v1/contracts", json=hub_record(load_contract(site, cid), None))
