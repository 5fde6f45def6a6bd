"""Fixtures of the audit tests: keys, a populated log, a trusted-keys file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace import accountant
from dataspace.audit.cosignature import witness_vkey
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import raw_public, vkey_text
from dataspace.audit.witness import Witness, local_post, witness_log

ORIGIN = "site-a.example/log"
FP = "ab" * 32
#: the contracts' delta in the hand-built logs
DELTA = 1e-5
#: one Gaussian release (noise multiplier 8, no sampling): what a hand-built round releases
RELEASE = [[8.0, 1.0, 1]]


def charge(earlier: list, releases: list, delta: float = DELTA, **over) -> dict:
    """What a site's ledger logs on a round.started releasing ``releases`` after the
    contract's ``earlier`` ones: the mechanism, the charge and the contract's epsilon."""
    before = accountant.epsilon(earlier, delta)
    after = accountant.epsilon([*earlier, *releases], delta)
    noise, rate, steps = releases[0] if releases else (None, None, None)
    return {
        "release": "round",
        "releases": releases,
        "epsilon": max(0.0, after - before),
        "contract_epsilon": after,
        "mechanism": {
            "noise_multiplier": noise,
            "sample_rate": rate,
            "steps": steps,
            "clip_norm": 0.5,
        },
        "noise": "csprng",
        "secure_aggregation": False,
        **over,
    }


#: the two rounds of the scenario's contract c1, as its ledger charged them
ROUND_1 = charge([], RELEASE)
ROUND_2 = charge(RELEASE, RELEASE)


@dataclass
class Scenario:
    log: TransparencyLog
    key: Ed25519PrivateKey
    consumer: Ed25519PrivateKey
    witnesses: list[Witness]
    trusted: Path
    entries: list[bytes]


def events(key: Ed25519PrivateKey, consumer: Ed25519PrivateKey) -> list[bytes]:
    """A small, rule-abiding history: enrol, policy, contract, two rounds (7 entries)."""
    site = ORIGIN
    cons = {"name": "robotco", "key": __import__("base64").b64encode(raw_public(consumer)).decode()}
    common = {"dataset_id": "ds1", "fingerprint": FP}
    return [
        make_event(
            "dataset.enrolled",
            key,
            site,
            time="2026-11-01T10:00:00Z",
            episodes=3,
            frames=300,
            **common,
        ),
        make_event(
            "policy.published",
            key,
            site,
            time="2026-11-01T10:01:00Z",
            epsilon=4.0,
            delta=1e-5,
            purposes=["research"],
            **common,
        ),
        make_event(
            "contract.agreed",
            key,
            site,
            contract_id="c1",
            purpose="research",
            time="2026-11-02T09:00:00Z",
            consumer=cons,
            template="mlp",
            epsilon=2.0,
            delta=1e-5,
            rounds=3,
            until="2026-12-01T00:00:00Z",
            **common,
        ),
        make_event(
            "round.started",
            key,
            site,
            contract_id="c1",
            purpose="research",
            time="2026-11-03T09:00:00Z",
            run_id="r1",
            round=1,
            **ROUND_1,
            **common,
        ),
        make_event(
            "round.finished",
            key,
            site,
            contract_id="c1",
            purpose="research",
            time="2026-11-03T09:05:00Z",
            run_id="r1",
            round=1,
            epsilon=ROUND_1["epsilon"],
            model_sha256="11" * 32,
            **common,
        ),
        make_event(
            "round.started",
            key,
            site,
            contract_id="c1",
            purpose="research",
            time="2026-11-03T10:00:00Z",
            run_id="r1",
            round=2,
            **ROUND_2,
            **common,
        ),
        make_event(
            "round.finished",
            key,
            site,
            contract_id="c1",
            purpose="research",
            time="2026-11-03T10:05:00Z",
            run_id="r1",
            round=2,
            epsilon=ROUND_2["epsilon"],
            model_sha256="22" * 32,
            **common,
        ),
    ]


@pytest.fixture
def scenario(tmp_path: Path) -> Scenario:
    key, consumer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp_path / "log", ORIGIN, key)
    es = events(key, consumer)
    log.append_many(es)
    witnesses = []
    for n in ("w1.example", "w2.example"):
        w = Witness(tmp_path / n, n, Ed25519PrivateKey.generate(), [log.verifier])
        witness_log(log, local_post(w))
        witnesses.append(w)
    trusted = tmp_path / "trusted.keys"
    trusted.write_text(
        "# log and witnesses\n"
        + vkey_text(ORIGIN, raw_public(key))
        + "\n"
        + "".join(f"witness {w.vkey()}\n" for w in witnesses)
    )
    assert witness_vkey  # re-exported for tests that build their own
    return Scenario(log, key, consumer, witnesses, trusted, es)
