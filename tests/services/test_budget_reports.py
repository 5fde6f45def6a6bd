"""The hub's budget view tells the sites' truth: signed reports, and the attacks on them.

Each holder's site signs a ``budget.reported`` statement of its ledger
(dataspace.policy.budget_statement); the hub keeps the latest per dataset
(``POST /v1/budget``, dataspace.hub.budgets) and its dashboard shows nothing else.
Here the hub runs in process and the statements are made by hand, so that each
attack can sign exactly what it wants: another holder's dataset, a forged or
unsigned statement, a replayed older one, absurd numbers, the wrong role.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient

from dataspace.audit.events import make_event
from dataspace.auth.httpsig import HttpSigAuth, sign_url_request
from dataspace.hub.app import create_app
from dataspace.hub.dashboard import COOKIE, dashboard_token
from dataspace.policy.budget_statement import read_budget_statement
from dataspace.site.identity import load_private_key
from tests.services.conftest import hub_parties
from tests.services.test_hub_app import FP, _kinds, entry

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = "cd" * 32


def figures(**over: Any) -> dict[str, Any]:
    """An honest ledger's figures: 80 lifetime, 8 spent, 4 reserved, 68 left."""
    f = {
        "budget": 80.0,
        "reserved": 4.0,
        "spent": 8.0,
        "remaining": 68.0,
        "delta_budget": 1e-4,
        "delta_reserved": 1e-5,
        "delta_spent": 2e-5,
        "delta_remaining": 7e-5,
        "live_contracts": 1,
        "rounds": 4,
        "policy_sha256": POLICY,
        "site_log_size": 10,
    }
    return f | over


def statement(
    key: Ed25519PrivateKey,
    name: str = "site-a",
    dataset_id: str = "so101",
    fingerprint: str = FP,
    time: datetime | None = None,
    **over: Any,
) -> str:
    """A budget.reported statement signed by ``key`` (any figures: attacks sign what they want)."""
    return make_event(
        "budget.reported",
        key,
        name,
        dataset_id=dataset_id,
        fingerprint=fingerprint,
        time=time or datetime.now(UTC),
        **figures(**over),
    ).decode()


@pytest.fixture
def hub(tmp_path):
    parties, trust = hub_parties(tmp_path / "keys")
    data = tmp_path / "hub"
    app = create_app(data, trust=trust)
    with TestClient(app) as c:
        auth = {k: HttpSigAuth(v.key) for k, v in parties.items()}
        auth["operator"] = HttpSigAuth(load_private_key(data / "hub.key"))
        assert c.post("/v1/catalog", json=entry(), auth=auth["holder"]).status_code == 200
        assert c.post("/v1/catalog", json=entry("b-set"), auth=auth["holder2"]).status_code == 200
        yield c, auth, parties, data


def post(c: TestClient, auth: HttpSigAuth, text: str) -> Any:
    return c.post("/v1/budget", json={"statement": text}, auth=auth)


def kept(c: TestClient, auth: HttpSigAuth) -> list[dict[str, Any]]:
    r = c.get("/v1/budget", auth=auth)
    assert r.status_code == 200, r.text
    return r.json()["reports"]


def dashboard_budgets(c: TestClient, data) -> dict[str, dict[str, Any]]:
    c.cookies.set(COOKIE, dashboard_token(data), path="/dashboard")
    r = c.get("/dashboard/api/state")
    assert r.status_code == 200, r.text
    return {b["dataset_id"]: b for b in r.json()["budgets"]}


def test_the_dashboard_shows_what_the_site_signed(hub) -> None:
    c, auth, parties, data = hub
    # before any report: the dashboard says so, and shows no contract grant as budget
    before = dashboard_budgets(c, data)
    assert before["so101"] == {"dataset_id": "so101", "holder": "site-a", "reported": False}
    page = c.get("/dashboard").text
    assert "no budget report from the holder" in page and "granted" not in page

    text = statement(parties["holder"].key)
    r = post(c, auth["holder"], text)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "stored" and r.json()["site_log_size"] == 10

    (rep,) = kept(c, auth["holder"])  # a holder sees its own
    assert rep["statement"] == text and rep["holder"] == parties["holder"].key_id
    assert (rep["budget"], rep["spent"], rep["reserved"], rep["remaining"]) == (80, 8, 4, 68)
    # anyone given the report checks it against the holder's key, without trusting the hub
    assert read_budget_statement(rep["statement"], parties["holder"].key_id).figures["spent"] == 8
    assert kept(c, auth["holder2"]) == []  # not another holder's
    assert [r["dataset_id"] for r in kept(c, auth["auditor"])] == ["so101"]
    assert len(kept(c, auth["operator"])) == 1
    assert c.get("/v1/budget", auth=auth["alice"]).status_code == 403  # consumers: no

    b = dashboard_budgets(c, data)["so101"]
    assert b["reported"] and (b["budget"], b["spent"], b["reserved"], b["left"]) == (80, 8, 4, 68)
    assert not dashboard_budgets(c, data)["b-set"]["reported"]
    page = c.get("/dashboard").text
    assert "8.00" in page and "68.00" in page and "site log size 10 " in page
    assert 'class="reserved"' in page


def test_reports_survive_a_hub_restart(hub, tmp_path) -> None:
    c, auth, parties, data = hub
    assert post(c, auth["holder"], statement(parties["holder"].key)).status_code == 200
    app = create_app(data)
    with TestClient(app) as again:
        (rep,) = kept(again, auth["auditor"])
    assert rep["spent"] == 8.0


# --- attacks ---------------------------------------------------------------------------


def test_a_holder_cannot_report_another_holders_dataset(hub) -> None:
    c, auth, parties, data = hub
    assert post(c, auth["holder"], statement(parties["holder"].key)).status_code == 200
    # site-b signs, with its own key, a report on site-a's dataset
    forged = statement(parties["holder2"].key, "site-b", spent=80.0, reserved=0.0, remaining=0.0)
    r = post(c, auth["holder2"], forged)
    assert r.status_code == 403 and r.json()["error"] == "not_your_dataset", r.text
    # site-b relays a statement site-a signed (e.g. an older one it saw): not its signature
    relayed = statement(parties["holder"].key, site_log_size=99, spent=0.0, remaining=76.0)
    r = post(c, auth["holder2"], relayed)
    assert r.status_code == 403 and r.json()["error"] == "bad_report_signature", r.text
    # site-b publishes an entry of the same id under its own key: its report is its own
    assert c.post("/v1/catalog", json=entry(), auth=auth["holder2"]).status_code == 200
    mine = statement(parties["holder2"].key, "site-b", spent=1.0, remaining=75.0)
    assert post(c, auth["holder2"], mine).status_code == 200
    reports = {r["holder"]: r for r in kept(c, auth["auditor"])}
    assert reports[parties["holder"].key_id]["spent"] == 8.0  # site-a's unchanged
    assert reports[parties["holder2"].key_id]["spent"] == 1.0
    # the dashboard shows each holder's own report on its own row
    c.cookies.set(COOKIE, dashboard_token(data), path="/dashboard")
    rows = c.get("/dashboard/api/state").json()["budgets"]
    spent = {(b["holder"], b["dataset_id"]): b.get("spent") for b in rows}
    assert spent[("site-a", "so101")] == 8.0 and spent[("site-b", "so101")] == 1.0
    kinds = _kinds(data)
    assert kinds.count("access.refused") == 2  # both refusals are in the hub's log


def test_forged_and_unsigned_reports_are_refused(hub) -> None:
    c, auth, parties, _ = hub
    key = parties["holder"].key
    honest = statement(key)
    tampered = honest.replace('"spent":8', '"spent":0').replace('"remaining":68', '"remaining":76')
    assert tampered != honest
    obj = json.loads(honest)
    del obj["sig"]
    unsigned = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    other_sig = json.loads(statement(Ed25519PrivateKey.generate()))["sig"]
    wrong_sig = honest.replace(json.loads(honest)["sig"], other_sig)
    wrong_kind = make_event(
        "round.finished", key, "site-a", dataset_id="so101", fingerprint=FP, **figures()
    ).decode()
    cases = [
        (tampered, 403, "bad_report_signature"),
        (wrong_sig, 403, "bad_report_signature"),
        (statement(Ed25519PrivateKey.generate()), 403, "bad_report_signature"),
        (unsigned, 422, "invalid_request"),
        ("not json at all", 422, "invalid_request"),
        ('{"kind":"budget.reported"}', 422, "invalid_request"),
        (wrong_kind, 422, "invalid_request"),
        (" " + honest, 422, "invalid_request"),  # not canonical
    ]
    for text, status, code in cases:
        r = post(c, auth["holder"], text)
        assert (r.status_code, r.json()["error"]) == (status, code), (text[:80], r.text)
    assert kept(c, auth["auditor"]) == []  # nothing was kept
    r = c.post("/v1/budget", json={"statement": honest, "extra": 1}, auth=auth["holder"])
    assert r.status_code == 422
    r = c.post("/v1/budget", json={"statement": "x" * 9000}, auth=auth["holder"])
    assert r.status_code == 422
    # an unsigned request is refused before anything is read
    r = c.post("/v1/budget", json={"statement": honest})
    assert r.status_code == 401


def test_an_older_report_never_replaces_a_newer_one(hub) -> None:
    c, auth, parties, _ = hub
    key = parties["holder"].key
    old = statement(key, time=T0, site_log_size=10, spent=2.0, remaining=74.0)
    new = statement(key, time=T0 + timedelta(minutes=1), site_log_size=12)
    assert post(c, auth["holder"], old).json()["status"] == "stored"
    assert post(c, auth["holder"], new).json()["status"] == "stored"
    # replayed later (a new request carrying the old statement): ignored, not an error
    r = post(c, auth["holder"], old)
    assert r.status_code == 200 and r.json()["status"] == "stale"
    assert r.json()["site_log_size"] == 12
    # a later clock at a smaller log size is older too (the log only grows)
    later_smaller = statement(key, time=T0 + timedelta(hours=1), site_log_size=11, spent=0.0,
                              remaining=76.0)  # fmt: skip
    assert post(c, auth["holder"], later_smaller).json()["status"] == "stale"
    # the same size and time, other figures: not newer either
    same_order = statement(key, time=T0 + timedelta(minutes=1), site_log_size=12, spent=1.0,
                           remaining=75.0)  # fmt: skip
    assert post(c, auth["holder"], same_order).json()["status"] == "stale"
    assert post(c, auth["holder"], new).json()["status"] == "unchanged"
    (rep,) = kept(c, auth["auditor"])
    assert rep["statement"] == new and rep["spent"] == 8.0
    # the very same signed request again: the signature's nonce refuses it
    body = json.dumps({"statement": new}).encode()
    headers = sign_url_request(key, "POST", "http://testserver/v1/budget", body)
    headers["content-type"] = "application/json"
    assert c.post("/v1/budget", content=body, headers=headers).status_code == 200
    r = c.post("/v1/budget", content=body, headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "replayed_request"
    # dated far ahead, it would hide every later report: refused
    ahead = statement(key, time=datetime.now(UTC) + timedelta(days=365), site_log_size=13)
    r = post(c, auth["holder"], ahead)
    assert r.status_code == 400 and r.json()["error"] == "bad_time"
    # a newer log size at the same time (the same second) is newer
    newer = statement(key, time=T0 + timedelta(minutes=1), site_log_size=13, spent=9.0,
                      remaining=67.0)  # fmt: skip
    assert post(c, auth["holder"], newer).json()["status"] == "stored"


def _absurd() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("negative spent", {"spent": -1.0, "remaining": 77.0}),
        ("negative reserved", {"reserved": -4.0, "remaining": 76.0}),
        ("negative budget", {"budget": -80.0}),
        ("spent above lifetime", {"spent": 81.0, "reserved": 0.0, "remaining": -1.0}),
        ("spent and reserved above lifetime", {"reserved": 73.0, "remaining": -1.0}),
        ("remaining inconsistent", {"remaining": 80.0}),
        ("delta above 1", {"delta_budget": 2.0, "delta_remaining": 1.97}),
        ("delta spent above budget", {"delta_spent": 1e-3, "delta_remaining": -9.1e-4}),
        ("huge epsilon", {"budget": 1e300, "remaining": 1e300}),
        ("boolean", {"live_contracts": True}),
        ("string number", {"spent": "8.0"}),
        ("float count", {"rounds": 4.5}),
        ("negative log size", {"site_log_size": -1}),
        ("not a sha256", {"policy_sha256": "zz"}),
        ("extra figure", {"bonus": 1.0}),
    ]


@pytest.mark.parametrize(("what", "over"), _absurd(), ids=[w for w, _ in _absurd()])
def test_absurd_numbers_are_refused(hub, what, over) -> None:
    c, auth, parties, _ = hub
    text = statement(parties["holder"].key, **over)  # signed: only the numbers are wrong
    r = post(c, auth["holder"], text)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", (what, r.text)
    assert kept(c, auth["auditor"]) == []


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_refused(hub, token) -> None:
    c, auth, parties, _ = hub
    honest = statement(parties["holder"].key)
    text = honest.replace('"spent":8', f'"spent":{token}')
    r = post(c, auth["holder"], text)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
    # an integer beyond what JSON numbers hold exactly (no canonical form: not signable)
    huge = honest.replace('"site_log_size":10', f'"site_log_size":{2**60}')
    r = post(c, auth["holder"], huge)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text
    # the same statement inside a body that is not JSON (NaN is not JSON) is refused early
    raw = b'{"statement": "x", "n": NaN}'
    headers = sign_url_request(parties["holder"].key, "POST", "http://testserver/v1/budget", raw)
    headers["content-type"] = "application/json"
    assert c.post("/v1/budget", content=raw, headers=headers).status_code in (400, 422)


def test_missing_figures_and_contract_fields_are_refused(hub) -> None:
    c, auth, parties, _ = hub
    key = parties["holder"].key
    f = figures()
    del f["reserved"]
    missing = make_event(
        "budget.reported", key, "site-a", dataset_id="so101", fingerprint=FP, **f
    ).decode()
    with_contract = make_event(
        "budget.reported", key, "site-a", dataset_id="so101", fingerprint=FP, contract_id="c1",
        **figures(),
    ).decode()  # fmt: skip
    no_dataset = make_event("budget.reported", key, "site-a", fingerprint=FP, **figures()).decode()
    for text in (missing, with_contract, no_dataset):
        r = post(c, auth["holder"], text)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text


def test_a_report_on_other_data_is_a_conflict(hub) -> None:
    c, auth, parties, _ = hub
    r = post(c, auth["holder"], statement(parties["holder"].key, fingerprint="ef" * 32))
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    r = post(c, auth["holder"], statement(parties["holder"].key, dataset_id="never-published"))
    assert r.status_code == 403 and r.json()["error"] == "not_your_dataset"


@pytest.mark.parametrize("who", ["alice", "auditor", "operator"])
def test_only_holders_post_reports(hub, who) -> None:
    c, auth, parties, data = hub
    # a consumer, an auditor or the operator: even with a statement the holder really signed
    honest = statement(parties["holder"].key)
    r = post(c, auth[who], honest)
    assert r.status_code == 403 and r.json()["error"] == "role_forbidden", r.text
    if who in parties:  # or one it signed itself
        r = post(c, auth[who], statement(parties[who].key, who))
        assert r.status_code == 403 and r.json()["error"] == "role_forbidden"
    assert kept(c, auth["auditor"]) == []
    assert "access.refused" in _kinds(data)
