"""C2SP tlog-witness: cosign only consistent checkpoints; refuse forks and rollbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit import TrustedKeys, audit
from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.cosignature import verified_witnesses, witness_verifier
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import open_note, parse_note, parse_signature_line
from dataspace.audit.witness import Witness, WitnessError, local_post, request_body, witness_log


@pytest.fixture
def setup(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp_path / "log", "hub.example/log", key)
    log.append_many([b"e%d" % i for i in range(5)])
    w = Witness(tmp_path / "w", "site-b", Ed25519PrivateKey.generate(), [log.verifier])
    return log, key, w, tmp_path


def _status(w: Witness, body: bytes) -> int:
    with pytest.raises(WitnessError) as e:
        w.add_checkpoint(body)
    return e.value.status


def test_cosigns_consistent_growth_and_persists(setup) -> None:
    log, _key, w, tmp = setup
    note = log.checkpoint()
    line = w.add_checkpoint(request_body(0, [], note))
    sig = parse_signature_line(line.rstrip(b"\n"))
    body = parse_note(note).text
    assert verified_witnesses(body, [sig], [witness_verifier("site-b", w.signer.public_key)])
    log.append_many([b"f1", b"f2"])
    note2 = log.checkpoint()
    w2 = Witness(tmp / "w", "site-b", w.signer.key, [log.verifier])  # state survives a restart
    assert w2.latest("hub.example/log").size == 5
    w2.add_checkpoint(request_body(5, log.consistency_proof(5, 7), note2))
    assert w2.latest("hub.example/log").size == 7
    # the same checkpoint again is fine (old == size, same root)
    w2.add_checkpoint(request_body(7, [], note2))


def test_status_codes(setup) -> None:
    log, _key, w, tmp = setup
    note = log.checkpoint()
    w.add_checkpoint(request_body(0, [], note))
    log.append(b"x")
    note6 = log.checkpoint()
    # 409: old size is not the witness's latest (answer carries its size)
    with pytest.raises(WitnessError) as e:
        w.add_checkpoint(request_body(3, log.consistency_proof(3, 6), note6))
    assert e.value.status == 409 and e.value.body == b"5\n"
    # 422: a bad proof
    bad = log.consistency_proof(5, 6)
    bad[0] = bytes(32)
    assert _status(w, request_body(5, bad, note6)) == 422
    # 400: old size larger than the checkpoint
    assert _status(w, request_body(9, [], note6)) == 400
    assert _status(w, b"garbage") == 400
    # 404: unknown origin
    other_key = Ed25519PrivateKey.generate()
    other = TransparencyLog.create(tmp / "other", "other.example/log", other_key)
    assert _status(w, request_body(0, [], other.checkpoint())) == 404
    # 403: right origin, wrong key
    forged = TransparencyLog.create(tmp / "forged", "hub.example/log", other_key)
    forged.append_many([b"e%d" % i for i in range(6)])
    assert _status(w, request_body(5, [], forged.checkpoint())) == 403
    assert w.latest("hub.example/log").size == 5


def test_refuses_fork_and_rollback(setup) -> None:
    log, key, w, tmp = setup
    w.add_checkpoint(request_body(0, [], log.checkpoint()))
    # a fork: the same key signs another history of the same size
    fork = TransparencyLog.create(tmp / "fork", "hub.example/log", key)
    fork.append_many([b"e0", b"e1", b"e2", b"e3", b"EVIL"])
    assert _status(w, request_body(5, [], fork.checkpoint())) == 422
    # a longer fork with a proof from its own history: the proof fails against what w saw
    fork.append(b"e5")
    assert _status(w, request_body(5, fork.consistency_proof(5, 6), fork.checkpoint())) == 422
    # a rollback to a smaller tree
    small = TransparencyLog.create(tmp / "small", "hub.example/log", key)
    small.append_many([b"e0", b"e1"])
    assert _status(w, request_body(2, [], small.checkpoint())) == 409
    assert _status(w, request_body(5, [], small.checkpoint())) == 400
    assert w.latest("hub.example/log").root == log.root(5)
    # the two inconsistent checkpoints are kept as evidence, signed by the log's key
    same, longer = (checkpoint_of_note(n) for n in w.refused("hub.example/log"))
    assert (same.size, same.root) == (5, fork.root(5)) and same.root != log.root(5)
    assert (longer.size, longer.root) == (6, fork.root(6))
    for n in w.refused("hub.example/log"):
        open_note(n, [log.verifier])
    assert w.refused("other.example/log") == []


def _events(key: Ed25519PrivateKey, n: int, tag: str) -> list[bytes]:
    return [
        make_event("access.refused", key, "hub.example/log", reason=f"{tag}{i}", caller="x")
        for i in range(n)
    ]


def test_a_split_view_needs_a_majority_quorum_and_leaves_evidence(tmp_path: Path) -> None:
    """The log shows history A to one witness and B to the other, both extending what
    both cosigned. Each cosigns its branch; each refuses the other's (422, kept as
    evidence); an auditor asking both (quorum 2 of 2) accepts neither branch, one
    asking one (quorum 1) is fooled, unless it holds the other witness's checkpoint."""
    key = Ed25519PrivateKey.generate()
    origin = "hub.example/log"
    real = TransparencyLog.create(tmp_path / "a", origin, key)
    common = _events(key, 4, "c")
    real.append_many(common)
    ws = [Witness(tmp_path / n, n, Ed25519PrivateKey.generate(), [real.verifier]) for n in "xy"]
    for w in ws:
        witness_log(real, local_post(w))
    fork = TransparencyLog.create(tmp_path / "b", origin, key)
    fork.append_many([*common, *_events(key, 2, "b")])
    real.append_many(_events(key, 2, "a"))
    x, y = ws
    witness_log(real, local_post(x), known_size=4)  # x sees A
    witness_log(fork, local_post(y), known_size=4)  # y sees B
    with pytest.raises(WitnessError, match="two roots for size 6") as e:
        witness_log(real, local_post(y), known_size=6)
    assert e.value.status == 422
    with pytest.raises(WitnessError) as e:
        witness_log(fork, local_post(x), known_size=6)
    assert e.value.status == 422
    # y's evidence: A's signed checkpoint next to B's, both of size 6, two roots
    (a_cp,) = (checkpoint_of_note(n) for n in y.refused(origin))
    assert a_cp.size == y.latest(origin).size == 6 and a_cp.root != y.latest(origin).root
    trusted = TrustedKeys(logs=[real.verifier], witnesses=[_wv(w) for w in ws])
    for log in (real, fork):
        note = log.checkpoint()
        assert not audit(log.entries(), note, trusted, quorum=2).ok
        assert audit(log.entries(), note, trusted, quorum=1).ok
    # the auditor of A that holds y's checkpoint (B) sees the fork
    kept_by_y = y.state_path(origin).read_bytes()
    rep = audit(real.entries(), real.checkpoint(), trusted, previous=kept_by_y)
    assert [v.rule for v in rep.violations] == ["fork"]


def _wv(w: Witness):
    return witness_verifier(w.name, w.signer.public_key)
