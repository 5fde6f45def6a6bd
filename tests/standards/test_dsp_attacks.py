"""A hostile party on the other side of every DSP message (the real connector app in process).

Each attack must be refused with the DSP error shape (``CatalogError`` under /catalog,
``ContractNegotiationError`` under /negotiations, validated against DSP's schemas), and
leave nothing stored, charged or logged that should not be: no negotiation, no contract,
no ledger reservation, and the site log grows only where today's ``/v1`` flow logs the
same refusal (a policy refusal: ``access.refused``).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient

from dataspace import policy
from dataspace.auth.httpsig import HttpSigAuth, sign_request
from dataspace.connectors.dsp import client as dsp
from dataspace.connectors.dsp import messages as msgs
from dataspace.connectors.dsp import store
from dataspace.policy import contracts as pc
from tests.services.conftest import dataset_id, set_policy
from tests.standards.conftest import check_dsp
from tests.standards.test_dsp import (
    CAT_ERROR,
    NEG_ERROR,
    _catalog,
    _client,
    _get,
    _log_kinds,
    _request,
    _terms,
)


def _negotiations(site) -> list[Any]:
    with site.db() as con:
        store.ensure_table(con)
        return con.execute("SELECT provider_pid, state FROM dsp_negotiations").fetchall()


def _reserved(site) -> float:
    rows = policy.budget_report(site, dataset_id(site))
    return sum(r.reserved for r in rows)


@pytest.fixture
def alice_site(site, parties):
    set_policy(site, consumers=[parties["alice"].key_id, parties["bob"].key_id])
    return site


def _nothing_happened(site, log_before: list[str], allowed: tuple[str, ...] = ()) -> None:
    assert _negotiations(site) == []
    assert pc.list_contracts(site) == []
    assert _reserved(site) == 0
    grown = _log_kinds(site)[len(log_before) :]
    assert _log_kinds(site)[: len(log_before)] == log_before
    assert all(k in allowed for k in grown), grown


# --- catalog -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"@context": [msgs.DSP_CONTEXT], "@type": "CatalogRequestMessage",
          "filter": [{"leftOperand": "robot", "operator": "eq", "rightOperand": "so101"}]}, 400),
        ({"@context": [msgs.DSP_CONTEXT], "@type": "CatalogRequestMessage",
          "filter": "SELECT * FROM datasets"}, 400),
        ({"@type": "CatalogRequestMessage"}, 400),
        ({"@context": [msgs.DSP_CONTEXT], "@type": "DatasetRequestMessage"}, 400),
    ],
)  # fmt: skip
def test_catalog_request_refused_with_catalog_error(alice_site, parties, body, status):
    with _client(alice_site) as c:
        r = c.post("/catalog/request", json=body, auth=HttpSigAuth(parties["alice"].key))
    assert r.status_code == status, r.text
    check_dsp(CAT_ERROR, r.json())


@pytest.mark.parametrize(
    "path",
    [
        "/catalog/datasets/urn:dataspace:dataset:" + "0" * 32,  # not ours
        "/catalog/datasets/..%2F..%2F..%2Fetc%2Fpasswd",  # traversal, encoded
        "/catalog/datasets/%2e%2e",
        "/catalog/datasets/so101",  # a dataset's name is not its @id
        "/catalog/datasets/site.duckdb",
    ],
)
def test_dataset_not_ours_or_traversal_is_404_catalog_error(alice_site, parties, path):
    with _client(alice_site) as c:
        r = c.get(path, auth=HttpSigAuth(parties["alice"].key))
    assert r.status_code == 404, r.text
    check_dsp(CAT_ERROR, r.json())
    assert "root:" not in r.text and str(alice_site.root) not in r.text


def test_catalog_without_signature_is_401_catalog_error(alice_site):
    with _client(alice_site) as c:
        r = c.post("/catalog/request", json={"@context": [msgs.DSP_CONTEXT],
                                             "@type": "CatalogRequestMessage"})  # fmt: skip
    assert r.status_code == 401
    check_dsp(CAT_ERROR, r.json())


# --- negotiation requests -----------------------------------------------------------------


def _raw_request(c: TestClient, party, body: Any) -> Any:
    return c.post("/negotiations/request", json=body, auth=HttpSigAuth(party.key))


def _valid_offer(c: TestClient, party) -> tuple[dict[str, Any], str]:
    ds = _catalog(c, party)["dataset"][0]
    return dsp.ask(ds["hasPolicy"][0], ds["@id"], _terms()), ds["@id"]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.pop("consumerPid"),
        lambda m: m.update({"@type": "ContractOfferMessage"}),
        lambda m: m.update({"@context": ["https://example.org/evil.jsonld"]}),
        lambda m: m.update({"callbackAddress": "file:///etc/passwd"}),
        lambda m: m.update({"providerPid": "urn:uuid:x"}),  # both: the schema's oneOf
        lambda m: m.update({"offer": "use"}),
        lambda m: m["offer"].pop("@id"),
        lambda m: m["offer"].pop("permission"),
        lambda m: m.update({"consumerPid": "x" * 5000}),
    ],
)
def test_malformed_contract_request_is_400_negotiation_error(alice_site, parties, mutate):
    alice = parties["alice"]
    before = _log_kinds(alice_site)
    with _client(alice_site) as c:
        offer, _ = _valid_offer(c, alice)
        body = dsp.request_message("urn:uuid:" + str(uuid.uuid4()), offer)
        mutate(body)
        r = _raw_request(c, alice, body)
    assert r.status_code == 400, r.text
    check_dsp(NEG_ERROR, r.json())
    assert r.json()["code"] == "malformed_message"
    _nothing_happened(alice_site, before)


def test_not_json_and_too_deep_are_negotiation_errors(alice_site, parties):
    alice = parties["alice"]
    with _client(alice_site) as c:
        r = c.post("/negotiations/request", content=b"{not json",
                   auth=HttpSigAuth(alice.key))  # fmt: skip
        assert r.status_code == 400
        check_dsp(NEG_ERROR, r.json())
        deep = b"[" * 100 + b"]" * 100
        r = c.post("/negotiations/request", content=deep, auth=HttpSigAuth(alice.key))
        assert r.status_code == 400 and r.json()["code"] == "malformed_json"
        check_dsp(NEG_ERROR, r.json())


def test_huge_body_is_413_negotiation_error(alice_site, parties):
    alice = parties["alice"]
    before = _log_kinds(alice_site)
    with _client(alice_site) as c:
        offer, _ = _valid_offer(c, alice)
        body = dsp.request_message("urn:uuid:" + str(uuid.uuid4()), offer)
        body["padding"] = "x" * (300 * 1024)
        r = _raw_request(c, alice, body)
    assert r.status_code == 413
    check_dsp(NEG_ERROR, r.json())
    _nothing_happened(alice_site, before)


@pytest.mark.parametrize(
    ("change", "status", "code", "logged"),
    [
        # a dataset that does not exist here: unknown offer, nothing logged
        ({"target": "urn:dataspace:dataset:" + "f" * 32}, 400, "unknown_offer", ()),
        # an offer id that is not the published one
        ({"@id": "urn:dataspace:policy:forged"}, 400, "unknown_offer", ()),
    ],
)
def test_offer_not_published_is_refused(alice_site, parties, change, status, code, logged):
    alice = parties["alice"]
    before = _log_kinds(alice_site)
    with _client(alice_site) as c:
        offer, _ = _valid_offer(c, alice)
        r = _raw_request(c, alice, dsp.request_message("urn:uuid:1", offer | change))
    assert r.status_code == status, r.text
    check_dsp(NEG_ERROR, r.json())
    assert r.json()["code"] == code
    _nothing_happened(alice_site, before, logged)


@pytest.mark.parametrize(
    "terms",
    [
        dict(epsilon=50.0),  # more than the published epsilon lteq 8
        dict(purpose="marketing"),  # a purpose the policy does not list
        dict(template="transformer"),
        dict(rounds=1000),
    ],
)
def test_offer_asking_more_than_published_is_refused_like_v1(alice_site, parties, terms):
    alice = parties["alice"]
    before = _log_kinds(alice_site)
    with _client(alice_site) as c:
        ds = _catalog(c, alice)["dataset"][0]
        offer = dsp.ask(ds["hasPolicy"][0], ds["@id"], _terms(**terms))
        r = _raw_request(c, alice, dsp.request_message("urn:uuid:2", offer))
    assert r.status_code == 403, r.text
    check_dsp(NEG_ERROR, r.json())
    # logged exactly as POST /v1/offers logs a refusal
    _nothing_happened(alice_site, before, ("access.refused",))
    assert _log_kinds(alice_site)[len(before) :] == ["access.refused"]


def test_tampered_constraint_kinds_are_refused(alice_site, parties):
    alice = parties["alice"]
    before = _log_kinds(alice_site)
    with _client(alice_site) as c:
        offer, _ = _valid_offer(c, alice)
        cs = offer["permission"][0]["constraint"]
        # a constraint the profile does not negotiate, a logical constraint, no epsilon
        for bad in (
            [*cs, {"leftOperand": "spatial", "operator": "eq", "rightOperand": "EU"}],
            [*cs, {"or": cs}],
            [c0 for c0 in cs if c0["leftOperand"] != "epsilon"],
            [c0 | {"operator": "gteq"} if c0["leftOperand"] == "epsilon" else c0 for c0 in cs],
        ):
            o = offer | {"permission": [{"action": "train", "constraint": bad}]}
            r = _raw_request(c, alice, dsp.request_message("urn:uuid:3", o))
            assert r.status_code == 400, r.text
            check_dsp(NEG_ERROR, r.json())
    _nothing_happened(alice_site, before)


def test_request_naming_another_consumer_than_the_signer_is_refused(alice_site, parties):
    alice, bob = parties["alice"], parties["bob"]
    with _client(alice_site) as c:
        offer, _ = _valid_offer(c, alice)
        offer["assignee"] = "urn:dataspace:key:" + alice.key_id
        r = _raw_request(c, bob, dsp.request_message("urn:uuid:4", offer))  # signed by bob
    assert r.status_code == 403, r.text
    check_dsp(NEG_ERROR, r.json())
    assert _negotiations(alice_site) == [] and pc.list_contracts(alice_site) == []


def test_unsigned_request_is_401_negotiation_error(alice_site, parties):
    before = _log_kinds(alice_site)
    with _client(alice_site) as c:
        offer, _ = _valid_offer(c, parties["alice"])
        body = dsp.request_message("urn:uuid:5", offer)
        r = c.post("/negotiations/request", json=body)
    assert r.status_code == 401
    check_dsp(NEG_ERROR, r.json())
    assert r.json()["consumerPid"] == "urn:uuid:5"
    _nothing_happened(alice_site, before)


def test_replayed_request_is_refused_and_creates_nothing(alice_site, parties):
    alice = parties["alice"]
    with _client(alice_site) as c:
        offer, _ = _valid_offer(c, alice)
        raw = json.dumps(dsp.request_message("urn:uuid:6", offer)).encode()
        headers = sign_request(alice.key, "POST", "/negotiations/request", "", raw,
                               authority="testserver")  # fmt: skip
        headers["content-type"] = "application/json"
        first = c.post("/negotiations/request", content=raw, headers=headers)
        assert first.status_code == 201, first.text
        again = c.post("/negotiations/request", content=raw, headers=headers)
        assert again.status_code == 401 and again.json()["code"] == "replayed_request"
        check_dsp(NEG_ERROR, again.json())
        # the same consumerPid freshly signed: a duplicate, not a second negotiation
        dup = c.post("/negotiations/request", content=raw, auth=HttpSigAuth(alice.key),
                     headers={"content-type": "application/json"})  # fmt: skip
        assert dup.status_code == 409
        check_dsp(NEG_ERROR, dup.json())
    assert len(_negotiations(alice_site)) == 1


# --- messages on an existing negotiation -------------------------------------------------


@pytest.fixture
def agreed(alice_site, parties):
    """(client, providerPid, the agreement message) of alice's AGREED negotiation."""
    alice = parties["alice"]
    with _client(alice_site) as c:
        r, _ = _request(c, alice_site, alice)
        pid = r.json()["providerPid"]
        yield c, pid, _get(c, pid, alice)[msgs.PROVIDER_MESSAGE]


def test_another_consumer_cannot_see_or_move_a_negotiation(agreed, alice_site, parties):
    c, pid, agreement = agreed
    alice, bob = parties["alice"], parties["bob"]
    before = _log_kinds(alice_site)
    bob_auth = HttpSigAuth(bob.key)
    r = c.get(f"/negotiations/{pid}", auth=bob_auth)
    assert r.status_code == 404
    check_dsp(NEG_ERROR, r.json())
    verification = dsp.verification_message(agreement, alice.key)  # alice's own signature
    term = msgs.termination_message(pid, agreement["consumerPid"], "x", ["third party"])
    for path, body in (
        (f"/negotiations/{pid}/agreement/verification", verification),
        (f"/negotiations/{pid}/termination", term),
        (f"/negotiations/{pid}/events",
         msgs.event_message(pid, agreement["consumerPid"], "ACCEPTED")),
    ):  # fmt: skip
        r = c.post(path, json=body, auth=bob_auth)
        assert r.status_code == 404, (path, r.text)
        check_dsp(NEG_ERROR, r.json())
    assert _get(c, pid, alice)["state"] == "AGREED"
    assert pc.list_contracts(alice_site) == [] and _log_kinds(alice_site) == before


def test_out_of_order_messages_are_400(agreed, alice_site, parties):
    c, pid, agreement = agreed
    alice = parties["alice"]
    auth = HttpSigAuth(alice.key)
    cp = agreement["consumerPid"]
    # ACCEPTED answers an OFFERED negotiation only; FINALIZED is the provider's
    for event in ("ACCEPTED", "FINALIZED"):
        r = c.post(f"/negotiations/{pid}/events", json=msgs.event_message(pid, cp, event)
                   | {msgs.CONSUMER_SIGNATURE: "AAAA"}, auth=auth)  # fmt: skip
        assert r.status_code == 400, r.text
        check_dsp(NEG_ERROR, r.json())
    # a counter-offer is not accepted
    ask = dsp.request_message(cp, agreement["agreement"] | {"@type": "Offer"})
    ask.pop("callbackAddress")
    ask["providerPid"] = pid
    r = c.post(f"/negotiations/{pid}/request", json=ask, auth=auth)
    assert r.status_code == 400 and r.json()["code"] == "counter_offer_not_accepted"
    check_dsp(NEG_ERROR, r.json())
    # a verification whose pids are not this negotiation's
    v = dsp.verification_message(agreement, alice.key) | {"consumerPid": "urn:uuid:other"}
    r = c.post(f"/negotiations/{pid}/agreement/verification", json=v, auth=auth)
    assert r.status_code == 400
    # verification without the consumer's signature, then with a forged one
    v = dsp.verification_message(agreement, alice.key)
    unsigned = {k: x for k, x in v.items() if k != msgs.CONSUMER_SIGNATURE}
    r = c.post(f"/negotiations/{pid}/agreement/verification", json=unsigned, auth=auth)
    assert r.status_code == 400
    bad = v | {msgs.CONSUMER_SIGNATURE: pc.sign_terms(
        pc.Terms.from_json(agreement[msgs.TERMS]), parties["bob"].key)}  # fmt: skip
    r = c.post(f"/negotiations/{pid}/agreement/verification", json=bad, auth=auth)
    assert r.status_code == 403, r.text
    check_dsp(NEG_ERROR, r.json())
    assert pc.list_contracts(alice_site) == [] and _reserved(alice_site) == 0
    assert _get(c, pid, alice)["state"] == "AGREED"  # no transition on an error
    # the good one: finalized; then a second verification is out of order
    r = c.post(f"/negotiations/{pid}/agreement/verification", json=v, auth=auth)
    assert r.status_code == 200, r.text
    r = c.post(f"/negotiations/{pid}/agreement/verification", json=v, auth=auth)
    assert r.status_code == 400
    check_dsp(NEG_ERROR, r.json())
    assert len(pc.list_contracts(alice_site)) == 1
    assert _log_kinds(alice_site).count("contract.agreed") == 1


def test_holder_key_cannot_negotiate(alice_site, parties):
    with _client(alice_site) as c:
        offer, _ = _valid_offer(c, parties["alice"])
        r = c.post("/negotiations/request", json=dsp.request_message("urn:uuid:7", offer),
                   auth=HttpSigAuth(alice_site.key))  # fmt: skip
    assert r.status_code == 403 and r.json()["code"] == "role_forbidden"
    check_dsp(NEG_ERROR, r.json())
