"""The hub's run files and run.finished, attacked (issue 16): who may read a run's files,
which names, through which paths, how big; who may end a run; what the log then says.

The run directory is written here as the hub worker's ServerApp writes it
(``RUNS/<run-id>/history.json``, ``rounds/NNN/...``), beside the hub's own data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from dataspace.audit.events import make_event, parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import raw_public, vkey_text
from dataspace.audit.trust import load_trusted_keys
from dataspace.audit.verify import audit, verify_source
from dataspace.auth.httpsig import HttpSigAuth
from dataspace.federated.rundir import REGISTRATION
from dataspace.hub.app import create_app
from dataspace.hub.state import SuperLink
from dataspace.site.identity import Identity
from tests.services.conftest import make_party, signed_contract

FP = "ab" * 32
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def hub(tmp_path: Path):
    keys = tmp_path / "keys"
    keys.mkdir()
    parties = {
        "holder": make_party(keys, "holder", "holder"),
        "alice": make_party(keys, "alice", "consumer"),
        "bob": make_party(keys, "bob", "consumer"),
        "auditor": make_party(keys, "auditor", "auditor"),
    }
    trust = [
        Identity(n, r, base64.b64decode(parties[n].key_id))
        for n, r in (("holder", "holder"), ("auditor", "auditor"))
    ]
    app = create_app(tmp_path / "hub", trust=trust, max_run_file=64 * 1024)
    with TestClient(app) as c:
        auth = {k: HttpSigAuth(v.key) for k, v in parties.items()}
        auth["operator"] = HttpSigAuth(app.state.hub.log.key)
        for who in ("alice", "bob"):
            entry = {"dataset_id": f"ds-{who}", "fingerprint": FP,
                     "dcat": {"@context": {}, "@type": "dcat:Dataset"}}  # fmt: skip
            assert c.post("/v1/catalog", json=entry, auth=auth["holder"]).status_code == 200
            rec = signed_contract(parties["holder"].key, parties[who].key, f"ds-{who}", FP,
                                  contract_id=f"c-{who}")  # fmt: skip
            r = c.post("/v1/contracts", json=rec, auth=auth["holder"])
            assert r.status_code == 200, r.text
        r = c.post("/v1/runs", json={"run_id": "run-a", "contract_ids": ["c-alice"]},
                   auth=auth["alice"])  # fmt: skip
        assert r.status_code == 200, r.text
        yield c, auth, app.state.hub


def _write_run(folder: Path, status: str = "finished", rounds: int = 2) -> bytes:
    """A run directory as the ServerApp writes it; returns the last global model's bytes."""
    history = {
        "spec": {"run_id": folder.name, "out_dir": str(folder), "template": "bc-mlp"},
        "status": status,
        "stats": {"source": "dp", "sites": [], "failed": [], "epsilon": {}},
        "rounds": [
            {"round": r, "epsilon": {"ds-alice": 0.5 * r}, "sites": [{"dataset-id": "ds-alice"}]}
            for r in range(1, rounds + 1)
        ],
    }
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "stats.json").write_text("{}")
    last = b""
    for r in range(0, rounds + 1):
        d = folder / "rounds" / f"{r:03d}"
        (d / "updates").mkdir(parents=True, exist_ok=True)
        np.savez(d / "global.npz", w=np.full(3, r, dtype=np.float32))
        (d / "round.json").write_text(json.dumps({"round": r}))
        np.savez(d / "updates" / "ds-alice.npz", w=np.zeros(3, dtype=np.float32))
        last = (d / "global.npz").read_bytes()
    return last


def _kinds(hub) -> list[str]:
    log = hub.log.log
    return [parse_event(e).kind for e in log.entries(0, log.size)]


def test_registration_is_written_for_the_hub_worker(hub):
    c, auth, h = hub
    reg = json.loads((h.runs_dir / "run-a" / REGISTRATION).read_text())
    assert (
        reg["contracts"] == ["c-alice"]
        and reg["consumer"] == c.get("/v1/whoami", auth=auth["alice"]).json()["key_id"]
    )
    # run ids the registry allows but that name no single folder: registered, no folder
    for rid in ("..", "a/b", "../evil"):
        r = c.post("/v1/runs", json={"run_id": rid, "contract_ids": ["c-alice"]},
                   auth=auth["alice"])  # fmt: skip
        assert r.status_code == 200, (rid, r.text)
    assert sorted(p.name for p in h.runs_dir.iterdir()) == ["run-a"]
    assert not (h.data_dir / REGISTRATION).exists() and not (h.runs_dir.parent / "evil").exists()


def test_only_the_runs_consumer_auditors_and_the_operator_read_its_files(hub):
    c, auth, h = hub
    _write_run(h.runs_dir / "run-a")
    url = "/v1/runs/run-a/files/history.json"
    for who in ("alice", "auditor", "operator"):
        r = c.get(url, auth=auth[who])
        assert r.status_code == 200, (who, r.text)
        assert r.json()["status"] == "finished"
    for who in ("bob", "holder"):  # another consumer; the holder of its contract
        r = c.get(url, auth=auth[who])
        assert r.status_code == 404 and r.json()["error"] == "not_found", who
    assert c.get(url).status_code == 401  # unsigned
    assert c.get("/v1/runs/run-zz/files/history.json", auth=auth["alice"]).status_code == 404
    r = c.get("/v1/runs/run-a/files/rounds/002/global.npz", auth=auth["alice"])
    assert r.status_code == 200 and r.content.startswith(b"PK")
    r = c.get("/v1/runs/run-a/files/rounds/001/updates/ds-alice.npz", auth=auth["alice"])
    assert r.status_code == 200


def test_served_json_names_no_path_of_the_hubs_host(hub):
    c, auth, h = hub
    _write_run(h.runs_dir / "run-a")
    body = c.get("/v1/runs/run-a/files/history.json", auth=auth["alice"]).text
    assert str(h.runs_dir) not in body and str(h.data_dir) not in body
    assert json.loads(body)["spec"]["out_dir"] == "<local path>"


@pytest.mark.parametrize(
    "path",
    [
        "%2e%2e/%2e%2e/hub.key",  # encoded dot segments: decoded by the router, refused here
        "..%2f..%2fhub.key",
        "%2fetc%2fpasswd",  # absolute
        "rounds/001/../../../hub.key",
        "rounds/001/updates/..%2f..%2f..%2f..%2fhub.key",
        "%252e%252e/hub.key",  # double-encoded
        "registration.json",  # in the folder, not a run file
        "hub.key",
        "rounds/001/updates/.hidden.npz",
        "history.json%00.npz",
        "rounds/1/round.json",
        "rounds/001/round.json/",
    ],
)
def test_traversal_and_names_outside_the_allow_list_are_refused(hub, path):
    c, auth, h = hub
    _write_run(h.runs_dir / "run-a")
    (h.runs_dir / "hub.key").write_text("secret")  # something to reach for
    r = c.get(f"/v1/runs/run-a/files/{path}", auth=auth["alice"])
    assert r.status_code in (400, 404), (path, r.status_code, r.text)
    assert b"secret" not in r.content and b"PRIVATE" not in r.content
    assert r.json()["error"] in ("run_file", "not_found"), r.text


def test_traversal_in_the_run_id_is_refused(hub):
    c, auth, h = hub
    # ".." is a run id the registry accepts: its files are never read from the runs' parent
    c.post("/v1/runs", json={"run_id": "..", "contract_ids": ["c-alice"]}, auth=auth["alice"])
    (h.runs_dir / "history.json").write_text('{"status": "finished", "rounds": []}')
    r = c.get("/v1/runs/%2e%2e/files/history.json", auth=auth["alice"])
    assert r.status_code == 400 and r.json()["error"] == "run_file", r.text
    r = c.post("/v1/runs/%2e%2e/finished", auth=auth["alice"])
    assert r.status_code == 400, r.text


def test_symlinks_planted_in_the_runs_folder_are_refused(hub):
    c, auth, h = hub
    folder = h.runs_dir / "run-a"
    _write_run(folder)
    secret = h.data_dir / "hub.key"
    # a file that is a link to the hub's key
    (folder / "stats.json").unlink()
    os.symlink(secret, folder / "stats.json")
    r = c.get("/v1/runs/run-a/files/stats.json", auth=auth["alice"])
    assert r.status_code == 403 and r.json()["error"] == "run_file_refused", r.text
    assert b"PRIVATE" not in r.content
    # a folder on the way that is a link
    elsewhere = h.data_dir / "elsewhere" / "001"
    elsewhere.mkdir(parents=True)
    (elsewhere / "round.json").write_text('{"stolen": true}')
    os.rename(folder / "rounds", folder / "rounds-old")
    os.symlink(h.data_dir / "elsewhere", folder / "rounds")
    r = c.get("/v1/runs/run-a/files/rounds/001/round.json", auth=auth["alice"])
    assert r.status_code == 403 and b"stolen" not in r.content
    # the run's folder itself a link (to a folder holding a history of its own)
    c.post("/v1/runs", json={"run_id": "run-b", "contract_ids": ["c-alice"]}, auth=auth["alice"])
    (h.data_dir / "fake").mkdir()
    (h.data_dir / "fake" / "history.json").write_text('{"status": "finished", "rounds": []}')
    (h.runs_dir / "run-b" / REGISTRATION).unlink()
    (h.runs_dir / "run-b").rmdir()
    os.symlink(h.data_dir / "fake", h.runs_dir / "run-b")
    r = c.get("/v1/runs/run-b/files/history.json", auth=auth["alice"])
    assert r.status_code == 403, r.text
    assert c.post("/v1/runs/run-b/finished", auth=auth["alice"]).status_code == 403


def test_a_file_over_the_limit_is_refused(hub):
    c, auth, h = hub
    _write_run(h.runs_dir / "run-a")
    big = h.runs_dir / "run-a" / "rounds" / "001" / "updates" / "ds-alice.npz"
    with open(big, "wb") as f:  # sparse: 10 GB on paper, nothing on disk
        f.truncate(10 * 1024**3)
    r = c.get("/v1/runs/run-a/files/rounds/001/updates/ds-alice.npz", auth=auth["alice"])
    assert r.status_code == 403 and "limit" in r.json()["detail"], r.text
    os.mkfifo(h.runs_dir / "run-a" / "rounds" / "002" / "round.json.fifo")
    fifo = h.runs_dir / "run-a" / "rounds" / "002" / "round.json"
    fifo.unlink()
    os.rename(fifo.with_suffix(".json.fifo"), fifo)
    r = c.get("/v1/runs/run-a/files/rounds/002/round.json", auth=auth["alice"])
    assert r.status_code == 403 and "regular" in r.json()["detail"]  # answered, not blocked


def test_finished_logs_the_model_hash_from_the_hubs_own_copy(hub):
    c, auth, h = hub
    # no files yet: the run never ran here
    r = c.post("/v1/runs/run-a/finished", auth=auth["alice"])
    assert r.status_code == 409 and "no files" in r.json()["detail"], r.text
    folder = h.runs_dir / "run-a"
    _write_run(folder, status="running")
    r = c.post("/v1/runs/run-a/finished", auth=auth["alice"])
    assert r.status_code == 409 and "has not ended" in r.json()["detail"]
    model = _write_run(folder)
    # another consumer, the holder, an auditor: not theirs to end
    assert c.post("/v1/runs/run-a/finished", auth=auth["bob"]).status_code == 404
    assert c.post("/v1/runs/run-a/finished", auth=auth["holder"]).status_code == 403
    assert c.post("/v1/runs/run-a/finished", auth=auth["auditor"]).status_code == 403
    assert "run.finished" not in _kinds(h)
    r = c.post("/v1/runs/run-a/finished", auth=auth["alice"])
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert ack["status"] == "finished" and ack["rounds"] == 2 and ack["last_round"] == 2
    again = c.post("/v1/runs/run-a/finished", auth=auth["operator"]).json()
    assert again["log_index"] == ack["log_index"]  # logged once
    assert _kinds(h).count("run.finished") == 1
    ev = parse_event(h.log.log.entries(ack["log_index"], ack["log_index"] + 1)[0])
    assert ev.fields["run_id"] == "run-a" and ev.fields["contracts"] == ["c-alice"]
    assert ev.fields["model_sha256"] == ack["model_sha256"] and ev.fields["status"] == "finished"
    run = c.get("/v1/runs/run-a", auth=auth["alice"]).json()
    assert run["status"] == "finished" and run["model_sha256"] == ack["model_sha256"]
    # the hub's log verifies with run.finished in it
    trusted = h.data_dir.parent / "hub.keys"
    trusted.write_text(vkey_text(h.log.origin, raw_public(h.log.key)) + "\n")
    report = verify_source(h.log.log, str(trusted), allow_unanchored=True)
    assert report.ok, report.violations


def test_a_corrupt_history_is_a_conflict_not_a_crash(hub):
    c, auth, h = hub
    folder = h.runs_dir / "run-a"
    folder.mkdir(exist_ok=True)
    for body in ("not json", "[]", '{"status": "finished", "rounds": [{"round": "1"}]}'):
        (folder / "history.json").write_text(body)
        r = c.post("/v1/runs/run-a/finished", auth=auth["alice"])
        assert r.status_code == 409, (body, r.text)


def test_the_hub_names_its_superlink(tmp_path: Path):
    with TestClient(create_app(tmp_path / "h1")) as c:
        party = make_party(tmp_path, "x", "consumer")
        assert c.get("/v1/hub", auth=HttpSigAuth(party.key)).json()["superlink"] is None
    link = SuperLink("hub.example:9093", PEM)
    with TestClient(create_app(tmp_path / "h2", superlink=link)) as c:
        info = c.get("/v1/hub", auth=HttpSigAuth(party.key)).json()
        assert info["superlink"] == {"address": "hub.example:9093", "root_certificates": PEM}


def test_run_finished_must_name_a_registered_run(tmp_path: Path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    origin = "hub"
    ok = {"consumer": "k", "contracts": ["c1"], "status": "finished", "rounds": 1,
          "model_sha256": "ab" * 32}  # fmt: skip
    entries = [
        make_event("run.registered", key, origin, run_id="r1", consumer="k", contracts=["c1"]),
        make_event("run.finished", key, origin, run_id="r1", **ok),
        make_event("run.finished", key, origin, run_id="r2", **ok),
        make_event("run.finished", key, origin, run_id="r1", **ok | {"model_sha256": "x"}),
    ]
    log = TransparencyLog.create(tmp_path / "log", origin, key)
    log.append_many(entries)
    trusted = tmp_path / "t.keys"
    trusted.write_text(vkey_text(origin, raw_public(key)) + "\n")
    r = audit(log.iter_entries(), log.checkpoint(), load_trusted_keys(trusted),
              allow_unanchored=True)  # fmt: skip
    assert [(v.rule, v.index) for v in r.violations] == [("run-unknown", 2), ("run-malformed", 3)]
