"""The hub in process (ASGI): catalog, registries, roles, bad input, its log, OpenAPI."""

from __future__ import annotations

import json
import time

import pytest
from starlette.testclient import TestClient

from dataspace.audit.events import parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.auth.httpsig import HttpSigAuth, sign_url_request
from dataspace.auth.service import MAX_BODY
from dataspace.hub.app import create_app
from tests.services.conftest import hub_parties, signed_contract

FP = "ab" * 32


def entry(dataset_id="so101", **kw):
    return {
        "dataset_id": dataset_id,
        "fingerprint": FP,
        "dcat": {"@context": {"dcat": "http://www.w3.org/ns/dcat#"}, "@type": "dcat:Dataset"},
        "title": f"{dataset_id} demonstrations",
        "robot_type": "so101_follower",
        "fps": 30.0,
        "tasks": ["Pick the cube and place it in the box"],
        "episodes": 4,
        "frames": 1492,
        "quality_score": 87.5,
    } | kw


@pytest.fixture
def hub(tmp_path):
    parties, trust = hub_parties(tmp_path / "keys")
    app = create_app(tmp_path / "hub", trust=trust)
    with TestClient(app) as c:
        yield c, {k: HttpSigAuth(v.key) for k, v in parties.items()}, parties, tmp_path / "hub"


def _kinds(data_dir) -> list[str]:
    with TransparencyLog.open(data_dir / "log") as log:
        return [parse_event(e).kind for e in log.entries(0, log.size)]


def test_publish_and_search(hub):
    c, auth, _, data = hub
    assert c.post("/v1/catalog", json=entry(), auth=auth["holder"]).status_code == 200
    other = entry("g1", robot_type="unitree_g1", fps=50.0, tasks=["wave"], quality_score=40.0)
    assert c.post("/v1/catalog", json=other, auth=auth["holder2"]).status_code == 200

    def ids(**params):
        r = c.get("/v1/catalog", params=params, auth=auth["alice"])
        assert r.status_code == 200, r.text
        return [e["dataset_id"] for e in r.json()["entries"]]

    assert ids() == ["so101", "g1"]  # best quality first
    assert ids(robot_type="UNITREE_G1") == ["g1"]
    assert ids(task="cube") == ["so101"]
    assert ids(fps=50) == ["g1"]
    assert ids(min_quality=50) == ["so101"]
    assert ids(q="SO101 demo") == ["so101"]
    assert ids(q="nothing-like-it") == []
    assert _kinds(data).count("catalog.published") == 2


def test_withdrawal_is_logged_and_only_by_the_entrys_holder(hub):
    """A withdrawal is an action of the log: entry first, then the row (it once deleted the
    row and then failed to log an unknown kind, leaving no trace)."""
    c, auth, _, data = hub
    assert c.post("/v1/catalog", json=entry(), auth=auth["holder"]).status_code == 200
    # another holder cannot withdraw it, nor can anyone withdraw what is not there
    r = c.delete("/v1/catalog/so101", auth=auth["holder2"])
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
    assert c.delete("/v1/catalog/nope", auth=auth["holder"]).status_code == 404
    assert "catalog.withdrawn" not in _kinds(data)
    r = c.delete("/v1/catalog/so101", auth=auth["holder"])
    assert r.status_code == 200, r.text
    assert _kinds(data).count("catalog.withdrawn") == 1
    assert c.get("/v1/catalog", auth=auth["alice"]).json()["total"] == 0


def test_catalog_states_each_holders_privacy_unit(hub):
    """A consumer reads what a contract's epsilon protects before asking for one."""
    c, auth, _, _ = hub
    ok = c.post("/v1/catalog", json=entry(privacy_unit="episode"), auth=auth["holder"])
    assert ok.status_code == 200
    assert c.post("/v1/catalog", json=entry("g1"), auth=auth["holder2"]).status_code == 200
    units = {
        e["dataset_id"]: e["privacy_unit"]
        for e in c.get("/v1/catalog", auth=auth["alice"]).json()["entries"]
    }
    assert units == {"so101": "episode", "g1": None}  # None: an older connector said nothing
    r = c.post("/v1/catalog", json=entry(privacy_unit="user"), auth=auth["holder"])
    assert r.status_code == 422 and "privacy_unit" in r.json()["detail"]


@pytest.mark.parametrize(
    ("dcat", "needle"),
    [
        ({"@type": "dcat:Dataset"}, "no @context"),
        ({"@context": {}, "@type": "foaf:Person"}, "expected dcat:Dataset"),
        ({"@context": {}}, "expected dcat:Dataset"),
    ],
)
def test_malformed_jsonld_is_400_and_changes_nothing(hub, dcat, needle):
    c, auth, _, data = hub
    before = _kinds(data)
    r = c.post("/v1/catalog", json=entry(dcat=dcat), auth=auth["holder"])
    assert r.status_code == 400
    assert r.json()["error"] == "malformed_jsonld" and needle in r.json()["detail"]
    assert c.get("/v1/catalog", auth=auth["alice"]).json()["total"] == 0
    assert _kinds(data) == before


def test_bad_input_is_a_precise_4xx(hub):
    c, auth, _, _ = hub
    r = c.post(
        "/v1/catalog",
        content=b"{not json",
        auth=auth["holder"],
        headers={"content-type": "application/json"},
    )
    assert (r.status_code, r.json()["error"]) == (400, "malformed_json")
    r = c.post("/v1/catalog", json=entry(fps=-1), auth=auth["holder"])
    assert r.status_code == 422 and "fps" in r.json()["detail"]
    r = c.post("/v1/catalog", json=entry(extra=1), auth=auth["holder"])
    assert r.status_code == 422 and "extra" in r.json()["detail"]
    # the hub pushes its checkpoints to this URL for cosigning: only http(s) is a URL for it
    r = c.post("/v1/catalog", json=entry(connector_url="file:///etc/passwd"), auth=auth["holder"])
    assert r.status_code == 422 and "connector_url" in r.json()["detail"]
    r = c.post("/v1/catalog", content=b"x" * (MAX_BODY + 1), auth=auth["holder"])
    assert (r.status_code, r.json()["error"]) == (413, "body_too_large")
    for bad in ("NaN", "[1, Infinity]"):  # JSON has neither (RFC 8259)
        raw = json.dumps(entry(dcat={"@context": {}, "@type": "dcat:Dataset", "n": 1}))
        raw = raw.replace('"n": 1', f'"n": {bad}').encode()
        r = c.post(
            "/v1/catalog",
            content=raw,
            auth=auth["holder"],
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422 and "finite" in r.json()["detail"], r.text
    r = c.get("/v1/catalog", params={"limit": 10**9}, auth=auth["alice"])
    assert r.status_code == 422
    old = sign_url_request(hub[2]["alice"].key, "GET", "http://testserver/v1/catalog")
    # a valid signature made 10 minutes ago
    from dataspace.auth.httpsig import sign_request

    old = sign_request(
        hub[2]["alice"].key,
        "GET",
        "/v1/catalog",
        "",
        b"",
        authority="testserver",
        created=int(time.time()) - 600,
    )
    r = c.get("/v1/catalog", headers=old)
    assert (r.status_code, r.json()["error"]) == (401, "stale_request")


def test_roles_and_refusals_are_logged(hub):
    c, auth, parties, data = hub
    r = c.post("/v1/catalog", json=entry(), auth=auth["alice"])
    assert (r.status_code, r.json()["error"]) == (403, "role_forbidden")
    assert "needs holder" in r.json()["detail"]
    assert c.get("/v1/participants", auth=auth["alice"]).status_code == 403
    assert c.get("/v1/participants", auth=auth["auditor"]).status_code == 200
    assert c.get("/v1/whoami", auth=auth["alice"]).json()["role"] == "consumer"
    refused = [parse_event(e) for e in TransparencyLog.open(data / "log").entries(0)]
    refused = [e for e in refused if e.kind == "access.refused"]
    assert refused[0].get("caller") == parties["alice"].key_id
    assert refused[0].get("reason") == "role_forbidden"


def test_contract_registry_is_private_per_consumer(hub):
    c, auth, parties, _ = hub
    assert c.post("/v1/catalog", json=entry(), auth=auth["holder"]).status_code == 200
    # what both parties signed (the hub checks both signatures, dataspace.hub.registry)
    rec = signed_contract(
        parties["holder"].key, parties["alice"].key, "so101", FP, contract_id="c-alice"
    )
    assert c.post("/v1/contracts", json=rec, auth=auth["holder"]).status_code == 200
    assert c.post("/v1/contracts", json=rec, auth=auth["holder"]).status_code == 200  # idempotent
    r = c.post("/v1/contracts", json=rec | {"state": "revoked"}, auth=auth["holder2"])
    assert r.status_code == 409
    assert c.post("/v1/contracts", json=rec, auth=auth["alice"]).status_code == 403

    def seen(who):
        return [
            x["contract_id"] for x in c.get("/v1/contracts", auth=auth[who]).json()["contracts"]
        ]

    assert seen("alice") == ["c-alice"]
    assert seen("bob") == []
    assert seen("holder") == ["c-alice"] and seen("holder2") == []
    assert seen("auditor") == ["c-alice"]
    assert c.get("/v1/contracts/c-alice", auth=auth["bob"]).status_code == 404
    # runs: only over one's own contracts
    assert (
        c.post(
            "/v1/runs", json={"run_id": "r", "contract_ids": ["c-alice"]}, auth=auth["bob"]
        ).status_code
        == 404
    )
    assert (
        c.post(
            "/v1/runs", json={"run_id": "r", "contract_ids": ["c-alice"]}, auth=auth["alice"]
        ).status_code
        == 200
    )
    rnd = {"round": 0, "loss": 1.5, "epsilon": {"so101": 0.2}, "contributions": {"site-a": 1}}
    assert c.post("/v1/runs/r/rounds", json=rnd, auth=auth["alice"]).status_code == 200
    assert c.post("/v1/runs/r/rounds", json=rnd, auth=auth["alice"]).status_code == 409
    assert c.post("/v1/runs/r/rounds", json=rnd | {"round": 1}, auth=auth["bob"]).status_code == 404
    assert c.get("/v1/runs", auth=auth["bob"]).json()["runs"] == []
    run = c.get("/v1/runs/r", auth=auth["holder"]).json()
    assert [x["round"] for x in run["rounds"]] == [0]
    with TransparencyLog.open(hub[3] / "log") as log:
        rounds = [parse_event(e) for e in log.entries(0, log.size)]
    rounds = [e for e in rounds if e.kind == "round.registered"]
    assert len(rounds) == 1 and rounds[0].fields["contributions"] == {"site-a": 1}


def test_log_checkpoint_public_entries_restricted(hub):
    c, auth, _, _ = hub
    c.post("/v1/catalog", json=entry(), auth=auth["holder"])
    r = c.get("/v1/log/checkpoint")
    # a new hub log's origin is URL-style (dataspace.audit.witnesskey.log_origin)
    assert r.status_code == 200 and r.text.startswith("dataspace.invalid/hub/")
    assert c.get("/v1/log/entries").status_code == 401
    assert c.get("/v1/log/entries", auth=auth["alice"]).status_code == 403
    r = c.get("/v1/log/entries", auth=auth["auditor"])
    assert r.status_code == 200
    kinds = [json.loads(line)["kind"] for line in r.content.splitlines()]
    assert "catalog.published" in kinds
    assert c.post("/v1/log/append", content=b"{}", auth=auth["holder"]).status_code == 403


def test_hub_witnesses_a_registered_site_log(hub, tmp_path):
    """A holder's log gets cosigned by the hub (C2SP tlog-witness over HTTP)."""
    from dataspace.audit.events import make_event
    from dataspace.audit.witness import witness_log
    from dataspace.auth.log_api import http_post  # noqa: F401 - the real client is urllib

    c, _, parties, _ = hub
    log = TransparencyLog.create(tmp_path / "site-log", "site-a", parties["holder"].key)
    log.append(make_event("dataset.enrolled", parties["holder"].key, "site-a", dataset_id="x"))

    def post(body: bytes) -> tuple[int, bytes]:
        r = c.post("/v1/log/add-checkpoint", content=body)
        return r.status_code, r.content

    cosigned = witness_log(log, post)
    assert b"dataspace-hub" in cosigned


def test_openapi_documents_every_route(hub):
    c, _, _, _ = hub
    schema = c.get("/openapi.json").json()
    for path, ops in schema["paths"].items():
        if path.startswith("/v1/log"):
            continue  # the audit area's router
        for method, op in ops.items():
            assert op.get("summary"), f"{method} {path} has no summary"
            assert "200" in op["responses"], f"{method} {path}"
            assert {"401", "403", "422"} <= set(op["responses"]), f"{method} {path}"
    assert "RFC 9421" in schema["info"]["description"]
