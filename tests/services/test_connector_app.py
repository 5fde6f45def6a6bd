"""The connector service in process (ASGI): offers, contracts, admin API, refusals."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from dataspace.auth.httpsig import HttpSigAuth
from dataspace.connectors.service import create_app
from dataspace.policy import contracts as pc
from dataspace.site.folder import Site
from dataspace.site.log import open_site_log
from tests.services.conftest import dataset_id, set_policy, until


def _client(site) -> TestClient:
    return TestClient(create_app(site, None, publish=False))


def _offer_body(site, **kw):
    body = {
        "dataset_id": dataset_id(site),
        "purpose": "research",
        "epsilon": 1.0,
        "rounds": 3,
        "until": until(),
        "template": "mlp",
    }
    return body | kw


def _log_kinds(site) -> list[str]:
    with open_site_log(site, writable=False) as log:
        return [json.loads(e)["kind"] for e in log.entries(0, log.size)]


def _agree(c: TestClient, site, party) -> dict:
    r = c.post("/v1/offers", json=_offer_body(site), auth=HttpSigAuth(party.key))
    assert r.status_code == 200, r.text
    offer = pc.Agreement.from_json(r.json())
    assert offer.state == "offered" and offer.holder_signature
    signed = pc.countersign(offer, party.key).to_json()
    r = c.post(
        f"/v1/contracts/{offer.contract_id}/countersign", json=signed, auth=HttpSigAuth(party.key)
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_offer_countersign_agrees_and_logs(site, parties):
    alice = parties["alice"]
    set_policy(site, consumers=[alice.key_id])
    with _client(site) as c:
        agreed = _agree(c, site, alice)
    assert agreed["state"] == "agreed"
    assert agreed["signatures"]["holder"] and agreed["signatures"]["consumer"]
    assert "contract.agreed" in _log_kinds(site)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"purpose": "marketing"}, "purpose"),
        ({"template": "transformer"}, "template"),
        ({"epsilon": 50.0}, "epsilon"),
        ({"until": "2020-01-01T00:00:00Z"}, ""),
    ],
)
def test_refused_offer_is_403_with_reason_nothing_stored_and_logged(site, parties, change, needle):
    alice = parties["alice"]
    set_policy(site, consumers=[alice.key_id])
    before = _log_kinds(site)
    with _client(site) as c:
        r = c.post("/v1/offers", json=_offer_body(site, **change), auth=HttpSigAuth(alice.key))
    assert r.status_code == 403, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and needle in body["detail"]
    assert pc.list_contracts(site) == []
    assert _log_kinds(site) == [*before, "access.refused"]


def test_consumer_not_assigned_is_refused(site, parties):
    set_policy(site, consumers=[parties["alice"].key_id])
    with _client(site) as c:
        r = c.post("/v1/offers", json=_offer_body(site), auth=HttpSigAuth(parties["bob"].key))
    assert r.status_code == 403
    assert parties["bob"].key_id in r.json()["detail"] or "assignee" in r.json()["detail"]


def test_consumers_see_only_their_own_contracts(site, parties):
    alice, bob = parties["alice"], parties["bob"]
    set_policy(site, consumers=[alice.key_id, bob.key_id])
    with _client(site) as c:
        a = _agree(c, site, alice)
        b = _agree(c, site, bob)
        seen_a = c.get("/v1/contracts", auth=HttpSigAuth(alice.key)).json()["contracts"]
        assert [x["contract_id"] for x in seen_a] == [a["contract_id"]]
        r = c.get(f"/v1/contracts/{b['contract_id']}", auth=HttpSigAuth(alice.key))
        assert r.status_code == 404
        # bob cannot countersign alice's offer as his own
        r = c.post("/v1/offers", json=_offer_body(site), auth=HttpSigAuth(alice.key))
        signed = pc.countersign(pc.Agreement.from_json(r.json()), alice.key).to_json()
        r = c.post(
            f"/v1/contracts/{signed['contract_id']}/countersign",
            json=signed,
            auth=HttpSigAuth(bob.key),
        )
        assert r.status_code == 403 and r.json()["error"] == "role_forbidden"


def test_consumer_cannot_use_admin_api_holder_can(site, parties):
    alice = parties["alice"]
    set_policy(site, consumers=[alice.key_id], manual=True)
    with _client(site) as c:
        r = c.get("/v1/admin/contracts", auth=HttpSigAuth(alice.key))
        assert r.status_code == 403 and r.json()["error"] == "role_forbidden"
        r = c.post("/v1/offers", json=_offer_body(site), auth=HttpSigAuth(alice.key))
        assert r.json()["state"] == "pending"
        pending = pc.Agreement.from_json(r.json())
        signed = pc.countersign(pending, alice.key).to_json()
        r = c.post(
            f"/v1/contracts/{pending.contract_id}/countersign",
            json=signed,
            auth=HttpSigAuth(alice.key),
        )
        assert r.json()["state"] == "pending"
        holder = HttpSigAuth(site.key)
        listed = c.get("/v1/admin/contracts?state=pending", auth=holder).json()["contracts"]
        assert [x["contract_id"] for x in listed] == [pending.contract_id]
        r = c.post(f"/v1/admin/contracts/{pending.contract_id}/approve", auth=holder)
        assert r.status_code == 200 and r.json()["state"] == "agreed"
        budget = c.get("/v1/admin/budget", auth=holder).json()["datasets"]
        assert budget[0]["dataset_id"] == dataset_id(site)


def test_malformed_jsonld_policy_and_unknown_constraint_are_400(site, parties):
    set_policy(site, consumers=[parties["alice"].key_id])
    did = dataset_id(site)
    with _client(site) as c:
        holder = HttpSigAuth(site.key)
        good = c.get(f"/v1/admin/datasets/{did}/policy", auth=holder).json()
        before = _log_kinds(site)
        r = c.put(f"/v1/admin/datasets/{did}/policy", json={"not": "odrl"}, auth=holder)
        assert r.status_code == 400, r.text
        bad = json.loads(json.dumps(good))
        bad["permission"][0]["constraint"].append(
            {"leftOperand": "spatial", "operator": "eq", "rightOperand": "EU"}
        )
        r = c.put(f"/v1/admin/datasets/{did}/policy", json=bad, auth=holder)
        assert r.status_code == 400 and "spatial" in r.json()["detail"], r.text
        assert _log_kinds(site) == before


def test_datasets_show_metadata_only(site, parties):
    with _client(site) as c:
        r = c.get("/v1/datasets", auth=HttpSigAuth(parties["alice"].key))
    (d,) = r.json()
    assert d["episodes"] == 4 and d["frames"] == 1492 and d["dcat"]["@type"] == "dcat:Dataset"
    assert d["privacy_unit"] == "frame"  # the default; what a contract's epsilon protects


def test_catalog_states_the_sites_privacy_unit(site, parties):
    cfg = site.root / "site.toml"
    cfg.write_text(cfg.read_text() + '\n[training]\nprivacy_unit = "episode"\n')
    with _client(Site.open(site.root)) as c:
        r = c.get("/v1/datasets", auth=HttpSigAuth(parties["alice"].key))
    assert [d["privacy_unit"] for d in r.json()] == ["episode"]
