"""The witnessing driver (C2SP tlog-witness client) and the cosignatures a log keeps.

Witnesses run in process (:class:`dataspace.audit.witness.Witness`) behind a
``post`` function that speaks the HTTP statuses of the spec; the real HTTP
path is covered by test_witness_e2e.py.
"""

from __future__ import annotations

import socket
import time
from base64 import b64encode
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.cosignature import witness_verifier
from dataspace.audit.crosscheck import cross_check, is_hub_log, parse_all
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import parse_note, raw_public
from dataspace.audit.storage import COSIGNED, KEEP_COSIGNED, LogError
from dataspace.audit.witness import SIZE_CONTENT_TYPE, Witness, WitnessError
from dataspace.audit.witnessing import (
    BadCosignatureError,
    Peer,
    WitnessPusher,
    WitnessRefusedError,
    WitnessUnreachableError,
    add_checkpoint_url,
    http_post,
    witness_all,
    witness_once,
)

ORIGIN = "site.example/log"


class Local:
    """A witness in process, answering like the HTTP endpoint; counts the calls."""

    def __init__(self, witness: Witness, before=None) -> None:
        self.witness = witness
        self.calls: list[bytes] = []
        self.before = before

    def __call__(self, url: str, body: bytes) -> tuple[int, bytes, str]:
        self.calls.append(body)
        if self.before is not None:
            self.before()
        try:
            return 200, self.witness.add_checkpoint(body), "text/plain"
        except WitnessError as e:
            if e.status == 409:
                return 409, e.body or b"", SIZE_CONTENT_TYPE
            return e.status, str(e).encode(), "text/plain"


@pytest.fixture
def log(tmp_path: Path) -> TransparencyLog:
    log = TransparencyLog.create(tmp_path / "log", ORIGIN, Ed25519PrivateKey.generate())
    log.append_many([b"e%d" % i for i in range(5)])
    return log


def _witness(tmp_path: Path, log: TransparencyLog, name: str = "w1") -> tuple[Witness, Peer]:
    w = Witness(tmp_path / name, name, Ed25519PrivateKey.generate(), [log.verifier])
    return w, Peer(f"http://{name}.invalid", witness_verifier(name, w.signer.public_key))


def _names(note: bytes) -> set[str]:
    return {s.name for s in parse_note(note).signatures} - {ORIGIN}


def test_first_contact_and_growth(tmp_path: Path, log: TransparencyLog) -> None:
    w, peer = _witness(tmp_path, log)
    post = Local(w)
    c = witness_once(log, peer, post=post)
    assert (c.witness, c.size, c.verified) == ("w1", 5, True)
    assert len(post.calls) == 1 and post.calls[0].startswith(b"old 0\n\n")
    log.append_many([b"f1", b"f2"])
    # a pusher that forgot the size: the 409 names it, the request is rebuilt with a proof
    c = witness_once(log, peer, known_size=0, post=post)
    assert c.size == 7 and len(post.calls) == 3
    assert post.calls[1].startswith(b"old 0\n") and post.calls[2].startswith(b"old 5\n")
    assert w.latest(ORIGIN).size == 7
    assert _names(log.checkpoint()) == {"w1"}  # attached to the current checkpoint too
    assert log.fsck().ok


def test_cosignature_kept_when_the_log_moves_on_before_the_answer(
    tmp_path: Path, log: TransparencyLog
) -> None:
    w1, p1 = _witness(tmp_path, log, "w1")
    w2, p2 = _witness(tmp_path, log, "w2")
    assert witness_once(log, p1, post=Local(w1)).size == 5
    assert witness_once(log, p2, post=Local(w2)).size == 5
    # the next push: the log signs a newer checkpoint while w1 is answering
    log.append(b"x")
    slow = Local(w1, before=lambda: log.append(b"y"))
    c = witness_once(log, p1, known_size=5, post=slow)
    assert c.size == 6 and log.size == 7
    latest = log.checkpoint()
    assert checkpoint_of_note(latest).size == 7 and _names(latest) == set()
    kept = {checkpoint_of_note(n).size: _names(n) for n in log.cosigned_checkpoints()}
    assert kept == {5: {"w1", "w2"}, 6: {"w1"}}
    # the latest fully cosigned: size 5 (both), not 6 (w1 only) nor 7 (nobody)
    assert checkpoint_of_note(log.witnessed_checkpoint()).size == 5
    witness_once(log, p2, known_size=5, post=Local(w2))
    witness_once(log, p1, known_size=6, post=Local(w1))
    assert checkpoint_of_note(log.witnessed_checkpoint()).size == 7
    assert _names(log.witnessed_checkpoint()) == {"w1", "w2"}
    # a read-only opening (an auditor's) sees the same
    ro = TransparencyLog.open(log.directory)
    assert ro.witnessed_checkpoint() == log.witnessed_checkpoint()


def test_a_busy_log_still_gets_fully_cosigned(tmp_path: Path, log: TransparencyLog) -> None:
    """One pass pushes one checkpoint to every witness, even if the log grows meanwhile."""
    ws = [_witness(tmp_path, log, n) for n in ("w1", "w2")]
    posts = {p.url: Local(w, before=lambda: log.append(b"busy")) for w, p in ws}

    def post(url: str, body: bytes) -> tuple[int, bytes, str]:
        return posts[url](url, body)

    got, errors = witness_all(log, [p for _, p in ws], post=post)
    assert not errors and [c.size for c in got] == [5, 5] and log.size == 7
    assert checkpoint_of_note(log.witnessed_checkpoint()).size == 5
    assert _names(log.witnessed_checkpoint()) == {"w1", "w2"}


def test_a_keyless_pusher_keeps_what_it_got(tmp_path: Path, log: TransparencyLog) -> None:
    """`dataspace audit witness` opens the log without its key; the service appends meanwhile."""
    w, peer = _witness(tmp_path, log)
    ro = TransparencyLog.open(log.directory)
    c = witness_once(ro, peer, post=Local(w, before=lambda: log.append(b"z")))
    assert c.size == 5 and checkpoint_of_note(log.checkpoint()).size == 6
    (kept,) = ro.cosigned_checkpoints()
    assert checkpoint_of_note(kept).size == 5 and _names(kept) == {"w1"}
    assert log.fsck().ok


def test_refusals_are_typed(tmp_path: Path, log: TransparencyLog) -> None:
    w, peer = _witness(tmp_path, log)
    witness_once(log, peer, post=Local(w))
    # a fork: the same key and origin, another history, longer
    fork = TransparencyLog.create(tmp_path / "fork", ORIGIN, log.signer.key)
    fork.append_many([b"e0", b"e1", b"EVIL", b"e3", b"e4", b"e5"])
    with pytest.raises(WitnessRefusedError) as e:
        witness_once(fork, peer, post=Local(w))
    assert e.value.status == 422 and "consistency" in str(e.value)
    assert fork.cosigned_checkpoints() == [] and w.latest(ORIGIN).size == 5
    # the same size, another root
    same = TransparencyLog.create(tmp_path / "same", ORIGIN, log.signer.key)
    same.append_many([b"e0", b"e1", b"e2", b"e3", b"NOPE"])
    with pytest.raises(WitnessRefusedError) as e:
        witness_once(same, peer, known_size=5, post=Local(w))
    assert e.value.status == 422 and "fork" in str(e.value)
    # a rollback: a shorter log than the witness saw
    short = TransparencyLog.create(tmp_path / "short", ORIGIN, log.signer.key)
    short.append_many([b"e0", b"e1"])
    with pytest.raises(WitnessRefusedError, match="rollback"):
        witness_once(short, peer, post=Local(w))
    # an unknown log
    other = TransparencyLog.create(tmp_path / "o", "other.example", Ed25519PrivateKey.generate())
    with pytest.raises(WitnessRefusedError) as e:
        witness_once(other, peer, post=Local(w))
    assert e.value.status == 404


def test_a_wrong_cosignature_is_not_kept(tmp_path: Path, log: TransparencyLog) -> None:
    w, _ = _witness(tmp_path, log)
    impostor = Peer("http://w1.invalid", witness_verifier("w1", bytes(32)))
    with pytest.raises(BadCosignatureError):
        witness_once(log, impostor, post=Local(w))
    assert log.cosigned_checkpoints() == [] and _names(log.checkpoint()) == set()
    # no key known: kept, reported as not verified
    c = witness_once(log, Peer("http://w1.invalid"), known_size=5, post=Local(w))
    assert not c.verified and _names(log.witnessed_checkpoint()) == {"w1"}

    def garbage(url: str, body: bytes) -> tuple[int, bytes, str]:
        return 200, b"hello\n", "text/plain"

    with pytest.raises(BadCosignatureError):
        witness_once(log, Peer("http://x.invalid"), post=garbage)


def test_unreachable_witness(log: TransparencyLog) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    peer = Peer(add_checkpoint_url(f"http://127.0.0.1:{port}"))
    assert peer.url.endswith("/v1/log/add-checkpoint")
    got, errors = witness_all(log, [peer], post=http_post(timeout=2))
    assert got == [] and isinstance(errors[0], WitnessUnreachableError)


def test_witness_url_of_no_known_scheme_is_unreachable(log: TransparencyLog) -> None:
    # a fuzzed participant name once became a peer URL and killed the pusher thread
    got, errors = witness_all(log, [Peer("not a url/v1/log/add-checkpoint")], post=http_post(1))
    assert got == [] and isinstance(errors[0], WitnessUnreachableError)
    assert "not a usable URL" in str(errors[0])


def test_add_checkpoint_url() -> None:
    assert add_checkpoint_url("http://h:1") == "http://h:1/v1/log/add-checkpoint"
    assert add_checkpoint_url("http://h:1/v1/log/") == "http://h:1/v1/log/add-checkpoint"
    assert add_checkpoint_url("http://h/w/add-checkpoint") == "http://h/w/add-checkpoint"


def test_pusher_pushes_only_what_is_new_and_retries(tmp_path: Path, log: TransparencyLog) -> None:
    w, peer = _witness(tmp_path, log)
    post = Local(w)
    down = {"yes": True}

    def flaky(url: str, body: bytes) -> tuple[int, bytes, str]:
        if down["yes"]:
            raise WitnessUnreachableError(url, "connection refused")
        return post(url, body)

    pusher = WitnessPusher(log, lambda: [peer], interval=0.01, post=flaky)
    assert pusher.push() == []
    (st,) = pusher.snapshot()
    assert st["error"] and st["failures"] == 1
    down["yes"] = False
    got = pusher.push(force=True)
    assert [c.size for c in got] == [5] and pusher.snapshot()[0]["error"] is None
    assert pusher.push() == []  # nothing new
    n = len(post.calls)
    log.append(b"more")
    assert [c.size for c in pusher.push()] == [6] and len(post.calls) == n + 1  # size remembered
    # the thread: an append is cosigned without anyone calling push()
    pusher.start()
    try:
        log.append(b"again")
        pusher.notify()
        for _ in range(200):
            if w.latest(ORIGIN).size == 7:
                break
            time.sleep(0.02)
        assert w.latest(ORIGIN).size == 7
    finally:
        pusher.stop()


def test_kept_checkpoints_are_pruned_and_checked(tmp_path: Path, log: TransparencyLog) -> None:
    w, peer = _witness(tmp_path, log)
    for i in range(KEEP_COSIGNED + 3):
        log.append(b"n%d" % i)
        witness_once(log, peer, known_size=log.size - 1, post=Local(w))
    sizes = sorted(int(p.name) for p in (log.directory / COSIGNED).iterdir())
    assert len(sizes) == KEEP_COSIGNED and sizes[-1] == log.size
    assert log.fsck().ok
    # a flipped byte in a kept note: fsck names it, and it is never handed out
    path = log.directory / COSIGNED / str(sizes[-1])
    note = bytearray(path.read_bytes())
    note[len(ORIGIN) + 2] ^= 1  # inside the size/root lines
    path.write_bytes(bytes(note))
    report = log.fsck()
    assert not report.ok and f"{COSIGNED}/{sizes[-1]}" in report.problems[0]
    assert all(checkpoint_of_note(n).size != sizes[-1] for n in log.cosigned_checkpoints())


def test_keep_refuses_a_foreign_checkpoint(tmp_path: Path, log: TransparencyLog) -> None:
    w, _ = _witness(tmp_path, log)
    other = TransparencyLog.create(tmp_path / "o", ORIGIN, log.signer.key)
    other.append_many([b"a", b"b"])
    line = w.add_checkpoint(b"old 0\n\n" + other.checkpoint())  # a valid cosignature...
    body = parse_note(other.checkpoint()).text
    with pytest.raises(LogError, match="not one of this log's trees"):
        log.keep_cosignature(body, line)  # ...of another tree: not kept here
    assert log.cosigned_checkpoints() == []


# --- cross-check -------------------------------------------------------------------------


def _ev(key, actor, kind, **kw) -> bytes:
    return make_event(kind, key, actor, time="2026-11-20T10:00:00Z", **kw)


@pytest.fixture
def two_logs():
    site, hub = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    site_b64 = b64encode(raw_public(site)).decode()
    common = {"dataset_id": "ds1", "fingerprint": "ab" * 32}
    site_log = [
        _ev(site, "site-a", "dataset.enrolled", **common),
        _ev(site, "site-a", "contract.agreed", contract_id="c1", purpose="research", **common),
        _ev(site, "site-a", "round.started", contract_id="c1", run_id="r1", round=1,
            epsilon=0.5, **common),
        _ev(site, "site-a", "round.finished", contract_id="c1", run_id="r1", round=1,
            model_sha256="11" * 32, **common),
    ]  # fmt: skip
    hub_log = [
        _ev(hub, "hub", "catalog.published", holder=site_b64, **common),
        _ev(hub, "hub", "contract.registered", contract_id="c1", holder=site_b64, **common),
        _ev(hub, "hub", "run.registered", run_id="r1", contracts=["c1"]),
        _ev(hub, "hub", "round.registered", run_id="r1", round=1, loss=0.1,
            epsilon_per_dataset={"ds1": 0.5}),
    ]  # fmt: skip
    return site, hub, site_b64, common, site_log, hub_log


def test_cross_check_matching_logs(two_logs) -> None:
    *_, site_log, hub_log = two_logs
    r = cross_check(site_log, hub_log)
    assert r.ok and r.rounds_matched == 1 and (r.site, r.hub) == ("site-a", "hub"), r.mismatches
    assert is_hub_log(parse_all(hub_log)) and not is_hub_log(parse_all(site_log))


def test_cross_check_names_what_one_side_left_out(two_logs) -> None:
    site, hub, site_b64, common, site_log, hub_log = two_logs
    # the hub never registered round 1: both site entries are flagged
    r = cross_check(site_log, hub_log[:3])
    assert [(m.rule, m.site_index) for m in r.mismatches] == [
        ("round-not-in-hub", 2),
        ("round-not-in-hub", 3),
    ]
    # a site round of a run the hub does not know; a contract the run does not list
    extra = _ev(site, "site-a", "round.started", contract_id="c9", run_id="r2", round=1,
                epsilon=0.1, **common)  # fmt: skip
    r = cross_check([*site_log, extra], hub_log)
    assert [m.rule for m in r.mismatches] == ["run-not-in-hub"]
    listed = _ev(hub, "hub", "run.registered", run_id="r1", contracts=["c2"])
    r = cross_check(site_log, [hub_log[0], hub_log[1], listed, hub_log[3]])
    assert {m.rule for m in r.mismatches} == {"contract-not-in-run"}
    # the hub reports what the site never did (vice versa)
    r = cross_check(site_log[:2], hub_log)
    assert [m.rule for m in r.mismatches] == ["round-not-in-site"]
    assert r.mismatches[0].hub_index == 3 and r.mismatches[0].values["dataset_id"] == "ds1"
    r = cross_check(site_log[:1], hub_log[:2])
    assert [m.rule for m in r.mismatches] == ["contract-not-in-site"]
    other = {**common, "fingerprint": "cd" * 32}
    forged = _ev(hub, "hub", "catalog.published", holder=site_b64, **other)
    r = cross_check(site_log, [*hub_log, forged])
    assert [m.rule for m in r.mismatches] == ["dataset-not-in-site"]
    assert "hub entry 4" in str(r.mismatches[0])


def test_cross_check_round_zero_is_the_runs_not_a_round(two_logs) -> None:
    """The normalisation statistics (round 0, release "stats") belong to a run the hub
    registered, but the hub registers training rounds only: no round.registered needed."""
    site, _, _, common, site_log, hub_log = two_logs
    stats = [
        _ev(site, "site-a", kind, contract_id="c1", run_id=run, round=0, release="stats",
            **common)
        for run in ("r1",) for kind in ("round.started", "round.finished")
    ]  # fmt: skip
    r = cross_check([*site_log[:2], *stats, *site_log[2:]], hub_log)
    assert r.ok and r.rounds_matched == 1, r.mismatches
    # ... of a run the hub never registered: still named
    other = _ev(site, "site-a", "round.started", contract_id="c1", run_id="r9", round=0,
                release="stats", **common)  # fmt: skip
    r = cross_check([*site_log, other], hub_log)
    assert [m.rule for m in r.mismatches] == ["run-not-in-hub"]
    # a round 0 that is not the statistics is a round: the hub must have registered it
    zero = _ev(site, "site-a", "round.started", contract_id="c1", run_id="r1", round=0,
               **common)  # fmt: skip
    r = cross_check([*site_log, zero], hub_log)
    assert [m.rule for m in r.mismatches] == ["round-not-in-hub"]


@pytest.mark.slow
def test_kill_9_while_cosigning_keeps_every_acknowledged_cosignature(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    from dataspace.audit.witness import Witness as W

    def pem(k: Ed25519PrivateKey, path: Path) -> Path:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return path

    key, wkey = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    TransparencyLog.create(tmp_path / "log", ORIGIN, key).close()
    kf, wf = pem(key, tmp_path / "log.pem"), pem(wkey, tmp_path / "w.pem")
    repo = Path(__file__).resolve().parents[2]
    for round_no in range(3):
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.audit.cosigner", str(tmp_path / "log"), str(kf),
             str(tmp_path / "w"), str(wf)],
            cwd=repo, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        first = p.stdout.readline()
        time.sleep(0.2 + 0.3 * round_no)
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        acked = [int(x) for x in (first + out).split()]
        assert acked, "nothing was cosigned before the kill"
        log = TransparencyLog.open(tmp_path / "log", key=key)
        assert log.fsck().ok, log.fsck().problems
        w = W(tmp_path / "w", "w1", wkey, [log.verifier])
        assert w.latest(ORIGIN).size >= acked[-1]
        kept = {checkpoint_of_note(n).size: n for n in log.cosigned_checkpoints()}
        # the newest KEEP_COSIGNED cosigned sizes are kept; the kill may land after a
        # cosignature was kept and before it was printed, so one unacknowledged size can
        # be among them: an acknowledged size must be kept unless 64 newer ones are
        for size in acked:
            if sum(k > size for k in kept) < KEEP_COSIGNED:
                assert _names(kept[size]) == {"w1"}, size
        assert acked[-1] in kept
        note = log.witnessed_checkpoint()
        cosig = [s for s in parse_note(note).signatures if s.name == "w1"]
        assert witness_verifier("w1", w.signer.public_key).verify(parse_note(note).text,
                                                                  cosig[0].sig)  # fmt: skip
        log.close()
