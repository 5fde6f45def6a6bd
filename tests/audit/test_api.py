"""The FastAPI router: append, entries, checkpoint, proofs, add-checkpoint."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dataspace.audit import merkle
from dataspace.audit.checkpoint import open_checkpoint
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.witness import Witness, request_body, witness_log
from dataspace.auth.log_api import log_router


def _app(tmp_path: Path):
    key = Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp_path / "log", "hub.example/log", key)
    wkey = Ed25519PrivateKey.generate()
    other = TransparencyLog.create(
        tmp_path / "site", "site-b.example/log", Ed25519PrivateKey.generate()
    )
    w = Witness(tmp_path / "w", "hub.example", wkey, [other.verifier])
    app = FastAPI()
    app.include_router(log_router(lambda: log, w), prefix="/log")
    return TestClient(app), log, key, other, w


def test_endpoints(tmp_path: Path) -> None:
    client, log, key, _other, _w = _app(tmp_path)
    es = [make_event("dataset.enrolled", key, "hub", dataset_id=f"d{i}") for i in range(5)]
    assert client.post("/log/append", content=es[0]).json() == {"index": 0}
    assert client.post("/log/append", content=b"\n".join(es[1:])).json() == {
        "indices": [1, 2, 3, 4]
    }
    r = client.post("/log/append", content=es[0].replace(b'"d0"', b'"dX"'))
    assert r.status_code == 400 and "signature" in r.json()["detail"]
    assert (
        client.get("/log/entries", params={"start": 1, "end": 3}).content
        == es[1] + b"\n" + es[2] + b"\n"
    )
    note = client.get("/log/checkpoint")
    assert note.headers["content-type"].startswith("text/plain")
    cp = open_checkpoint(note.content, log.verifier)
    assert cp.size == 5
    p = client.get("/log/proof/inclusion", params={"index": 2, "size": 5}).json()
    assert p["leaf_hash"] == merkle.leaf_hash(es[2]).hex()
    merkle.verify_inclusion(
        2, 5, merkle.leaf_hash(es[2]), [bytes.fromhex(h) for h in p["hashes"]], cp.root
    )
    c = client.get("/log/proof/consistency", params={"from": 2, "size": 5}).json()
    assert c["from"] == 2 and c["size"] == 5
    merkle.verify_consistency(2, 5, [bytes.fromhex(h) for h in c["hashes"]], log.root(2), cp.root)
    assert client.get("/log/proof/inclusion", params={"index": 9, "size": 5}).status_code == 400
    assert client.get("/log/entries", params={"start": 3, "end": 9}).status_code == 400


def test_witness_endpoint(tmp_path: Path) -> None:
    client, log, _key, other, _w = _app(tmp_path)
    other.append_many([b"a", b"b", b"c"])

    def post(body: bytes):
        r = client.post("/log/add-checkpoint", content=body)
        return r.status_code, r.content

    line = witness_log(other, post)
    assert other.checkpoint().endswith(line)
    r = client.post("/log/add-checkpoint", content=request_body(1, [], other.checkpoint()))
    assert r.status_code == 409 and r.content == b"3\n"
    assert r.headers["content-type"].startswith("text/x.tlog.size")
    r = client.post("/log/add-checkpoint", content=request_body(0, [], log.checkpoint()))
    assert r.status_code == 404
