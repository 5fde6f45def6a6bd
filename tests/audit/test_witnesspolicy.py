"""The witnessed checkpoint follows the current witness set: a dead witness holds it
back only until it is stale, a removed one not at all, and it never moves back.

Witnesses run in process (tests.audit.test_witnessing.Local) behind the pusher
of the services (:class:`WitnessPusher`) with a fake wall clock; the real HTTP
path is test_stale_witness_e2e.py.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import parse_note, vkey_text
from dataspace.audit.storage import WITNESSES
from dataspace.audit.witness import SIZE_CONTENT_TYPE, Witness, WitnessError
from dataspace.audit.witnessing import (
    Peer,
    WitnessPusher,
    WitnessUnreachableError,
    policy_settings,
)
from dataspace.audit.witnesspolicy import (
    WitnessPolicy,
    WitnessPolicyError,
    WitnessState,
    parse_witness_policy,
)
from dataspace.auth.log_api import log_router
from dataspace.cli import main
from tests.audit.test_witnessing import ORIGIN, Local, _witness

STALE = 60.0


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0  # in the past: at the real time, a failing witness is stale

    def __call__(self) -> float:
        return self.t


class Net:
    """Routes a pusher's posts to in-process witnesses; ``down`` ones do not answer."""

    def __init__(self) -> None:
        self.routes: dict[str, Local] = {}
        self.down: set[str] = set()

    def add(self, peer: Peer, local: Local) -> None:
        self.routes[peer.url] = local

    def __call__(self, url: str, body: bytes) -> tuple[int, bytes, str]:
        if url in self.down:
            raise WitnessUnreachableError(url, "connection refused")
        return self.routes[url](url, body)


def _size(note: bytes) -> int:
    return checkpoint_of_note(note).size


def _names(note: bytes) -> set[str]:
    return {s.name for s in parse_note(note).signatures} - {ORIGIN}


@dataclass
class World:
    log: TransparencyLog
    net: Net
    peers: dict[str, Peer]
    clock: Clock
    current: list[str]
    pusher: WitnessPusher

    def parts(self) -> tuple:
        """All six fields, in order, for unpacking in a test."""
        return (self.log, self.net, self.peers, self.clock, self.current, self.pusher)


@pytest.fixture
def world(tmp_path: Path) -> World:
    key = Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp_path / "log", ORIGIN, key)
    log.append_many([_event(key) for _ in range(5)])
    net, peers = Net(), {}
    for name in ("w1", "w2", "w3"):
        w, p = _witness(tmp_path, log, name)
        net.add(p, Local(w))
        peers[name] = p
    clock = Clock()
    current = ["w1", "w2"]
    pusher = WitnessPusher(
        log,
        lambda: [peers[n] for n in current],
        interval=0.0,  # no back-off between passes: each push() retries the failing ones
        post=net,
        stale_after=STALE,
        clock=clock,
    )
    return World(log, net, peers, clock, current, pusher)


def _event(key: Ed25519PrivateKey) -> bytes:
    return make_event("quality.reported", key, ORIGIN, dataset_id="ds1", score=90.0)


def _grow(log: TransparencyLog, pusher: WitnessPusher, witnessed: list[int]) -> None:
    """One append, one pass; record the witnessed size (it must never go down)."""
    log.append(_event(log.signer.key))
    pusher.push()
    witnessed.append(_size(log.witnessed_checkpoint(now=pusher.clock())))


def test_a_dead_witness_holds_the_checkpoint_back_only_until_stale(
    world: World, capsys: pytest.CaptureFixture
) -> None:
    log, net, peers, clock, pusher = (world.log, world.net, world.peers, world.clock, world.pusher)
    seen: list[int] = []
    assert [c.size for c in pusher.push()] == [5, 5]
    assert _size(log.witnessed_checkpoint(now=clock.t)) == 5
    assert _names(log.witnessed_checkpoint(now=clock.t)) == {"w1", "w2"}
    # w2 is gone: within the grace period it still holds the witnessed checkpoint back
    net.down.add(peers["w2"].url)
    for _ in range(3):
        clock.t += 10
        _grow(log, pusher, seen)
    assert seen == [5, 5, 5] and log.size == 8
    st = {w["witness"]: w for w in log.witnessing_status(now=clock.t)["witnesses"]}
    assert st["w2"]["error"] and not st["w2"]["stale"] and st["w2"]["size"] == 5
    assert st["w1"]["size"] == 8 and st["w1"]["cosigned_witnessed"]
    # the old rule (every witness of the kept checkpoints) would serve size 5 for 64 more
    # checkpoints; the policy serves the newest one of the live witnesses once w2 is stale
    clock.t += STALE
    _grow(log, pusher, seen)
    assert seen[-1] == log.size == 9
    note = log.witnessed_checkpoint(now=clock.t)
    assert _names(note) == {"w1"}
    # (the same folder without its policy file falls back to the old rule: size 5)
    import shutil

    old_rule = log.directory.parent / "old-rule"
    shutil.copytree(log.directory, old_rule, ignore=shutil.ignore_patterns("witnesses.json"))
    assert _size(TransparencyLog.open(old_rule).witnessed_checkpoint(now=clock.t)) == 5
    status = log.witnessing_status(now=clock.t)
    assert status["stale"] == ["w2"] and status["witnessed_size"] == 9
    (w2,) = [w for w in status["witnesses"] if w["witness"] == "w2"]
    assert w2["stale_since_size"] == 5 and "connection refused" in w2["error"]
    assert w2["failing_since"] is not None
    # an auditor reading the folder (read-only) sees the same, and verify says who is stale
    ro = TransparencyLog.open(log.directory)
    assert ro.witnessed_checkpoint(now=clock.t) == note
    trusted = log.directory.parent / "trusted"
    trusted.write_text(
        vkey_text(ORIGIN, log.public_key) + "\n" + "".join(f"witness {p.verifier.vkey()}\n"
        for p in (peers["w1"], peers["w2"]))
    )  # fmt: skip
    # (verify runs at the real time: far beyond the fake clock, so w2 is stale there too)
    capsys.readouterr()
    code = main(["audit", "verify", str(log.directory), "--trusted-keys", str(trusted), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert code == 0 and rep["size"] == 9 and rep["latest_size"] == 9
    assert rep["stale_witnesses"][0]["witness"] == "w2"
    assert rep["stale_witnesses"][0]["since_size"] == 5
    code = main(
        ["audit", "verify", str(log.directory), "--trusted-keys", str(trusted),
         "--witness-quorum", "2", "--json"]
    )  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    assert code == 4 and "missing: w2 (stale since size 5" in rep["first_violation"]
    assert rep["violations"][0]["values"]["stale"] == ["w2"]
    # w2 comes back: required again from the size it cosigns; nothing ever went back
    net.down.clear()
    clock.t += 1
    _grow(log, pusher, seen)
    assert _names(log.witnessed_checkpoint(now=clock.t)) == {"w1", "w2"}
    assert log.witnessing_status(now=clock.t)["stale"] == []
    assert seen == sorted(seen) and seen[-1] == log.size


def test_a_returning_witness_never_moves_the_checkpoint_back(world: World) -> None:
    """w2 returns cosigning a checkpoint w1 has not cosigned yet: w2 is required only from
    that size, so the witnessed one stays w1's newest (not the last one both cosigned)."""
    clock = world.clock
    policy = WitnessPolicy(
        (WitnessState("w1", since=0, size=5), WitnessState("w2", since=9, size=9)),
        stale_after=STALE,
    )
    assert policy.required(5, clock.t) == {"w1"} and policy.required(9, clock.t) == {"w1", "w2"}
    assert policy.satisfied(5, {"w1"}, clock.t) and not policy.satisfied(9, {"w2"}, clock.t)
    assert not policy.satisfied(9, {"w3"}, clock.t)  # not a current witness


def test_a_removed_witness_stops_counting_at_once(world: World) -> None:
    log, net, peers, clock, current, pusher = world.parts()
    pusher.push()
    net.down.add(peers["w2"].url)
    seen: list[int] = []
    _grow(log, pusher, seen)
    assert seen == [5]  # w2 failing, not stale: held back
    current.remove("w2")  # the holder left the catalog
    _grow(log, pusher, seen)
    assert seen == [5, 7] and _names(log.witnessed_checkpoint(now=clock.t)) == {"w1"}
    assert [w.name for w in log.witness_policy().witnesses] == ["w1"]
    current.remove("w1")  # the last one left too: nothing holds the checkpoint back
    _grow(log, pusher, seen)
    assert seen == [5, 7, 8] and log.witness_policy().witnesses == ()
    assert log.witnessed_checkpoint(now=clock.t) == log.checkpoint()


def test_a_new_witness_that_never_answers_holds_nothing_back(world: World) -> None:
    log, net, peers, clock, current, pusher = world.parts()
    pusher.push()
    current.append("w3")
    net.down.add(peers["w3"].url)
    seen: list[int] = []
    _grow(log, pusher, seen)
    _grow(log, pusher, seen)
    assert seen == [6, 7] and _names(log.witnessed_checkpoint(now=clock.t)) == {"w1", "w2"}
    (w3,) = [w for w in log.witnessing_status(now=clock.t)["witnesses"] if w["witness"] == "w3"]
    assert w3["size"] is None and w3["error"] and not w3["stale"]


def test_a_fixed_quorum_and_all_witnesses_dead(world: World) -> None:
    log, net, peers, clock, pusher = (world.log, world.net, world.peers, world.clock, world.pusher)
    pusher.quorum = 2  # the operator's choice: never fewer than two
    pusher.push()
    net.down.add(peers["w2"].url)
    seen: list[int] = []
    for _ in range(2):
        clock.t += STALE
        _grow(log, pusher, seen)
    assert seen == [5, 5]  # w2 stale, but the quorum says two
    assert log.witnessing_status(now=clock.t)["stale"] == ["w2"]
    pusher.quorum = None
    _grow(log, pusher, seen)
    assert seen[-1] == log.size  # every live witness: w1 alone
    # both dead and stale: the newest checkpoint any current witness cosigned is served
    net.down.add(peers["w1"].url)
    newest_w1 = log.size
    clock.t += 1
    _grow(log, pusher, seen)
    clock.t += STALE
    _grow(log, pusher, seen)
    assert log.witnessing_status(now=clock.t)["stale"] == ["w1", "w2"]
    assert seen[-1] == newest_w1 < log.size and seen == sorted(seen)


def test_a_restarted_pusher_keeps_the_failure_clock(world: World) -> None:
    """The grace period is not reset by restarting the service (witnesses.json carries it)."""
    log, net, peers, clock, current, pusher = world.parts()
    pusher.push()
    net.down.add(peers["w2"].url)
    clock.t += 10
    log.append(b"x")
    pusher.push()
    since = log.witness_policy().state("w2").failing_since
    assert since == clock.t
    again = WitnessPusher(
        log,
        lambda: [peers[n] for n in current],
        interval=0.0,
        post=net,
        stale_after=STALE,
        clock=clock,
    )
    clock.t += STALE
    log.append(b"y")
    again.push()
    assert log.witness_policy().state("w2").failing_since == since
    assert _names(log.witnessed_checkpoint(now=clock.t)) == {"w1"}
    assert _size(log.witnessed_checkpoint(now=clock.t)) == log.size


def test_policy_file_round_trip_and_malformed(world: World) -> None:
    log, clock, pusher = (world.log, world.clock, world.pusher)
    pusher.push()
    policy = log.witness_policy()
    assert policy is not None and parse_witness_policy(policy.encode()) == policy
    assert policy.state("w1").since == 5 and policy.quorum is None
    with pytest.raises(WitnessPolicyError, match="size"):
        parse_witness_policy(b'{"witnesses": [{"name": "w1", "size": "5"}]}')
    with pytest.raises(WitnessPolicyError):
        parse_witness_policy(b"not json")
    (log.directory / WITNESSES).write_bytes(b'{"witnesses": 7}')
    report = log.fsck()
    assert not report.ok and WITNESSES in report.problems[0]
    assert log.witness_policy() is None  # ignored: the old rule applies
    assert _names(log.witnessed_checkpoint(now=clock.t)) == {"w1", "w2"}


def test_witnesses_endpoint(world: World) -> None:
    log = world.log
    pusher = world.pusher
    pusher.push()
    app = FastAPI()
    app.include_router(log_router(log), prefix="/log")
    with TestClient(app) as c:
        r = c.get("/log/witnesses")
    assert r.status_code == 200
    body = r.json()
    assert body["witnessed_size"] == 5 and body["size"] == 5 and body["policy"]
    assert {w["witness"] for w in body["witnesses"]} == {"w1", "w2"}


def test_policy_settings_from_the_environment() -> None:
    assert policy_settings({}) == {}
    env = {"DATASPACE_WITNESS_STALE_S": "4.5", "DATASPACE_WITNESS_QUORUM": "2"}
    assert policy_settings(env) == {"stale_after": 4.5, "quorum": 2}
    assert policy_settings({"DATASPACE_WITNESS_QUORUM": "two"}) == {}
    assert policy_settings({"DATASPACE_WITNESS_STALE_S": "-1"}) == {}
    # a quorum of 0 would call a checkpoint nobody cosigned witnessed
    assert policy_settings({"DATASPACE_WITNESS_QUORUM": "0"}) == {}
    assert policy_settings({"DATASPACE_WITNESS_STALE_S": "0"}) == {"stale_after": 0.0}


class _Served:
    """A witness behind a real HTTP server on 127.0.0.1 (stdlib), as tlog-witness answers."""

    def __init__(self, witness: Witness) -> None:
        w = witness

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code, ctype = 200, "text/plain"
                try:
                    out = w.add_checkpoint(body)
                except WitnessError as e:
                    code, out = e.status, e.body or str(e).encode()
                    ctype = SIZE_CONTENT_TYPE if e.status == 409 else "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/add-checkpoint"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cron_witnessing_records_the_witness_set(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dataspace audit witness --policy` (a log no service pushes): the --witness list is
    the witness set; a dead witness goes stale and stops holding the checkpoint back."""
    monkeypatch.setenv("DATASPACE_WITNESS_STALE_S", "0")  # stale at the first failure
    key = Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp_path / "log", ORIGIN, key)
    log.append_many([_event(key) for _ in range(3)])
    w1, p1 = _witness(tmp_path, log, "w1")
    _w2, p2 = _witness(tmp_path, log, "w2")
    served = _Served(w1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/add-checkpoint"  # nobody listens
    keys = []
    for p in (p1, p2):
        keys.append(tmp_path / f"{p.name}.vkey")
        keys[-1].write_text(p.verifier.vkey() + "\n")
    args = ["audit", "witness", str(log.directory), "--witness", served.url,
            "--witness", dead, "--witness-key", str(keys[0]), "--witness-key", str(keys[1]),
            "--timeout", "5"]  # fmt: skip
    try:
        assert main([*args, "--json"]) == 5  # the same, the witness set not recorded
        assert log.witness_policy() is None
        capsys.readouterr()
        log.append(_event(key))
        assert main([*args, "--policy", "--json"]) == 5
        res = json.loads(capsys.readouterr().out)
    finally:
        served.close()
    (e,) = res["errors"]
    assert e["witness"] == "w2" and e["since_size"] is None and "cannot reach" in e["error"]
    assert [w["witness"] for w in res["stale"]] == ["w2"]
    assert res["witnessed_size"] == 4 == res["size"]
    policy = log.witness_policy()
    assert [(w.name, w.url, w.size) for w in policy.witnesses] == [
        ("w1", served.url, 4),
        ("w2", dead, None),
    ]
    assert _names(log.witnessed_checkpoint()) == {"w1"}
    # --policy needs every witness's key (names must be the cosignatures' key names)
    assert main([*args[:7], "--witness-key", str(keys[0]), "--policy"]) == 2
