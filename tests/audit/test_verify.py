"""The auditor: tampering of every kind is detected and named; the rules hold."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dataspace import accountant
from dataspace.accountant import AccountantError
from dataspace.audit import AuditReport, TrustedKeysError, audit, load_trusted_keys
from dataspace.audit.bundle import Bundle, write_bundle
from dataspace.audit.events import EventError, _canonical_text, make_event, verify_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import raw_public, vkey_text

from .conftest import DELTA, FP, ORIGIN, RELEASE, ROUND_1, ROUND_2, Scenario, charge, events


def _bundle(s: Scenario, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    write_bundle(out, s.log.checkpoint(), s.log.iter_entries())
    return out


def _audit_bundle(b: Path, s: Scenario, **kw) -> AuditReport:
    bundle = Bundle.open(b)
    return audit(
        bundle.iter_entries(),
        bundle.checkpoint(),
        load_trusted_keys(s.trusted),
        bundle.cosignatures(),
        **kw,
    )


def _lines(b: Path) -> list[bytes]:
    return (b / "entries.jsonl").read_bytes().splitlines()


def _write(b: Path, lines: list[bytes]) -> None:
    (b / "entries.jsonl").write_bytes(b"".join(ln + b"\n" for ln in lines))


def test_clean_log_verifies_with_quorum(scenario: Scenario, tmp_path: Path) -> None:
    b = _bundle(scenario, tmp_path)
    r = _audit_bundle(b, scenario, quorum=2)
    assert r.ok, r.violations
    assert r.witnesses == ["w1.example", "w2.example"] and r.size == 7
    assert [x.model_sha256 for x in r.rounds] == ["11" * 32, "22" * 32]
    spent = ROUND_1["epsilon"] + ROUND_2["epsilon"]
    assert r.epsilon_by_dataset == {"ds1": pytest.approx(spent)}
    assert r.anchored and r.verified and r.to_json()["verified"]
    assert not _audit_bundle(b, scenario, quorum=3).ok


def test_one_changed_byte(scenario: Scenario, tmp_path: Path) -> None:
    b = _bundle(scenario, tmp_path)
    lines = _lines(b)
    lines[3] = lines[3].replace(b'"clip_norm":0.5', b'"clip_norm":0.1')
    _write(b, lines)
    r = _audit_bundle(b, scenario)
    assert r.first.index == 3 and r.first.rule == "entry-signature"
    assert "tree-root" in {v.rule for v in r.violations}


def test_deleted_entry(scenario: Scenario, tmp_path: Path) -> None:
    b = _bundle(scenario, tmp_path)
    lines = _lines(b)
    del lines[5]
    _write(b, lines)
    r = _audit_bundle(b, scenario)
    # the round.finished of the deleted round.started is orphaned, and the tree is short
    assert (r.first.rule, r.first.index) == ("round-not-started", 5), r.violations
    (short,) = [v for v in r.violations if v.rule == "tree-size"]
    assert short.values["entries"] == 6


def test_reordered_entries(scenario: Scenario, tmp_path: Path) -> None:
    b = _bundle(scenario, tmp_path)
    lines = _lines(b)
    lines[3], lines[5] = lines[5], lines[3]
    _write(b, lines)
    r = _audit_bundle(b, scenario)
    assert not r.ok and "tree-root" in {v.rule for v in r.violations}


def test_inserted_entry(scenario: Scenario, tmp_path: Path) -> None:
    b = _bundle(scenario, tmp_path)
    lines = _lines(b)
    extra = make_event(  # rule-abiding in itself: only the tree gives it away
        "quality.reported",
        scenario.key,
        ORIGIN,
        dataset_id="ds1",
        fingerprint=FP,
        time="2026-11-03T09:30:00Z",
        score=0.9,
    )
    lines.insert(4, extra)
    _write(b, lines)
    r = _audit_bundle(b, scenario)
    assert not r.ok and r.first.rule == "tree-size" and r.first.index == 7


def test_replaced_signature(scenario: Scenario, tmp_path: Path) -> None:
    b = _bundle(scenario, tmp_path)
    lines = _lines(b)
    sig = json.loads(lines[2])["sig"]
    forged = base64.b64encode(Ed25519PrivateKey.generate().sign(b"x")).decode()
    lines[2] = lines[2].replace(sig.encode(), forged.encode())
    _write(b, lines)
    r = _audit_bundle(b, scenario)
    assert r.first.index == 2 and r.first.rule == "entry-signature"


def test_forked_checkpoint_of_same_size(scenario: Scenario, tmp_path: Path) -> None:
    """The log key signs a second history of the same size: the kept checkpoint exposes it."""
    kept = scenario.log.checkpoint()
    fork = TransparencyLog.create(tmp_path / "fork", ORIGIN, scenario.key)
    es = list(scenario.entries)
    es[6] = make_event(
        "round.finished",
        scenario.key,
        ORIGIN,
        contract_id="c1",
        purpose="research",
        dataset_id="ds1",
        fingerprint=FP,
        time="2026-11-03T10:05:00Z",
        run_id="r1",
        round=2,
        epsilon=ROUND_2["epsilon"],
        model_sha256="33" * 32,
    )
    fork.append_many(es)
    b = tmp_path / "forkbundle"
    write_bundle(b, fork.checkpoint(), fork.iter_entries())
    r = _audit_bundle(b, scenario, previous=kept)
    assert not r.ok and r.first.rule == "fork"
    # and a witness that saw the first history would not cosign it
    assert not _audit_bundle(b, scenario, previous=kept, quorum=1).witnesses


def test_rollback_and_consistent_growth(scenario: Scenario, tmp_path: Path) -> None:
    kept = scenario.log.checkpoint()
    scenario.log.append(
        make_event(
            "quality.reported", scenario.key, ORIGIN, dataset_id="ds1", fingerprint=FP, score=0.9
        )
    )
    b = tmp_path / "b2"
    write_bundle(b, scenario.log.checkpoint(), scenario.log.iter_entries())
    assert _audit_bundle(b, scenario, previous=kept).ok  # grew consistently
    newer = scenario.log.checkpoint()
    old_bundle = tmp_path / "b1"
    write_bundle(old_bundle, kept, scenario.log.iter_entries())
    r = _audit_bundle(old_bundle, scenario, previous=newer)
    assert r.first.rule == "rollback"


def test_untrusted_or_malformed_checkpoint(scenario: Scenario, tmp_path: Path) -> None:
    b = _bundle(scenario, tmp_path)
    other = tmp_path / "other.keys"
    other.write_text(vkey_text(ORIGIN, raw_public(Ed25519PrivateKey.generate())) + "\n")
    bundle = Bundle.open(b)
    r = audit(bundle.iter_entries(), bundle.checkpoint(), load_trusted_keys(other))
    assert r.first.rule == "checkpoint-signature"
    (b / "checkpoint").write_bytes(b"site-a.example/log\n7\nnot-base64\n\n")
    r = _audit_bundle(b, scenario)
    assert not r.ok and r.first.rule == "checkpoint-malformed"
    bad = tmp_path / "bad.keys"
    bad.write_text("log nowhere.pub\n")
    with pytest.raises(TrustedKeysError):
        load_trusted_keys(bad)


#: a field a tail event must not carry at all (``_history``)
DROP = object()


def _history(
    tmp_path: Path,
    tail: list[tuple[str, dict]],
    allow_unanchored: bool = True,
    **contract,
) -> AuditReport:
    """Audit a hand-built log: enrolment, policy (budget 4), contract c1 (epsilon 2, delta
    1e-5, 3 rounds; ``contract`` overrides its terms), then ``tail`` from entry 3.

    A tail event is a round of run r1 (round: its position, from 1); a round.started
    charges what the ledger would for its releases (default ``RELEASE``) after its
    contract's earlier ones, and a round.finished reports what its round.started charged,
    unless their fields say otherwise (``DROP`` removes a field).
    """
    key, consumer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    es = events(key, consumer)[:3]
    delta = contract.get("delta", DELTA)
    delta = delta if type(delta) is float and 0 < delta < 1 else DELTA  # the rounds' own
    if contract:
        es[2] = make_event(
            "contract.agreed",
            key,
            ORIGIN,
            **{
                "contract_id": "c1",
                "purpose": "research",
                "time": "2026-11-02T09:00:00Z",
                "dataset_id": "ds1",
                "fingerprint": FP,
                "template": "mlp",
                "epsilon": 2.0,
                "delta": DELTA,
                "rounds": 3,
                "until": "2026-12-01T00:00:00Z",
                **contract,
            },
        )
    base = {
        "contract_id": "c1",
        "purpose": "research",
        "dataset_id": "ds1",
        "fingerprint": FP,
        "time": "2026-11-03T09:00:00Z",
        "run_id": "r1",
    }
    released: dict[str, list] = {}  # contract -> its releases so far, as its ledger composes
    charged: dict[tuple, float] = {}
    for i, (kind, fields) in enumerate(tail):
        f = {**base, "round": i + 1, **fields}
        cid = f["contract_id"]
        rkey = (cid, f["run_id"], f["round"], f["dataset_id"])
        if kind == "round.started":
            releases = fields.get("releases", RELEASE)
            try:
                auto = charge(released.get(cid, []), releases, delta)
                released[cid] = [*released.get(cid, []), *releases]
            except (AccountantError, ArithmeticError, TypeError, ValueError):  # on purpose
                auto = {"release": "round", "epsilon": 0.1, "contract_epsilon": 0.1}
            f = {**base, "round": i + 1, **auto, **fields}
            if type(f.get("epsilon")) is float:
                charged.setdefault(rkey, f["epsilon"])
        elif kind == "round.finished":
            f = {"epsilon": charged.get(rkey, 0.5), **f}
        f = {k: v for k, v in f.items() if v is not DROP}
        es.append(make_event(kind, key, ORIGIN, **f))
    log = TransparencyLog.create(tmp_path / "h", ORIGIN, key)
    log.append_many(es)
    trusted = tmp_path / "t.keys"
    trusted.write_text(vkey_text(ORIGIN, raw_public(key)) + "\n")
    return audit(
        log.iter_entries(),
        log.checkpoint(),
        load_trusted_keys(trusted),
        allow_unanchored=allow_unanchored,
    )


#: releases of a costly round (noise multiplier 2.5: epsilon 1.69, two of them 2.49)
COSTLY = [[2.5, 1.0, 1]]
#: ... and of a costlier one (noise 2: 2.17, 3.19 for two, 4.01 for three)
COSTLIER = [[2.0, 1.0, 1]]
#: a cheap one (noise 20)
CHEAP = [[20.0, 1.0, 1]]


@pytest.mark.parametrize(
    ("tail", "contract", "rule", "index"),
    [
        ([("round.started", {"contract_id": "c404"})], {}, "contract-unknown", 3),
        ([("round.started", {"time": "2026-12-02T00:00:00Z"})], {}, "contract-expired", 3),
        ([("round.started", {"purpose": "marketing"})], {}, "contract-purpose", 3),
        ([("round.started", {"dataset_id": "ds2"})], {}, "contract-dataset", 3),
        ([("round.started", {"fingerprint": "cd" * 32})], {}, "contract-fingerprint", 3),
        (
            [("round.started", {"consumer": "someone-else"})],
            {"consumer": "robotco"},
            "contract-consumer",
            3,
        ),
        ([("round.started", {"releases": COSTLY})] * 2, {}, "contract-epsilon", 4),
        ([("round.started", {"releases": CHEAP})] * 4, {}, "contract-rounds", 6),
        (
            [("round.started", {"releases": COSTLIER})] * 3,
            {"epsilon": 10.0, "rounds": 9},
            "budget-epsilon",
            5,
        ),
        (
            [("round.finished", {"time": "2026-12-05T00:00:00Z", "model_sha256": "00"})],
            {},
            "after-expiry",
            3,
        ),
        (  # the one evaluation a round allows, after the contract expired
            [
                ("round.started", {}),
                ("round.finished", {"round": 1, "model_sha256": "ab" * 32}),
                (
                    "round.evaluated",
                    {"round": 1, "time": "2026-12-05T00:00:00Z", "model_sha256": "ab" * 32},
                ),
            ],
            {},
            "after-expiry",
            5,
        ),
    ],
)
def test_rules(tmp_path: Path, tail, contract, rule, index) -> None:
    r = _history(tmp_path, tail, **contract)
    assert not r.ok and r.first.rule == rule and r.first.index == index, r.violations
    assert str(r.first).startswith(f"entry {index}: {rule}")


def test_rules_hold_for_a_good_history(tmp_path: Path) -> None:
    r = _history(
        tmp_path,
        [
            ("round.started", {}),
            ("round.started", {}),
            ("access.refused", {"time": "2026-12-05T00:00:00Z", "reason": "x"}),
        ],
    )
    assert r.ok, r.violations
    assert r.epsilon_by_dataset == {"ds1": pytest.approx(ROUND_1["epsilon"] + ROUND_2["epsilon"])}
    assert not r.anchored and not r.verified  # accepted as self-consistent only


def test_untrusted_actor(scenario: Scenario, tmp_path: Path) -> None:
    """When actors are listed, events by anyone else are named."""
    stranger = Ed25519PrivateKey.generate()
    scenario.log.append(make_event("quality.reported", stranger, "mallory", dataset_id="ds1"))
    pub = tmp_path / "robotco.pub"
    pub.write_text(
        json.dumps(
            {
                "name": "robotco",
                "role": "consumer",
                "public_key": base64.b64encode(raw_public(scenario.consumer)).decode(),
            }
        )
    )
    with open(scenario.trusted, "a") as f:
        f.write("actor robotco.pub\n")
    r = audit(
        scenario.log.iter_entries(), scenario.log.checkpoint(), load_trusted_keys(scenario.trusted)
    )
    assert r.first.rule == "actor-untrusted" and r.first.index == 7


H = "ab" * 32  # a model hash
#: what the first round.started of a contract charges for RELEASE, and a bit more
EPS_1 = ROUND_1["epsilon"]


@pytest.mark.parametrize(
    ("tail", "contract", "rule", "index", "values"),
    [
        # a round.finished with no round.started at all
        ([("round.finished", {"model_sha256": H})], {}, "round-not-started", 3, {"round": 1}),
        # ... for another round, run or dataset than the one started
        (
            [("round.started", {}), ("round.finished", {"round": 2, "model_sha256": H})],
            {},
            "round-not-started",
            4,
            {"run_id": "r1", "round": 2},
        ),
        (
            [
                ("round.started", {}),
                ("round.finished", {"round": 1, "run_id": "r2", "model_sha256": H}),
            ],
            {},
            "round-not-started",
            4,
            {"run_id": "r2"},
        ),
        (
            [
                ("round.started", {}),
                (
                    "round.finished",
                    {"round": 1, "dataset_id": "ds2", "fingerprint": "cd" * 32, "model_sha256": H},
                ),
            ],
            {},
            "round-not-started",
            4,
            {"dataset": "ds2"},
        ),
        # ... or before its round.started
        (
            [("round.finished", {"round": 1, "model_sha256": H}), ("round.started", {"round": 1})],
            {},
            "round-not-started",
            3,
            {"round": 1},
        ),
        # more epsilon finished than started charged
        (
            [
                ("round.started", {}),
                ("round.finished", {"round": 1, "epsilon": EPS_1 + 0.2, "model_sha256": H}),
            ],
            {},
            "round-epsilon",
            4,
            {"charged": EPS_1, "finished": EPS_1 + 0.2},
        ),
        # a finished round names its epsilon and its model
        (
            [
                ("round.started", {}),
                ("round.finished", {"round": 1, "epsilon": None, "model_sha256": H}),
            ],
            {},
            "round-malformed",
            4,
            {"epsilon": None},
        ),
        ([("round.started", {}), ("round.finished", {"round": 1})], {}, "round-model", 4, {}),
        (
            [("round.started", {}), ("round.finished", {"round": 1, "model_sha256": "00"})],
            {},
            "round-model",
            4,
            {"model_sha256": "00"},
        ),
        (
            [("round.started", {}), ("round.finished", {"round": 1, "model_sha256": H.upper()})],
            {},
            "round-model",
            4,
            {"model_sha256": H.upper()},
        ),
        # no frame round on a dataset first charged per episode (none named: frame), nor a
        # round.finished that says frame for an episode round
        (
            [
                ("round.started", {"round": 1, "privacy_unit": "episode"}),
                ("round.started", {"round": 2}),
            ],
            {},
            "round-privacy-unit",
            4,
            {"privacy_unit": "frame", "first_unit": "episode", "first_index": 3},
        ),
        (
            [
                ("round.started", {"privacy_unit": "episode"}),
                ("round.finished", {"round": 1, "model_sha256": H, "privacy_unit": "frame"}),
            ],
            {},
            "round-privacy-unit",
            4,
            {"privacy_unit": "frame", "first_unit": "episode"},
        ),
    ],
)
def test_finished_rounds(tmp_path: Path, tail, contract, rule, index, values) -> None:
    """round.finished is checked against the round.started of the same run, round, dataset."""
    r = _history(tmp_path, tail, **contract)
    assert not r.ok and (r.first.rule, r.first.index) == (rule, index), r.violations
    assert values.items() <= r.first.values.items(), r.first
    assert str(r.first).startswith(f"entry {index}: {rule}")


def test_finished_excess_epsilon_counts_against_the_contract(tmp_path: Path) -> None:
    """The epsilon a round reports beyond its charge was spent: the contract's limit sees it."""
    r = _history(
        tmp_path,
        [
            ("round.started", {}),
            ("round.finished", {"round": 1, "epsilon": 2.5, "model_sha256": H}),
        ],
    )
    assert [(v.index, v.rule) for v in r.violations] == [
        (4, "round-epsilon"),
        (4, "contract-epsilon"),
    ]
    spent = pytest.approx(2.5)
    assert r.violations[1].values == {"contract_id": "c1", "spent": spent, "limit": 2.0}
    assert r.epsilon_by_dataset == {"ds1": pytest.approx(2.5)}
    (rec,) = r.rounds  # `audit show` marks the round as not verifying
    assert not rec.ok and rec.model_sha256 == H and rec.finished_index == 4


def test_finished_rounds_that_hold(tmp_path: Path) -> None:
    """Finished in any order, with less epsilon than charged, evaluated once: no violation."""
    r = _history(
        tmp_path,
        [
            ("round.started", {"round": 1}),
            ("round.started", {"round": 2}),
            ("round.finished", {"round": 2, "model_sha256": H}),
            ("round.finished", {"round": 1, "epsilon": 0.4, "model_sha256": "cd" * 32}),
            ("round.evaluated", {"round": 1, "model_sha256": "cd" * 32}),
            ("round.evaluated", {"round": 2, "model_sha256": H}),
        ],
    )
    assert r.ok, r.violations
    episode = _history(
        tmp_path / "episode",
        [
            ("round.started", {"privacy_unit": "episode"}),
            ("round.finished", {"round": 1, "model_sha256": H, "privacy_unit": "episode"}),
        ],
    )
    assert episode.ok, episode.violations
    # an episode round on a dataset counted per frame composes (episode-level bounds a frame)
    mixed = _history(
        tmp_path / "mixed",
        [("round.started", {"round": 1}), ("round.started", {"privacy_unit": "episode"})],
    )
    assert mixed.ok, mixed.violations
    assert r.epsilon_by_dataset == {"ds1": pytest.approx(ROUND_1["epsilon"] + ROUND_2["epsilon"])}
    assert [(x.round, x.model_sha256, x.ok) for x in r.rounds] == [
        (1, "cd" * 32, True),
        (2, H, True),
    ]


#: the normalisation statistics (round 0) of run r1: three noisy sums
STATS = {"round": 0, "release": "stats", "releases": [[8.0, 1.0, 3]]}
REVOKED = {"reason": "holder ended it", "contract_state": "revoked"}


@pytest.mark.parametrize(
    ("tail", "contract", "rule", "index", "values"),
    [
        # round-repeated: one charge, its release sent twice (the replay attack)
        (
            [
                ("round.started", {}),
                ("round.finished", {"round": 1, "model_sha256": H}),
                ("round.finished", {"round": 1, "model_sha256": "cd" * 32}),
            ],
            {},
            "round-repeated",
            5,
            {"contract_id": "c1", "run_id": "r1", "round": 1, "dataset": "ds1"},
        ),
        # ... or charged twice (the ledger refuses a second charge of a run's round)
        (
            [("round.started", {"round": 1}), ("round.started", {"round": 1})],
            {},
            "round-repeated",
            4,
            {"run_id": "r1", "round": 1},
        ),
        # ... the statistics released twice in one run
        ([("round.started", STATS), ("round.started", STATS)], {}, "round-repeated", 4, {}),
        # round-evaluated: no evaluation before the round finished, none twice (a free
        # oracle on the data), none of the statistics
        (
            [("round.started", {}), ("round.evaluated", {"round": 1, "model_sha256": H})],
            {},
            "round-evaluated",
            4,
            {"round": 1},
        ),
        (
            [("round.evaluated", {"round": 1, "model_sha256": H})],
            {},
            "round-evaluated",
            3,
            {"round": 1},
        ),
        (
            [
                ("round.started", {}),
                ("round.finished", {"round": 1, "model_sha256": H}),
                ("round.evaluated", {"round": 1, "model_sha256": H}),
                ("round.evaluated", {"round": 1, "model_sha256": H}),
            ],
            {},
            "round-evaluated",
            6,
            {"contract_id": "c1", "round": 1},
        ),
        (
            [
                ("round.started", STATS),
                ("round.finished", {"round": 0, "release": "stats", "model_sha256": H}),
                ("round.evaluated", {"round": 0, "model_sha256": H}),
            ],
            {},
            "round-evaluated",
            5,
            {"round": 0},
        ),
        (
            [
                ("round.started", {}),
                ("round.finished", {"round": 1, "model_sha256": H}),
                ("round.evaluated", {"round": 1}),
            ],
            {},
            "round-model",
            5,
            {},
        ),
        # after-revocation: nothing of a round after the contract was revoked
        (
            [("access.refused", REVOKED), ("round.started", {"round": 1})],
            {},
            "after-revocation",
            4,
            {"contract_id": "c1", "revoked_index": 3},
        ),
        (
            [
                ("round.started", {}),
                ("access.refused", REVOKED),
                ("round.finished", {"round": 1, "model_sha256": H}),
            ],
            {},
            "after-revocation",
            5,
            {"revoked_index": 4},
        ),
        (
            [
                ("round.started", {}),
                ("round.finished", {"round": 1, "model_sha256": H}),
                ("access.refused", REVOKED),
                ("round.evaluated", {"round": 1, "model_sha256": H}),
            ],
            {},
            "after-revocation",
            6,
            {"revoked_index": 5},
        ),
        # round-mechanism: the charge recomputed from the releases the entry logs
        ([("round.started", {"releases": DROP})], {}, "round-mechanism", 3, {"round": 1}),
        ([("round.started", {"releases": []})], {}, "round-mechanism", 3, {}),
        ([("round.started", {"releases": [[0.0, 1.0, 1]]})], {}, "round-mechanism", 3, {}),
        ([("round.started", {"releases": [[8.0, 1.5, 1]]})], {}, "round-mechanism", 3, {}),
        ([("round.started", {"releases": [8.0, 1.0, 1]})], {}, "round-mechanism", 3, {}),
        # numbers no float holds the curve of: named, not a crash of the auditor
        ([("round.started", {"releases": [[1e-300, 1.0, 1]]})], {}, "round-mechanism", 3, {}),
        ([("round.started", {"releases": [[1e300, 0.5, 1]]})], {}, "round-mechanism", 3, {}),
        (  # a charge logged too low (as if this were the contract's first release)
            [("round.started", {}), ("round.started", {"epsilon": EPS_1})],
            {},
            "round-mechanism",
            4,
            {"epsilon": EPS_1, "accountant": pytest.approx(ROUND_2["epsilon"], rel=1e-9)},
        ),
        (
            [("round.started", {"contract_epsilon": EPS_1 / 2})],
            {},
            "round-mechanism",
            3,
            {"contract_epsilon": EPS_1 / 2},
        ),
        ([("round.started", {"contract_epsilon": DROP})], {}, "round-mechanism", 3, {}),
        ([("round.started", {"release": DROP})], {}, "round-mechanism", 3, {"release": None}),
        ([("round.started", {"release": "stats"})], {}, "round-mechanism", 3, {"round": 1}),
        ([("round.started", {"round": 0})], {}, "round-mechanism", 3, {"release": "round"}),
        ([("round.started", {})], {"delta": None}, "round-mechanism", 3, {"delta": None}),
        ([("round.started", {})], {"delta": 2.0}, "round-mechanism", 3, {"delta": 2.0}),
        # round 0 does not count as one of the contract's rounds, the rounds after it do
        (
            [("round.started", STATS), *[("round.started", {"releases": CHEAP})] * 4],
            {},
            "contract-rounds",
            7,
            {"rounds": 4, "limit": 3},
        ),
    ],
)
def test_round_rules(tmp_path: Path, tail, contract, rule, index, values) -> None:
    r = _history(tmp_path, tail, **contract)
    assert not r.ok and (r.first.rule, r.first.index) == (rule, index), r.violations
    assert values.items() <= r.first.values.items(), r.first
    assert str(r.first).startswith(f"entry {index}: {rule}")


def test_round_rules_that_hold(tmp_path: Path) -> None:
    """Statistics once, then the contract's 3 rounds, each finished and evaluated once;
    a refusal that only says "revoked" in its text, or a rejected contract, ends nothing."""
    r = _history(
        tmp_path,
        [
            ("round.started", STATS),
            ("round.finished", {"round": 0, "release": "stats", "model_sha256": H}),
            ("access.refused", {"reason": "contract c1 revoked: not really"}),
            ("access.refused", {"reason": "no", "contract_state": "rejected"}),
            *[
                event
                for n in (1, 2, 3)
                for event in (
                    ("round.started", {"round": n}),
                    ("round.finished", {"round": n, "model_sha256": H}),
                    ("round.evaluated", {"round": n, "model_sha256": H}),
                )
            ],
        ],
    )
    assert r.ok, r.violations
    releases = [*STATS["releases"], *RELEASE * 3]
    assert r.epsilon_by_dataset["ds1"] == pytest.approx(accountant.epsilon(releases, DELTA))
    # another run's statistics are another release (once per run and dataset)
    two = _history(
        tmp_path / "two",
        [("round.started", STATS), ("round.started", {**STATS, "run_id": "r2"})],
    )
    assert two.ok, two.violations


def test_a_mechanism_logged_wrong_counts_what_left(tmp_path: Path) -> None:
    """A charge logged lower than the accountant's: flagged, and the contract's epsilon and
    the dataset's count what the releases cost (the larger), not what the entry says."""
    r = _history(tmp_path, [("round.started", {"releases": COSTLY * 2, "epsilon": 0.5})])
    cost = accountant.epsilon(COSTLY * 2, DELTA)
    assert [v.rule for v in r.violations] == ["round-mechanism", "contract-epsilon"]
    assert r.violations[1].values["spent"] == pytest.approx(cost)
    assert r.epsilon_by_dataset == {"ds1": pytest.approx(cost)}


def test_a_round_without_releases_still_counts(tmp_path: Path) -> None:
    """An entry the accountant cannot read is flagged once: what it charged then counts on
    top of the curve, as the ledger counts rows without releases, so the next entry holds."""
    r = _history(
        tmp_path,
        [
            ("round.started", {"releases": DROP, "epsilon": 0.3, "contract_epsilon": 0.3}),
            ("round.started", {"contract_epsilon": ROUND_1["epsilon"] + 0.3}),
        ],
    )
    assert [(v.index, v.rule) for v in r.violations] == [(3, "round-mechanism")], r.violations


def test_mechanism_memory_is_one_curve_per_contract(tmp_path: Path) -> None:
    """The checker keeps a contract's releases as one composed curve, whatever its rounds."""
    from dataspace.audit.rules import RuleChecker

    r = _history(tmp_path, [("round.started", {"releases": CHEAP})] * 3)
    assert r.ok, r.violations
    checker = RuleChecker(AuditReport())
    key = Ed25519PrivateKey.generate()
    es = [*events(key, Ed25519PrivateKey.generate())[2:3]]
    earlier: list = []
    for n in range(1, 4):
        es.append(
            make_event(
                "round.started",
                key,
                ORIGIN,
                contract_id="c1",
                purpose="research",
                dataset_id="ds1",
                fingerprint=FP,
                time="2026-11-03T09:00:00Z",
                run_id="r1",
                round=n,
                **charge(earlier, RELEASE),
            )
        )
        earlier += RELEASE
    from dataspace.audit.events import check_entry

    for i, e in enumerate(es):
        f, *_, t = check_entry(e, None)
        checker.feed(i, f, t)
    assert not checker.r.violations, checker.r.violations
    (m,) = checker.mechanisms.values()
    assert m.curve == accountant.compose(earlier) and len(m.curve) == len(accountant.ORDERS)


# The verifier's fast canonical check (one C encoder pass) must agree with rfc8785 exactly.
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1.0, -0.0, 1e-5, 1e-7, 1e16, 1e21, 0.001, 2.5e-300, 123456789012345.6])
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _json_values, max_size=6))
def test_fast_canonical_check_agrees_with_rfc8785(obj: dict) -> None:
    try:
        canonical = rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError:
        canonical = None
    python = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    )
    for entry in {canonical, python} - {None}:
        try:
            text = entry.decode()
        except UnicodeDecodeError:
            continue
        parsed = json.loads(text)
        try:  # the reference: rfc8785 re-serializes what the entry parses to
            want = rfc8785.dumps(json.loads(text)) == entry
        except rfc8785.CanonicalizationError:
            want = False
        assert _canonical_text(text, entry, parsed) == want, entry


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"clip_norm":0.5', b'"clip_norm":5e-1'),  # an exponent Python would not write
        (b'"clip_norm":0.5', b'"clip_norm":0.50'),
        (b'"round":1', b'"round":1.0'),  # Python writes 1.0 back as 1.0; RFC 8785 writes 1
        (b'"round":1', b'"round":1E0'),
        (b'"round":1', b'"round":9007199254740993'),  # beyond an exact double
        (b'"round":1', b'"round":NaN'),
        (b'"round":1', b'"round":-0'),
        (b'"run_id":"r1"', rb'"run_id":"\u0072\u0031"'),  # escapes RFC 8785 does not use
        (b"{", b" {"),
        (b'"sig":', b'"sig" :'),
    ],
)
def test_non_canonical_entries_are_refused(scenario: Scenario, old: bytes, new: bytes) -> None:
    entry = scenario.entries[3]  # round.started, round 1, clip norm 0.5
    assert old in entry
    verify_event(entry)
    with pytest.raises(EventError, match=r"canonical|not JSON"):
        verify_event(entry.replace(old, new, 1))
    with pytest.raises(EventError):
        verify_event(entry + b" ")


@pytest.mark.parametrize(
    "entry",
    [b"[" * 100_000, b'{"a":' * 100_000, b"", b"\xff", b"[]", b'{"v":1} x', b'"sig"'],
)
def test_garbage_entries_are_malformed_not_a_crash(entry: bytes) -> None:
    with pytest.raises(EventError):
        verify_event(entry)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.3, 50.0),
            st.one_of(st.just(1.0), st.floats(1e-4, 1.0)),
            st.integers(0, 300),
        ),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([1e-5, 1e-6, 3.75e-6, 0.01]),
)
def test_the_auditors_running_curve_is_the_ledgers_to_the_last_digit(releases, delta) -> None:
    """What the auditor keeps per contract (one curve, converted with cached terms) gives
    exactly what the ledger computes from every release (dataspace.accountant)."""
    curve = accountant.compose_onto(accountant.compose(releases[:1]), releases[1:])
    assert curve == accountant.compose(releases)
    assert accountant.epsilon_at(curve, delta) == accountant.epsilon(releases, delta)


def test_verify_source_is_the_one_front_door(
    scenario: Scenario, tmp_path: Path, capsysbinary
) -> None:
    """Folder, path string, bundle or an open log: one function, the report `verify` prints."""
    from dataspace.audit import LogError, TrustedKeysError, verify_source
    from dataspace.audit.source import FolderSource
    from dataspace.cli import main

    bundle = tmp_path / "bundle"
    write_bundle(bundle, scenario.log.checkpoint(), scenario.log.iter_entries())
    n = len(scenario.entries)
    for src in (tmp_path / "log", str(tmp_path / "log"), bundle, FolderSource(scenario.log)):
        r = verify_source(src, scenario.trusted, quorum=2)
        assert r.verified and r.entries_checked == n, (src, r.violations)
        assert r.witnesses == ["w1.example", "w2.example"]
    args = ["audit", "verify", str(tmp_path / "log"), "--trusted-keys", str(scenario.trusted)]
    assert main([*args, "--witness-quorum", "3", "--json"]) == 4
    printed = json.loads(capsysbinary.readouterr().out)
    r = verify_source(tmp_path / "log", load_trusted_keys(scenario.trusted), quorum=3)
    assert printed == json.loads(json.dumps(r.to_json()))
    assert r.first.rule == "witness-quorum" and r.first.values["missing"] == []
    # an earlier checkpoint of the source, on request (the hub's dashboard pins its own)
    early = TransparencyLog.create(tmp_path / "early", ORIGIN, scenario.key)
    early.append_many(scenario.entries[:3])
    r = verify_source(scenario.log, scenario.trusted, checkpoint=early.checkpoint())
    assert r.size == r.entries_checked == 3 and r.first.rule == "unanchored"
    # None: strict only where the source has witnesses
    assert verify_source(early.directory, scenario.trusted, allow_unanchored=None).ok
    assert not verify_source(tmp_path / "log", scenario.trusted, allow_unanchored=None).first
    with pytest.raises(LogError, match="not a site folder"):
        verify_source(tmp_path / "nothing", scenario.trusted)
    with pytest.raises(TrustedKeysError):
        verify_source(tmp_path / "log", tmp_path / "no.keys")


def test_a_broken_trusted_keys_file_is_a_typed_error(tmp_path) -> None:
    """A line that is not JSON, or a .vkey include that cannot be read, is a
    TrustedKeysError naming the line (never a raw JSONDecodeError or OSError)."""
    from dataspace.audit import TrustedKeysError
    from dataspace.audit.trust import parse_trusted_keys

    for text, what in (("{not json", "line 1"), ("\n missing.vkey", "line 2")):
        with pytest.raises(TrustedKeysError, match=what):
            parse_trusted_keys(text, tmp_path)
