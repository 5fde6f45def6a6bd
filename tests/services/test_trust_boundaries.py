"""Issue 20: the hub, the witnesses and every request trust only what they verify.

Each test plays one attack a hostile participant tried against the services (the hub
and connectors in process here; tests/services/test_bounded_connections.py plays the
same against real processes on loopback):

1. a holder forges, rewrites or reassigns contracts in the hub's registry, and a
   consumer posts self-chosen round figures over them;
2. a participant named like the hub (or like another holder) takes over that log's
   state at a connector's witness;
3. a request signed for one service is replayed to another;

and the old behaviour that must hold: unsigned and replayed requests stay refused.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.events import make_event, parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import Verifier
from dataspace.audit.witness import Witness, WitnessError, local_post, witness_log
from dataspace.audit.witnesskey import log_origin
from dataspace.auth.httpsig import HttpSigAuth, sign_url_request
from dataspace.connectors.service import create_app as connector_app
from dataspace.connectors.witnesses import Holder
from dataspace.hub.app import create_app as hub_app
from dataspace.site.identity import Identity
from tests.services.conftest import make_party, signed_contract

FP = "ab" * 32
HUB = "dataspace-hub"


def _entry(dataset_id: str) -> dict:
    return {
        "dataset_id": dataset_id,
        "fingerprint": FP,
        "dcat": {"@context": {"dcat": "http://www.w3.org/ns/dcat#"}, "@type": "dcat:Dataset"},
        "title": dataset_id,
    }


@pytest.fixture
def space(tmp_path):
    """A hub (in process) with two holders that published one dataset each."""
    keys = tmp_path / "keys"
    keys.mkdir()
    p = {
        "site-a": make_party(keys, "site-a", "holder"),
        "site-b": make_party(keys, "site-b", "holder"),
        "alice": make_party(keys, "alice", "consumer"),
        "bob": make_party(keys, "bob", "consumer"),
        "auditor": make_party(keys, "auditor", "auditor"),
    }
    trust = [
        Identity(n, r, base64.b64decode(p[n].key_id))
        for n, r in (("site-a", "holder"), ("site-b", "holder"), ("auditor", "auditor"))
    ]
    with TestClient(hub_app(tmp_path / "hub", trust=trust)) as c:
        auth = {k: HttpSigAuth(v.key) for k, v in p.items()}
        assert c.post("/v1/catalog", json=_entry("so101"), auth=auth["site-a"]).is_success
        assert c.post("/v1/catalog", json=_entry("g1"), auth=auth["site-b"]).is_success
        yield c, auth, p, tmp_path / "hub"


def _events(data_dir, kind: str) -> list:
    with TransparencyLog.open(data_dir / "log") as log:
        events = [parse_event(e) for e in log.entries(0, log.size)]
    return [e for e in events if e.kind == kind]


# --- 1. the contract registry ------------------------------------------------------------


def test_a_holder_cannot_register_unsigned_or_foreign_contracts(space):
    c, auth, p, data = space
    forged = signed_contract(p["site-b"].key, p["bob"].key, "so101", FP)
    forged["agreement"] = {"note": "no signatures at all"}
    # site-b registers a contract on site-a's dataset, for a consumer of its choosing
    r = c.post("/v1/contracts", json=forged, auth=auth["site-b"])
    assert r.status_code == 403, r.text
    # the same with terms site-b did sign (with its accomplice bob): not site-b's dataset
    foreign = signed_contract(p["site-b"].key, p["bob"].key, "so101", FP)
    r = c.post("/v1/contracts", json=foreign, auth=auth["site-b"])
    assert (r.status_code, r.json()["error"]) == (403, "contract"), r.text
    assert "catalog" in r.json()["detail"]
    # on its own dataset, without the consumer's signature, or with a wrong one
    own = signed_contract(p["site-a"].key, p["alice"].key, "so101", FP)
    for sigs in ({"holder": own["agreement"]["signatures"]["holder"], "consumer": None},
                 {"holder": None, "consumer": own["agreement"]["signatures"]["consumer"]},
                 {"holder": own["agreement"]["signatures"]["consumer"],
                  "consumer": own["agreement"]["signatures"]["holder"]}):  # fmt: skip
        bad = own | {"agreement": own["agreement"] | {"signatures": sigs}}
        r = c.post("/v1/contracts", json=bad, auth=auth["site-a"])
        assert (r.status_code, r.json()["error"]) == (403, "contract_signature"), r.text
    # terms signed by another holder, posted by site-a
    theirs = signed_contract(p["site-b"].key, p["alice"].key, "so101", FP)
    r = c.post("/v1/contracts", json=theirs, auth=auth["site-a"])
    assert r.status_code == 403, r.text
    # no agreement at all (old connectors sent it as optional)
    r = c.post("/v1/contracts", json=own | {"agreement": None}, auth=auth["site-a"])
    assert (r.status_code, r.json()["error"]) == (403, "contract_signature"), r.text
    assert _events(data, "contract.registered") == []
    # what both signed is registered
    r = c.post("/v1/contracts", json=own, auth=auth["site-a"])
    assert r.status_code == 200, r.text
    (ev,) = _events(data, "contract.registered")
    assert ev.contract_id == own["contract_id"] and ev.get("consumer") == p["alice"].key_id


def test_registered_terms_never_change_and_states_follow_the_contract(space):
    c, auth, p, data = space
    own = signed_contract(p["site-a"].key, p["alice"].key, "so101", FP)
    assert c.post("/v1/contracts", json=own, auth=auth["site-a"]).status_code == 200
    assert c.post("/v1/contracts", json=own, auth=auth["site-a"]).status_code == 200  # idempotent
    # flat fields that are not the signed terms: refused, whatever the state
    for change in ({"consumer": p["bob"].key_id}, {"epsilon": 999.0}, {"rounds": 1000}):
        r = c.post("/v1/contracts", json=own | change, auth=auth["site-a"])
        assert (r.status_code, r.json()["error"]) == (403, "contract"), (change, r.text)
    # new terms for the same id, signed by the holder and another consumer: a conflict
    moved = signed_contract(
        p["site-a"].key, p["bob"].key, "so101", FP, contract_id=own["contract_id"], epsilon=999.0
    )
    r = c.post("/v1/contracts", json=moved, auth=auth["site-a"])
    assert (r.status_code, r.json()["error"]) == (409, "conflict"), r.text
    # another holder cannot move it
    r = c.post("/v1/contracts", json=own | {"state": "revoked"}, auth=auth["site-b"])
    assert r.status_code == 409, r.text
    # a contract ends before its time only by revocation; expired means past its end
    r = c.post("/v1/contracts", json=own | {"state": "expired"}, auth=auth["site-a"])
    assert (r.status_code, r.json()["error"]) == (403, "contract"), r.text
    r = c.post("/v1/contracts", json=own | {"state": "pending"}, auth=auth["site-a"])
    assert (r.status_code, r.json()["error"]) == (403, "contract"), r.text
    assert c.post("/v1/contracts", json=own | {"state": "revoked"}, auth=auth["site-a"]).is_success
    r = c.post("/v1/contracts", json=own, auth=auth["site-a"])  # revoked -> agreed: never
    assert (r.status_code, r.json()["error"]) == (403, "contract"), r.text
    kept = c.get(f"/v1/contracts/{own['contract_id']}", auth=auth["alice"]).json()
    assert (kept["consumer"], kept["epsilon"], kept["state"]) == (
        p["alice"].key_id,
        own["epsilon"],
        "revoked",
    )
    assert c.get(f"/v1/contracts/{own['contract_id']}", auth=auth["bob"]).status_code == 404
    states = [e.get("state") for e in _events(data, "contract.registered")]
    assert states == ["agreed", "revoked"]
    # a first registration is of an agreed contract only
    late = signed_contract(p["site-a"].key, p["alice"].key, "so101", FP, state="revoked")
    r = c.post("/v1/contracts", json=late, auth=auth["site-a"])
    assert (r.status_code, r.json()["error"]) == (403, "contract"), r.text


def test_round_figures_are_logged_as_the_consumers_claims(space):
    c, auth, p, data = space
    own = signed_contract(p["site-a"].key, p["alice"].key, "so101", FP)
    assert c.post("/v1/contracts", json=own, auth=auth["site-a"]).is_success
    run = {"run_id": "r1", "contract_ids": [own["contract_id"]]}
    assert c.post("/v1/runs", json=run, auth=auth["alice"]).is_success
    rnd = {"round": 1, "loss": 0.1, "epsilon": {"so101": 0.0},
           "contributions": {"site-a": 1e6, "site-b": -1e6}}  # fmt: skip
    assert c.post("/v1/runs/r1/rounds", json=rnd, auth=auth["alice"]).is_success
    (ev,) = _events(data, "round.registered")
    # the log says whose figures these are: the consumer's claim, not the sites' record
    assert ev.get("claimed_by") == p["alice"].key_id
    assert ev.get("epsilon_per_dataset") == {"so101": 0.0}
    assert ev.get("contributions") == {"site-a": 1e6, "site-b": -1e6}
    schema = c.get("/openapi.json").json()["components"]["schemas"]["RoundRequest"]
    for field in ("loss", "epsilon", "contributions"):
        assert "claim" in schema["properties"][field]["description"], field


# --- 2. identity is the key, not the name --------------------------------------------------


def test_participant_names_are_unique_and_never_the_hubs(space, tmp_path):
    c, _, p, data = space
    from dataspace.site.identity import load_private_key

    operator = HttpSigAuth(load_private_key(data / "hub.key"))
    impostor = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    for name in (HUB, "site-a"):
        body = {"name": name, "role": "holder", "public_key": impostor.decode()}
        r = c.post("/v1/participants", json=body, auth=operator)
        assert (r.status_code, r.json()["error"]) == (409, "conflict"), r.text
    # re-registering a key under its own name (or a new free one) still works
    same = {"name": "site-a", "role": "holder", "public_key": p["site-a"].key_id}
    assert c.post("/v1/participants", json=same, auth=operator).is_success
    named = {p2["name"] for p2 in c.get("/v1/participants", auth=operator).json()}
    assert named == {HUB, "site-a", "site-b", "auditor"}
    # nor at start: an identity to trust that takes the hub's name is refused
    from dataspace.errors import DataspaceError

    clash = Identity(HUB, "holder", base64.b64decode(impostor))
    with pytest.raises(DataspaceError, match="name"):
        hub_app(tmp_path / "hub2", trust=[clash])


def _hub_log(tmp_path, key, origin=HUB, n=3) -> TransparencyLog:
    """A log of ``n`` events signed by ``key`` under ``origin``, in a folder of its own."""
    log = TransparencyLog.create(tmp_path / f"log-{uuid.uuid4().hex}", origin, key)
    log.append_many(
        [make_event("catalog.published", key, origin, dataset_id=f"d{i}") for i in range(n)]
    )
    return log


def test_a_holder_named_like_the_hub_cannot_take_over_its_log_at_a_connector(site, tmp_path):
    """A connector's witness trusts the hub's key, pinned when it learned it; a catalog
    holder named like the hub is not the hub, and never becomes it."""
    hub_key, impostor_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    app = connector_app(site, "http://127.0.0.1:9", publish=False)
    conn = app.state.connector
    conn.publisher.hub_key = base64.b64encode(hub_key.public_key().public_bytes_raw()).decode()
    conn.publisher.hub_name = HUB
    conn.holders.holders = [
        Holder(HUB, impostor_key.public_key().public_bytes_raw(), "http://127.0.0.1:9")
    ]
    hub_log = _hub_log(tmp_path, hub_key)
    with TestClient(app) as c:

        def post(body: bytes) -> tuple[int, bytes]:
            r = c.post("/v1/log/add-checkpoint", content=body)
            return r.status_code, r.content

        witness_log(hub_log, post)
        # the impostor: the hub's entries (holders may read them) and garbage after them
        fake = TransparencyLog.create(tmp_path / "fake", HUB, impostor_key)
        fake.append_many(list(hub_log.entries(0, hub_log.size)) + [b"{}"] * 4)
        with pytest.raises(WitnessError) as e:
            witness_log(fake, post, known_size=hub_log.size)
        assert e.value.status == 403
        # the honest hub goes on being cosigned; nothing is kept against it as a fork
        hub_log.append(make_event("catalog.published", hub_key, HUB, dataset_id="d9"))
        witness_log(hub_log, post, known_size=3)
        witness = conn.witness()
        assert witness.refused(HUB) == []
        assert witness.latest(HUB).size == hub_log.size


def test_witness_state_is_kept_per_key_so_a_second_key_cannot_fork_a_log(tmp_path):
    """Two holders sharing a name (or a trusted key changed for a name): each key has its
    own history at the witness; one's checkpoints are never evidence against the other."""
    real, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    name = "site-x"
    log = _hub_log(tmp_path, real, origin=name)
    real_v = Verifier(name, real.public_key().public_bytes_raw())
    other_v = Verifier(name, other.public_key().public_bytes_raw())
    wkey = Ed25519PrivateKey.generate()
    witness_log(log, local_post(Witness(tmp_path / "w", "w", wkey, [real_v])))
    # the other key's log of the same name, with a different history
    fake = _hub_log(tmp_path, other, origin=name, n=5)
    witness_log(fake, local_post(Witness(tmp_path / "w", "w", wkey, [other_v])))
    # back to the real key: its history goes on, nothing refused, no fork kept
    log.append(make_event("catalog.published", real, name, dataset_id="more"))
    w = Witness(tmp_path / "w", "w", wkey, [real_v])
    witness_log(log, local_post(w), known_size=3)
    assert w.refused(name) == [] and w.latest(name).size == 4
    # the first key given for a name is the one trusted (pinned before learned)
    both = Witness(tmp_path / "w", "w", wkey, [real_v, other_v])
    assert both.logs[name] == real_v


def test_a_catalog_name_held_by_two_keys_or_the_hubs_is_not_trusted(site):
    app = connector_app(site, "http://127.0.0.1:9", publish=False)
    conn = app.state.connector
    hub_key = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    conn.publisher.hub_key, conn.publisher.hub_name = base64.b64encode(hub_key).decode(), HUB
    k1, k2, k3, k4, k5 = (
        Ed25519PrivateKey.generate().public_key().public_bytes_raw() for _ in range(5)
    )
    conn.holders.holders = [
        Holder("site-x", k1, "http://x"),
        Holder("site-x", k2, "http://y"),
        Holder(HUB, k3, "http://z"),
        Holder(site.name, k4, "http://w"),
        Holder("site-y", k5, "http://v"),
    ]
    assert [(h.name, h.key) for h in conn.holders.trusted()] == [("site-y", k5)]
    w = conn.witness()
    assert {(v.name, v.public_key) for v in conn.holders.log_verifiers(w)} == {
        ("site-y", k5),
        (log_origin("site", k5), k5),
    }
    # each log under its old origin (its name) and its new one (from its key), until cosigned
    logs = w.logs
    assert (
        logs[HUB].public_key == hub_key and logs[log_origin("hub", hub_key)].public_key == hub_key
    )
    assert set(logs) == {HUB, log_origin("hub", hub_key), "site-y", log_origin("site", k5)}


# --- 3. a request is bound to one service ---------------------------------------------------


def test_a_request_signed_for_one_service_is_refused_by_another(site, tmp_path, parties):
    alice = parties["alice"]
    a = TestClient(connector_app(site, None, publish=False), base_url="http://127.0.0.1:8001")
    hub = TestClient(hub_app(tmp_path / "hub"), base_url="http://127.0.0.1:8000")
    with a, hub:
        # signed for connector A, sent to A: fine
        headers = sign_url_request(alice.key, "GET", "http://127.0.0.1:8001/v1/contracts")
        assert a.get("/v1/contracts", headers=headers).status_code == 200
        # the same request, signed for A, replayed by A to the hub: with A's Host it is
        # not for the hub; with the hub's, the signature (over A's) does not verify
        for host, error in (({"host": "127.0.0.1:8001"}, "misdirected_request"),
                            ({}, "bad_signature")):  # fmt: skip
            h = sign_url_request(alice.key, "GET", "http://127.0.0.1:8001/v1/contracts")
            r = hub.get("/v1/contracts", headers=h | host)
            assert (r.status_code, r.json()["error"]) == (401, error), r.text
        # a request signed with the pre-issue-20 components is refused with its own code
        r = hub.get("/v1/contracts", headers=_unbound(alice.key, "/v1/contracts"))
        assert (r.status_code, r.json()["error"]) == (401, "unbound_signature"), r.text
        assert "@authority" in r.json()["detail"]
        # and the service's own name, as its clients reach it, still works
        assert hub.get("/v1/whoami", auth=HttpSigAuth(alice.key)).status_code == 200


def _unbound(key: Ed25519PrivateKey, path: str) -> dict[str, str]:
    """What clients before issue 20 sent: @method @path @query content-digest only."""
    import time

    from dataspace.auth import httpsig

    digest = httpsig.content_digest(b"")
    kid = httpsig.key_id_of(key)
    params = (
        '("@method" "@path" "@query" "content-digest");'
        f'created={int(time.time())};nonce="{httpsig.new_nonce()}";keyid="{kid}";alg="ed25519"'
    )
    lines = ['"@method": GET', f'"@path": {path}', '"@query": ?']
    lines += [f'"content-digest": {digest}', f'"@signature-params": {params}']
    base = "\n".join(lines).encode()
    sig = base64.b64encode(key.sign(base)).decode()
    return {
        "Content-Digest": digest,
        "Signature-Input": f"sig1={params}",
        "Signature": f"sig1=:{sig}:",
    }


def test_unsigned_and_replayed_requests_stay_refused(space):
    c, _, p, _ = space
    assert c.get("/v1/contracts").json()["error"] == "missing_signature"
    h = sign_url_request(p["alice"].key, "GET", "http://testserver/v1/contracts")
    assert c.get("/v1/contracts", headers=h).status_code == 200
    assert c.get("/v1/contracts", headers=h).json()["error"] == "replayed_request"
    assert json.loads(c.get("/healthz").content)["status"] == "ok"
    # a new hub log: a URL-style origin (dataspace.audit.witnesskey.log_origin)
    origin = checkpoint_of_note(c.get("/v1/log/checkpoint").content).origin
    assert origin.startswith("dataspace.invalid/hub/")


def test_a_witness_state_kept_by_name_only_is_kept_for_the_key_that_signed_it(tmp_path):
    """Upgrading: a state file from before states were per key carries on for its own
    key, and is nothing to a key that did not sign it."""
    import hashlib

    real, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    name = "site-x"
    log = _hub_log(tmp_path, real, origin=name)
    legacy = tmp_path / "w" / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".checkpoint")
    legacy.parent.mkdir()
    legacy.write_bytes(log.checkpoint())
    wkey = Ed25519PrivateKey.generate()
    real_v = Verifier(name, real.public_key().public_bytes_raw())
    other_v = Verifier(name, other.public_key().public_bytes_raw())
    assert Witness(tmp_path / "w", "w", wkey, [other_v]).latest(name) is None
    w = Witness(tmp_path / "w", "w", wkey, [real_v])
    assert w.latest(name).size == 3
    log.append(make_event("catalog.published", real, name, dataset_id="more"))
    witness_log(log, local_post(w), known_size=3)
    assert w.latest(name).size == 4 and w.state_path(name) != legacy
