"""Fixtures of the audit tests: keys, a populated log, a trusted-keys file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit.cosignature import witness_vkey
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import raw_public, vkey_text
from dataspace.audit.witness import Witness, local_post, witness_log

ORIGIN = "site-a.example/log"
FP = "ab" * 32


@dataclass
class Scenario:
    log: TransparencyLog
    key: Ed25519PrivateKey
    consumer: Ed25519PrivateKey
    witnesses: list[Witness]
    trusted: Path
    entries: list[bytes]


def events(key: Ed25519PrivateKey, consumer: Ed25519PrivateKey) -> list[bytes]:
    """A small, rule-abiding history: enrol, policy, contract, two rounds."""
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
            epsilon=0.5,
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
            epsilon=0.5,
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
            epsilon=0.5,
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
            epsilon=0.5,
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
