"""The hub and a connector as real processes (``dataspace serve``) on 127.0.0.1.

One deployment per module: a hub, a connector over a site that enrolled the
real SO-101 dataset with planted canary values, a policy for two consumers.
Every response any test receives is kept, and the last test searches all of
them, plus a walk over every GET route of both OpenAPI schemas, for the
canaries and for exact per-episode values.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from dataspace.auth.client import ServiceRefusedError
from dataspace.auth.httpsig import HttpSigAuth, sign_url_request
from dataspace.connectors.client import contracts_via_hub, request_via_connector
from dataspace.net import free_port
from dataspace.site.folder import Site
from tests.services.conftest import (
    PYTHON,
    Service,
    canary_texts,
    dataset_id,
    make_party,
    set_policy,
    until,
)

pytestmark = pytest.mark.slow

RESPONSES: list[tuple[str, bytes]] = []


def _record(resp: httpx.Response) -> None:
    resp.read()
    RESPONSES.append((f"{resp.request.method} {resp.request.url}", resp.content))


def client(base: str, key) -> httpx.Client:
    return httpx.Client(
        base_url=base, auth=HttpSigAuth(key), timeout=30, event_hooks={"response": [_record]}
    )


@pytest.fixture(scope="module")
def deploy(site_template: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("deploy")
    shutil.copytree(site_template, tmp / "site")
    site = Site.open(tmp / "site")
    keys = tmp / "keys"
    keys.mkdir()
    p = {n: make_party(keys, n, r) for n, r in [("alice", "consumer"), ("bob", "consumer")]}
    p["auditor"] = make_party(keys, "auditor", "auditor")
    set_policy(site, consumers=[p["alice"].key_id, p["bob"].key_id])
    hub = Service(
        [
            "hub",
            "--data",
            str(tmp / "hub"),
            "--trust",
            str(site.root / "site.key.pub"),
            "--trust",
            str(p["auditor"].key_path) + ".pub",
        ],
        free_port(),
        tmp / "hub.log",
    )
    conn = None
    try:
        hub.wait_ready()
        conn = Service(
            [
                "connector",
                str(site.root),
                "--hub",
                hub.url,
                "--trust",
                str(p["auditor"].key_path) + ".pub",
            ],
            free_port(),
            tmp / "connector.log",
        )
        conn.wait_ready(until=lambda h: h["published"])
        _seed(hub, conn, site, p)
        yield {"hub": hub, "conn": conn, "site": site, "p": p, "tmp": tmp}
    finally:
        for s in (conn, hub):
            if s is not None:
                s.stop()


def _seed(hub: Service, conn: Service, site: Site, p: dict) -> None:
    """One agreed contract (alice) and one run with a round, so that every test, on
    whichever xdist worker it runs, finds state behind every route."""
    did = dataset_id(site)
    c = request_via_connector(
        conn.url,
        p["alice"].key,
        dataset=did,
        purpose="research",
        epsilon=0.5,
        rounds=1,
        until=until(),
        template="mlp",
    )
    deadline = time.monotonic() + 60
    while c["contract_id"] not in {
        x["contract_id"] for x in contracts_via_hub(hub.url, p["alice"].key)
    }:
        assert time.monotonic() < deadline, "the seed contract never reached the hub"
        time.sleep(0.2)
    with client(hub.url, p["alice"].key) as a:
        run = {"run_id": "run-0", "contract_ids": [c["contract_id"]]}
        assert a.post("/v1/runs", json=run).is_success
        rnd = {"round": 0, "loss": 0.5, "epsilon": {did: 0.1}, "contributions": {site.name: 1.0}}
        assert a.post("/v1/runs/run-0/rounds", json=rnd).is_success


def test_catalog_cli_finds_the_published_dataset(deploy):
    p, hub = deploy["p"], deploy["hub"]
    base = [PYTHON, "-m", "dataspace", "catalog", "--hub", hub.url, "--json"]
    env_key = ["--key", str(p["alice"].key_path)]
    out = subprocess.run(base + env_key + ["--query", "so101"], capture_output=True, check=True)
    page = json.loads(out.stdout.decode().strip().splitlines()[-1])
    RESPONSES.append(("catalog cli", out.stdout))
    assert page["total"] == 1
    (e,) = page["entries"]
    assert e["dataset_id"] == dataset_id(deploy["site"])
    assert e["episodes"] == 4 and e["frames"] == 1492 and e["fps"] == 30
    assert e["holder"] == deploy["site"].identity.key_b64
    assert e["connector_url"] == deploy["conn"].url
    with client(hub.url, p["alice"].key) as c:
        robot = e["robot_type"]
        assert c.get("/v1/catalog", params={"robot_type": robot}).json()["total"] == 1
        assert c.get("/v1/catalog", params={"robot_type": "unitree_g1"}).json()["total"] == 0
        assert c.get("/v1/catalog", params={"fps": 30}).json()["total"] == 1
        assert c.get("/v1/catalog", params={"fps": 50}).json()["total"] == 0
        # enrollment ran the quality check: the score travels with the entry and filters
        q = e["quality_score"]
        assert q is not None and 0 < q <= 100
        assert c.get("/v1/catalog", params={"min_quality": q}).json()["total"] == 1
        assert c.get("/v1/catalog", params={"min_quality": min(q + 0.1, 100)}).json()["total"] == 0


def test_contract_over_http_accepted_registered_and_private(deploy):
    p, hub, conn, site = deploy["p"], deploy["hub"], deploy["conn"], deploy["site"]
    did = dataset_id(site)
    agreed = request_via_connector(
        conn.url,
        p["alice"].key,
        dataset=did,
        purpose="research",
        epsilon=1.0,
        rounds=2,
        until=until(),
        template="mlp",
        expected_holder=site.identity.key_b64,
    )
    assert agreed["state"] == "agreed" and agreed["signatures"]["consumer"]
    cid = agreed["contract_id"]
    deadline = time.monotonic() + 60
    while cid not in {c["contract_id"] for c in contracts_via_hub(hub.url, p["alice"].key)}:
        assert time.monotonic() < deadline, "contract never reached the hub"
        time.sleep(0.1)
    with client(hub.url, p["alice"].key) as a, client(hub.url, p["bob"].key) as b:
        mine = a.get("/v1/contracts").json()["contracts"]
        assert cid in {c["contract_id"] for c in mine}
        assert {c["consumer"] for c in mine} == {p["alice"].key_id}
        theirs = b.get("/v1/contracts").json()["contracts"]
        assert all(c["consumer"] == p["bob"].key_id for c in theirs)
        r = b.get(f"/v1/contracts/{cid}")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        # the trainer registers a run and a round (aggregates only)
        assert a.post("/v1/runs", json={"run_id": "run-1", "contract_ids": [cid]}).is_success
        rnd = {"round": 1, "loss": 0.25, "epsilon": {did: 0.5}, "contributions": {site.name: 1.0}}
        assert a.post("/v1/runs/run-1/rounds", json=rnd).is_success
        assert (
            b.post("/v1/runs", json={"run_id": "run-2", "contract_ids": [cid]}).status_code == 404
        )
    with client(conn.url, p["bob"].key) as b:
        seen = b.get("/v1/contracts").json()["contracts"]
        assert all(c["terms"]["consumer"] == p["bob"].key_id for c in seen)
        assert b.get(f"/v1/contracts/{cid}").status_code == 404


def test_purpose_not_permitted_is_refused_with_reason(deploy):
    p, conn, site = deploy["p"], deploy["conn"], deploy["site"]
    with pytest.raises(ServiceRefusedError, match="purpose") as e:
        request_via_connector(
            conn.url,
            p["bob"].key,
            dataset=dataset_id(site),
            purpose="marketing",
            epsilon=1.0,
            rounds=1,
            until=until(),
            template="mlp",
        )
    assert e.value.status == 403


def test_contract_cli_over_the_connector_and_list_at_the_hub(deploy):
    p, hub, conn, site = deploy["p"], deploy["hub"], deploy["conn"], deploy["site"]
    base = [PYTHON, "-m", "dataspace", "contract"]
    req = [
        "request",
        "--connector",
        conn.url,
        "--dataset",
        dataset_id(site),
        "--key",
        str(p["bob"].key_path),
        "--epsilon",
        "0.5",
        "--rounds",
        "1",
        "--template",
        "mlp",
        "--until",
        until(),
        "--json",
    ]
    out = subprocess.run([*base, *req, "--purpose", "research"], capture_output=True, timeout=180)
    assert out.returncode == 0, out.stderr.decode()
    RESPONSES.append(("contract request cli", out.stdout))
    agreed = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert agreed["state"] == "agreed" and agreed["contract_id"]
    out = subprocess.run([*base, *req, "--purpose", "marketing"], capture_output=True, timeout=180)
    assert out.returncode == 3 and "purpose" in out.stderr.decode()
    assert json.loads(out.stdout.decode().splitlines()[-1])["allowed"] is False
    lst = [*base, "list", "--hub", hub.url, "--key", str(p["bob"].key_path), "--json"]
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(lst, capture_output=True, timeout=180, check=True)
        ids = [c["contract_id"] for c in json.loads(out.stdout)["contracts"]]
        if ids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    RESPONSES.append(("contract list cli", out.stdout))
    assert ids == [agreed["contract_id"]]


def _raw(method: str, url: str, key, body: bytes = b"", headers: dict | None = None):
    h = sign_url_request(key, method, url, body)
    h.update(headers or {})
    if body:
        h["Content-Type"] = "application/json"
    r = httpx.request(method, url, content=body, headers=h)
    _record(r)
    return r, h


def test_replayed_altered_and_forged_requests_are_refused(deploy):
    p, hub, conn = deploy["p"], deploy["hub"], deploy["conn"]
    for base in (hub.url, conn.url):
        url = base + "/v1/contracts"
        r, h = _raw("GET", url, p["alice"].key)
        assert r.status_code == 200
        replay = httpx.get(url, headers=h)
        _record(replay)
        assert replay.status_code == 401 and replay.json()["error"] == "replayed_request"
    # altered body: signed for one offer, sent with another
    url = conn.url + "/v1/offers"
    signed_body = json.dumps(
        {"dataset_id": "x", "purpose": "research", "epsilon": 1, "rounds": 1, "until": until()}
    ).encode()
    h = sign_url_request(p["alice"].key, "POST", url, signed_body)
    r = httpx.post(
        url,
        content=signed_body.replace(b'"epsilon": 1', b'"epsilon": 9'),
        headers=h | {"Content-Type": "application/json"},
    )
    _record(r)
    assert r.status_code == 401 and r.json()["error"] == "digest_mismatch"
    # forged: alice's key id with bob's signature
    h = sign_url_request(p["bob"].key, "GET", hub.url + "/v1/contracts")
    h["Signature-Input"] = h["Signature-Input"].replace(p["bob"].key_id, p["alice"].key_id)
    r = httpx.get(hub.url + "/v1/contracts", headers=h)
    _record(r)
    assert r.status_code == 401 and r.json()["error"] == "bad_signature"
    # unsigned
    r = httpx.get(hub.url + "/v1/catalog")
    assert r.status_code == 401 and r.json()["error"] == "missing_signature"
    refusals = (deploy["tmp"] / "hub" / "refusals.jsonl").read_text()
    assert "replayed_request" in refusals and "bad_signature" in refusals


def test_wrong_role_is_refused(deploy):
    p, hub, conn = deploy["p"], deploy["hub"], deploy["conn"]
    with client(hub.url, p["alice"].key) as a:
        r = a.post("/v1/catalog", json={"dataset_id": "fake", "fingerprint": "ab", "dcat": {}})
        assert r.status_code == 403 and r.json()["error"] == "role_forbidden"
        assert a.get("/v1/participants").status_code == 403
    with client(conn.url, p["alice"].key) as a:
        assert a.get("/v1/admin/budget").status_code == 403
        assert a.post("/v1/admin/publish").status_code == 403
    with client(conn.url, p["auditor"].key) as au:
        assert au.get("/v1/admin/budget").status_code == 200
        assert au.post("/v1/offers", json={}).status_code == 403
    with client(hub.url, p["auditor"].key) as au:
        assert len(au.get("/v1/contracts").json()["contracts"]) >= 1


def test_port_in_use_is_a_clear_error(deploy):
    hub = deploy["hub"]
    out = subprocess.run(
        [
            PYTHON,
            "-m",
            "dataspace",
            "serve",
            "hub",
            "--data",
            str(deploy["tmp"] / "hub2"),
            "--port",
            str(hub.port),
        ],
        capture_output=True,
        timeout=180,
    )
    assert out.returncode != 0
    assert f"{hub.port}" in out.stderr.decode() and "in use" in out.stderr.decode()


def _per_episode_values(site: Site) -> list[bytes]:
    with site.db() as con:
        rows = con.execute("SELECT hash, duration_s FROM episodes").fetchall()
    out = []
    for h, dur in rows:
        out.append(h.encode())
        out.append(repr(dur).encode())
    return out


def _walk(base: str, key, ids: dict[str, str]) -> None:
    schema = httpx.get(base + "/openapi.json").json()
    with client(base, key) as c:
        for path, ops in schema["paths"].items():
            if "get" not in ops:
                continue
            url = path
            for name, value in ids.items():
                url = url.replace("{" + name + "}", value)
            if "{" in url:
                continue
            c.get(url)


def test_no_response_leaks_raw_values(deploy):
    """Last in the module: every body received so far plus every GET route, by every role."""
    p, hub, conn, site = deploy["p"], deploy["hub"], deploy["conn"], deploy["site"]
    with client(hub.url, p["auditor"].key) as au:
        contracts = au.get("/v1/contracts").json()["contracts"]
    ids = {
        "dataset_id": dataset_id(site),
        "contract_id": contracts[0]["contract_id"],
        "run_id": "run-0",
    }
    for key in (p["alice"].key, p["auditor"].key, site.key):
        _walk(hub.url, key, ids)
        _walk(conn.url, key, ids)
    # the hub's page for people, as its operator sees it (with the dashboard token)
    token = (deploy["tmp"] / "hub" / "dashboard.token").read_text().strip()
    for path in ("/dashboard", "/dashboard/api/state"):
        r = httpx.get(hub.url + path, cookies={"dataspace_dashboard": token}, timeout=180)
        assert r.status_code == 200
        _record(r)
    assert len(RESPONSES) > 40
    needles = canary_texts() + _per_episode_values(site)
    for where, body in RESPONSES:
        for n in needles:
            assert n not in body, f"{where} leaked {n!r}"
    # and the needles are real: the raw frames do contain the first canary
    frames = b"".join(f.read_bytes() for f in site.store_dir.rglob("*.parquet"))
    assert canary_texts()[3] in frames or canary_texts()[4] in frames
