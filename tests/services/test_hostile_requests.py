"""Hostile requests against the real hub and connector apps (in process, ASGI).

Issue 14: JSON nested hundreds of levels deep answered 500 (the hub's catalog
publish, the connector's countersign), so did a non-ASCII dashboard token or
cookie, and a consumer asking for a dataset that is not there read the holder's
site folder in the 404. Here every JSON-accepting route of both services gets
deeply nested JSON (signed by a caller its role admits, and unsigned), huge
numbers, NaN, wrong types, invalid UTF-8, lone surrogates, odd content types;
the signature headers, the dashboard token and cookie get non-ASCII and
non-UTF-8 bytes; and requests that make the site's and the hub's own code
raise not-found errors about local things. For every answer:

* never a 5xx;
* an error is the one documented shape, ``{"error": CODE, "detail": MESSAGE}``
  (the C2SP witness endpoint answers text/plain, as that spec says);
* no answer (body or header) names the tests' temporary folders, where the
  site, the hub's data and the keys live.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from dataspace.auth.httpsig import HttpSigAuth, sign_request
from dataspace.auth.service import MAX_JSON_DEPTH, MAX_JSON_DIGITS, json_problem, public_detail
from dataspace.connectors.service import create_app as connector_app
from dataspace.errors import NotFoundError
from dataspace.hub.app import create_app as hub_app
from dataspace.hub.dashboard import COOKIE, TOKEN_FILE
from dataspace.site.folder import Site
from dataspace.site.identity import Identity, load_private_key
from tests.services.conftest import (
    Party,
    dataset_id,
    make_party,
    set_policy,
    signed_contract,
    until,
)

FP = "ab" * 32
DEEP = 900  # the depth that answered 500 in issue 14
ERROR_KEYS = {"error", "detail"}


# --- bodies -------------------------------------------------------------------------


def deep_array(n: int = DEEP) -> bytes:
    return b"[" * n + b"]" * n


def deep_object(n: int = DEEP) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


def with_field(base: dict[str, Any], name: str, raw: bytes) -> bytes:
    """``base`` as JSON with the value of ``name`` replaced by the raw JSON text ``raw``."""
    marker = "__HOSTILE_VALUE__"
    text = json.dumps({**base, name: marker}).encode()
    return text.replace(json.dumps(marker).encode(), raw)


def hostile_values() -> dict[str, bytes]:
    """Raw JSON values (or not-JSON) put into one field of an otherwise plausible body."""
    return {
        "deep array": deep_array(),
        "deep object": deep_object(),
        "deep mixed": b'[{"a":' * (DEEP // 2) + b"1" + b"}]" * (DEEP // 2),
        "unclosed deep": b"[" * 5000,
        "huge float": b"1e999",
        "huge negative float": b"-1e999",
        "huge integer": b"9" * 5000,  # past Python's 4300-digit int parsing limit
        "big integer": b"1" + b"0" * 100,
        "integer past the float range": b"1" + b"0" * 400,
        "digits in a string": b'"' + b"7" * 5000 + b'"',
        "NaN": b"NaN",
        "Infinity": b"Infinity",
        "wrong type list": b"[1, 2, 3]",
        "wrong type object": b'{"x": {"y": []}}',
        "wrong type bool": b"true",
        "null": b"null",
        "lone surrogate": b'"\\ud800"',
        "NUL in string": b'"a\\u0000b"',
        "brackets in a string": b'"' + b"[" * 5000 + b'"',
        "invalid UTF-8": b'"\xff\xfe\xc0\xaf"',
        "long string": b'"' + b"x" * 200_000 + b'"',
    }


def whole_bodies() -> dict[str, bytes]:
    """Whole request bodies that are not the JSON object a route wants."""
    return {
        "deep array": deep_array(),
        "deep object": deep_object(),
        "very deep array": deep_array(100_000),
        "unclosed": b"{" * 10_000,
        "invalid UTF-8": b"\xff\xfe\xfd",
        "overlong UTF-8": b'{"a": "\xc0\xaf"}',
        "UTF-16": json.dumps({"a": 1}).encode("utf-16"),
        "not JSON": b"{not json",
        "empty": b"",
        "a string": b'"x"',
        "a number": b"1e999",
        "a list": b"[]",
        "null": b"null",
        "NUL bytes": b"\x00" * 64,
    }


# --- the services ---------------------------------------------------------------------


@dataclass
class Service:
    client: TestClient
    keys: dict[str, Any]  # role -> private key
    private: list[str]  # strings no answer may contain
    answers: list[tuple[str, httpx.Response]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        role: str | None = None,
        headers: dict[str, Any] | None = None,
        label: str = "",
    ) -> httpx.Response:
        hdrs = {"content-type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        auth = HttpSigAuth(self.keys[role]) if role else None
        r = self.client.request(method, path, content=body, headers=hdrs, auth=auth)
        self.answers.append((f"{method} {path} {label}".strip(), r))
        check(r, self.private, f"{method} {path} [{label or role or 'unsigned'}]")
        return r


def private_strings(*paths: Path) -> list[str]:
    out: set[str] = set()
    for p in paths:
        out |= {str(p), os.path.realpath(p), p.as_uri()}
    return sorted(out)


def check(r: httpx.Response, private: list[str], what: str) -> None:
    """No 5xx, the one error shape, and no local path in what came back."""
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:500]}"
    ctype = r.headers.get("content-type", "")
    if r.status_code >= 400 and not ctype.startswith("text/plain"):
        assert ctype.startswith("application/json"), f"{what}: {ctype} {r.text[:200]}"
        body = r.json()
        assert set(body) == ERROR_KEYS, f"{what}: {body}"
        assert all(isinstance(v, str) and v for v in body.values()), f"{what}: {body}"
    seen = r.content + b"\n".join(k + b": " + v for k, v in r.headers.raw)
    for p in private:
        assert p.encode() not in seen, f"{what}: the answer names {p}: {r.text[:500]}"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def hub(base: Path) -> Iterator[Service]:
    keys = base / "hub-keys"
    keys.mkdir()
    holder = make_party(keys, "site-a", "holder")
    alice = make_party(keys, "alice", "consumer")
    auditor = make_party(keys, "auditor", "auditor")
    trust = [
        Identity("site-a", "holder", base64.b64decode(holder.key_id)),
        Identity("auditor", "auditor", base64.b64decode(auditor.key_id)),
    ]
    data = base / "hub"
    app = hub_app(data, trust=trust)
    operator = load_private_key(data / "hub.key")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield Service(
            c,
            {
                "holder": holder.key,
                "consumer": alice.key,
                "auditor": auditor.key,
                "operator": operator,
            },
            private_strings(base, data),
            extra={"data": data, "app": app, "holder": holder, "alice": alice},
        )


@pytest.fixture(scope="module")
def connector(base: Path, site_template: Path) -> Iterator[Service]:
    root = base / "site"
    shutil.copytree(site_template, root)
    site = Site.open(root)
    keys = base / "site-keys"
    keys.mkdir()
    alice = make_party(keys, "alice", "consumer")
    auditor = make_party(keys, "auditor", "auditor")
    set_policy(site, consumers=[alice.key_id])
    trust = [Identity("auditor", "auditor", base64.b64decode(auditor.key_id))]
    app = connector_app(site, None, publish=False, trust=trust)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield Service(
            c,
            {"holder": site.key, "consumer": alice.key, "auditor": auditor.key},
            private_strings(base, root, site_template),
            extra={"site": site, "alice": alice},
        )


# --- what each JSON-accepting route takes ------------------------------------------------


def hub_routes(hub: Service) -> list[tuple[str, str, str, dict[str, Any], str]]:
    """(method, path, role that may call it, a plausible body, the field to poison)."""
    alice: Party = hub.extra["alice"]
    contract = {
        "contract_id": "c-1",
        "dataset_id": "so101",
        "fingerprint": FP,
        "consumer": alice.key_id,
        "purpose": "research",
        "epsilon": 1.0,
        "state": "agreed",
    }
    publish = {
        "dataset_id": "so101",
        "fingerprint": FP,
        "dcat": {"@context": {}, "@type": "dcat:Dataset"},
        "title": "t",
        "quality_score": 50.0,
    }
    return [
        ("POST", "/v1/catalog", "holder", publish, "title"),
        ("POST", "/v1/catalog", "holder", publish, "dcat"),
        ("POST", "/v1/contracts", "holder", contract, "agreement"),
        ("POST", "/v1/contracts", "holder", contract, "epsilon"),
        ("POST", "/v1/runs", "consumer", {"run_id": "r-1", "contract_ids": ["c-1"]}, "meta"),
        ("POST", "/v1/runs/r-1/rounds", "consumer", {"round": 0, "loss": 1.0}, "epsilon"),
        ("POST", "/v1/runs/r-1/rounds", "consumer", {"round": 0}, "loss"),
        (
            "POST",
            "/v1/participants",
            "operator",
            {"name": "x", "role": "auditor", "public_key": "A" * 43 + "="},
            "name",
        ),
        ("POST", "/v1/log/append", "operator", {"kind": "x"}, "fields"),
    ]


def connector_routes(conn: Service) -> list[tuple[str, str, str, dict[str, Any], str]]:
    site: Site = conn.extra["site"]
    ds = dataset_id(site)
    offer = {
        "dataset_id": ds,
        "purpose": "research",
        "epsilon": 1.0,
        "rounds": 3,
        "until": until(),
        "template": "mlp",
    }
    agreement = {"contract_id": "c-1", "state": "offered", "signatures": {}, "terms": {}}
    policy_path = f"/v1/admin/datasets/{ds}/policy"
    return [
        ("POST", "/v1/offers", "consumer", offer, "epsilon"),
        ("POST", "/v1/offers", "consumer", offer, "until"),
        ("POST", "/v1/contracts/c-1/countersign", "consumer", agreement, "terms"),
        ("POST", "/v1/contracts/c-1/countersign", "consumer", agreement, "signatures"),
        ("POST", "/v1/admin/contracts/c-1/reject", "holder", {"reason": "no"}, "reason"),
        ("POST", "/v1/admin/contracts/c-1/approve", "holder", {}, "x"),
        ("PUT", policy_path, "holder", {"@type": "Set"}, "permission"),
        ("POST", "/v1/admin/publish", "holder", {}, "x"),
        ("POST", "/v1/log/append", "holder", {"kind": "x"}, "fields"),
    ]


def _services(hub: Service, connector: Service):
    return [(hub, hub_routes(hub)), (connector, connector_routes(connector))]


# --- 1. deep nesting, every JSON route, signed and unsigned ---------------------------


@pytest.mark.parametrize("which", ["hub", "connector"])
def test_deep_json_is_a_400_on_every_json_route(hub, connector, which):
    svc, routes = _services(hub, connector)[0 if which == "hub" else 1]
    for method, path, role, body, name in routes:
        for label, raw in [
            ("whole body: deep array", deep_array()),
            ("whole body: deep object", deep_object()),
            ("whole body: 100000 deep", deep_array(100_000)),
            (f"{name}: deep object", with_field(body, name, deep_object())),
            (f"{name}: deep array", with_field(body, name, deep_array())),
        ]:
            for who in (role, None):  # the depth is checked before anything else reads it
                r = svc.send(method, path, raw, role=who, label=label)
                assert r.status_code == 400, (path, label, r.text)
                assert r.json()["error"] == "malformed_json", (path, label, r.text)
                assert "deep" in r.json()["detail"]


@pytest.mark.parametrize("which", ["hub", "connector"])
def test_nesting_within_the_limit_is_read_as_usual(hub, connector, which):
    """The limit refuses depth, not brackets: brackets in strings or in sequence pass."""
    svc, routes = _services(hub, connector)[0 if which == "hub" else 1]
    shallow = deep_object(MAX_JSON_DEPTH - 8)
    in_string = b'"' + b"[{" * 5000 + b'"'
    for method, path, role, body, name in routes:
        for label, raw in [
            ("near the limit", with_field(body, name, shallow)),
            ("brackets in a string", with_field(body, name, in_string)),
            (
                "many shallow lists",
                with_field(body, name, b"[" + b"[],".join([b""] * 3000) + b"[]]"),
            ),
        ]:
            r = svc.send(method, path, raw, role=role, label=label)
            if r.status_code == 400:
                assert "levels deep" not in r.json()["detail"], (path, label, r.text)


def test_depth_scan_is_exact_on_json():
    def deep(body: bytes) -> bool:
        return json_problem(body) is not None

    assert not deep(deep_array(MAX_JSON_DEPTH))
    assert deep(deep_array(MAX_JSON_DEPTH + 1))
    assert not deep(b'["' + b"[" * 1000 + b'"]')
    assert not deep(b'["\\"' + b"[" * 1000 + b'"]')  # an escaped quote stays in the string
    assert deep(b'["\\\\"' + b"[" * 1000 + b"]")  # an escaped backslash does not
    lines = b"\n".join([deep_array(40)] * 100)  # JSON lines: each one shallow
    assert not deep(lines)
    assert deep(b"]" * 100 + b"[" * (MAX_JSON_DEPTH + 1))
    # numbers: digits outside strings are bounded, inside strings they are text
    assert json_problem(b"[" + b"9" * MAX_JSON_DIGITS + b"]") is None
    assert "digits" in (json_problem(b"[" + b"9" * (MAX_JSON_DIGITS + 1) + b"]") or "")
    assert "digits" in (json_problem(b'{"a": 1.' + b"0" * 400 + b"}") or "")
    assert json_problem(b'["' + b"9" * 5000 + b'"]') is None


# --- 2. numbers, types, encodings in every field we poison ------------------------------


@pytest.mark.parametrize("which", ["hub", "connector"])
def test_hostile_values_in_fields_never_500(hub, connector, which):
    svc, routes = _services(hub, connector)[0 if which == "hub" else 1]
    for method, path, role, body, name in routes:
        for label, raw in hostile_values().items():
            r = svc.send(method, path, with_field(body, name, raw), role=role, label=label)
            if label in ("huge integer", "integer past the float range") or "deep" in label:
                assert (r.status_code, r.json()["error"]) == (400, "malformed_json"), r.text


@pytest.mark.parametrize("which", ["hub", "connector"])
def test_hostile_whole_bodies_never_500(hub, connector, which):
    svc, routes = _services(hub, connector)[0 if which == "hub" else 1]
    seen = set()
    for method, path, role, _, _ in routes:
        if (method, path) in seen:
            continue
        seen.add((method, path))
        for label, raw in whole_bodies().items():
            r = svc.send(method, path, raw, role=role, label=label)
            if label in ("deep array", "deep object", "very deep array", "unclosed"):
                assert r.json()["error"] == "malformed_json"
            reads_json = not path.endswith(("/append", "/approve", "/publish"))
            if label in ("invalid UTF-8", "not JSON") and reads_json:
                assert (r.status_code, r.json()["error"]) == (400, "malformed_json"), r.text


@pytest.mark.parametrize("which", ["hub", "connector"])
def test_odd_content_types_never_500(hub, connector, which):
    svc, routes = _services(hub, connector)[0 if which == "hub" else 1]
    for method, path, role, body, _ in routes[:3]:
        raw = json.dumps(body).encode()
        for ctype in (
            b"text/plain",
            b"application/json; charset=\xe9",
            "application/json; charset=é".encode(),
            b"application/\xff\xfe",
            b"multipart/form-data; boundary=x",
            b"application/x-www-form-urlencoded",
            b"",
        ):
            svc.send(
                method, path, raw, role=role, headers={"content-type": ctype}, label=repr(ctype)
            )
        for ctype in (b"text/plain", b"application/json"):
            svc.send(method, path, deep_array(), role=role, headers={"content-type": ctype})


def test_hub_round_with_huge_and_non_finite_numbers(hub):
    """Numbers reach the hub's log and DuckDB: each is refused or stored, never a 500."""
    alice: Party = hub.extra["alice"]
    # a contract both parties signed, on a dataset the holder published (hub.registry)
    dcat = {"@context": {}, "@type": "dcat:Dataset"}
    entry = {"dataset_id": "so101", "fingerprint": FP, "title": "t", "dcat": dcat}
    hub.send("POST", "/v1/catalog", json.dumps(entry).encode(), role="holder")
    contract = signed_contract(hub.keys["holder"], alice.key, "so101", FP, contract_id="c-num")
    r = hub.send("POST", "/v1/contracts", json.dumps(contract).encode(), role="holder")
    assert r.status_code == 200, r.text
    r = hub.send(
        "POST",
        "/v1/runs",
        json.dumps({"run_id": "r-num", "contract_ids": ["c-num"]}).encode(),
        role="consumer",
    )
    assert r.status_code == 200, r.text
    for i, raw in enumerate(
        [b"1e308", b"1e999", b"-1e999", b"NaN", b"9" * 5000, b"1" + b"0" * 400, b"5e-324"]
    ):
        for name in ("loss", "epsilon", "contributions"):
            value = raw if name == "loss" else b'{"so101": ' + raw + b"}"
            hub.send(
                "POST",
                "/v1/runs/r-num/rounds",
                with_field({"round": 100 + i}, name, value),
                role="consumer",
                label=f"{name}={raw[:20]!r}",
            )
    r = hub.send("GET", "/v1/runs/r-num", role="consumer")
    assert r.status_code == 200


# --- 3. non-ASCII and non-UTF-8 headers ------------------------------------------------


def _signed(key, method: str, path: str, body: bytes = b"") -> dict[str, str]:
    return sign_request(key, method, path, "", body, authority="testserver")


@pytest.mark.parametrize("which", ["hub", "connector"])
def test_non_ascii_signature_headers_are_401(hub, connector, which):
    svc = hub if which == "hub" else connector
    key = svc.keys["consumer"]
    for header, mangle in [
        ("signature-input", lambda v: v.replace('keyid="', 'keyid="\u00e9')),
        ("signature-input", lambda v: v.replace('nonce="', 'nonce="\u00e9\u00e9\u00e9')),
        ("signature-input", lambda v: v.replace("created=", "created=\u0661")),
        ("signature-input", lambda v: v + ";x=\u00e9"),
        ("signature", lambda v: v.replace("=:", "=:\u00e9")),
        ("content-digest", lambda v: "sha-256=:\u00e9\u00e9:"),
    ]:
        for encoding in ("latin-1", "utf-8"):
            h = _signed(key, "GET", "/v1/datasets" if which == "connector" else "/v1/hub")
            h = {k.lower(): v for k, v in h.items()}
            h[header] = mangle(h[header]).encode(encoding, "replace")
            path = "/v1/datasets" if which == "connector" else "/v1/hub"
            r = svc.send("GET", path, headers=h, label=f"{header} {encoding}")
            assert r.status_code == 401, r.text
    # raw bytes that are no text at all, and a header that is only non-ASCII
    for junk in (b"\xff\xfe\x00", "\u00e9".encode("latin-1"), "\u2603".encode()):
        r = svc.send(
            "GET",
            "/v1/whoami" if which == "hub" else "/v1/datasets",
            headers={"signature-input": junk, "signature": junk, "content-digest": junk},
        )
        assert r.status_code == 401
    # non-ASCII in other headers of a correctly signed request changes nothing
    path = "/v1/whoami" if which == "hub" else "/v1/datasets"
    r = svc.send(
        "GET",
        path,
        role="consumer",
        headers={
            "x-anything": "\u00e9\u2603".encode(),
            "user-agent": b"\xff\xfe",
            "cookie": b"\xff",
        },
    )
    assert r.status_code == 200, r.text


def test_dashboard_token_and_cookie_with_any_bytes_are_401(hub):
    token = (hub.extra["data"] / TOKEN_FILE).read_text().strip()
    tokens = [
        "%C3%A9",  # é, UTF-8
        "%E9",  # é, latin-1: not UTF-8
        "%FF%FE%00",
        "%E2%98%83" * 50,
        token[:-1] + "%C3%A9",
        token + "%00",
        "",
        "x" * 10_000,
    ]
    for t in tokens:
        r = hub.send("GET", f"/dashboard?token={t}", label=f"token {t[:20]}")
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "dashboard_token"
    cookies = [
        "\u00e9".encode("latin-1"),
        "\u00e9".encode(),
        b"\xff\xfe",
        (token[:-1] + "\u00e9").encode(),
        (token + "\u2603").encode(),
        b"\x00" * 32,
        b"=" * 100,
    ]
    for value in cookies:
        for header in (COOKIE.encode() + b"=" + value, b"a=b; " + COOKIE.encode() + b"=" + value):
            r = hub.send("GET", "/dashboard", headers={"cookie": header}, label=repr(header[:40]))
            assert r.status_code == 401, r.text
            assert r.json()["error"] == "dashboard_token"
    # the right token still opens it (and its redirect keeps the path encoded)
    r = hub.client.get(f"/dashboard?token={token}", follow_redirects=False)
    check(r, hub.private, "dashboard with its token")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    r = hub.send("GET", "/dashboard/api/state", headers={"cookie": f"{COOKIE}={token}"})
    assert r.status_code == 200
    r = hub.send(
        "POST", "/dashboard/api/contracts/x/nonsense", headers={"cookie": f"{COOKIE}={token}"}
    )
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = hub.send(
        "POST", "/dashboard/api/contracts/x/approve", headers={"cookie": f"{COOKIE}={token}"}
    )
    assert r.status_code == 403 and r.json()["error"] == "dashboard_forbidden"


# --- 4. not-found errors about site-local things name no local path --------------------


def test_connector_not_found_answers_name_no_path(connector):
    site: Site = connector.extra["site"]
    ds = dataset_id(site)
    gets = [
        ("/v1/datasets/nope", "consumer"),
        ("/v1/datasets/" + "x" * 300, "consumer"),
        ("/v1/datasets/..%2F..%2Fetc%2Fpasswd", "consumer"),
        ("/v1/datasets/%2Ftmp", "consumer"),
        ("/v1/datasets/%C3%A9", "consumer"),
        ("/v1/contracts/nope", "consumer"),
        ("/v1/admin/datasets/nope/policy", "holder"),
        ("/v1/admin/budget?dataset_id=nope", "holder"),
        ("/v1/admin/budget?dataset_id=%FF", "auditor"),
        ("/v1/log/entries?start=99999", "auditor"),
        ("/v1/log/proof/inclusion?index=99999", "auditor"),
        ("/v1/log/proof/consistency?from=99&size=2", "auditor"),
        ("/v1/log/checkpoint?witnessed=true", None),
        ("/v1/nowhere", "consumer"),
    ]
    for path, role in gets:
        r = connector.send("GET", path, role=role)
        assert r.status_code in (200, 400, 404, 422), (path, r.text)
    r = connector.send("GET", "/v1/datasets/nope", role="consumer")
    assert r.json() == {
        "error": "not_found",
        "detail": "dataset 'nope' is not enrolled at this site",
    }
    for path in ("/v1/admin/contracts/nope/approve", "/v1/admin/contracts/nope/reject"):
        assert connector.send("POST", path, role="holder").status_code == 404
    assert connector.send("POST", "/v1/admin/publish", role="holder").status_code == 404
    body = json.dumps({"@context": [], "@type": "Set"}).encode()
    connector.send("PUT", "/v1/admin/datasets/nope/policy", body, role="holder")
    r = connector.send("POST", "/v1/log/add-checkpoint", b"old 0\n\nnot a note")
    assert r.status_code == 404  # a connector without a hub is no witness (text/plain)
    # a countersign of terms well formed but for a contract that was never offered
    r = connector.send(
        "POST", "/v1/offers", json.dumps(_offer(ds)).encode(), role="consumer", label="offer"
    )
    assert r.status_code == 200, r.text
    agreement = r.json()
    agreement["terms"]["contract_id"] = agreement["contract_id"] = "never-offered"
    path = "/v1/contracts/never-offered/countersign"
    r = connector.send("POST", path, json.dumps(agreement).encode(), role="consumer")
    assert 400 <= r.status_code < 500


def _offer(ds: str) -> dict[str, Any]:
    return {
        "dataset_id": ds,
        "purpose": "research",
        "epsilon": 1.0,
        "rounds": 3,
        "until": until(),
        "template": "mlp",
    }


def test_hub_not_found_answers_name_no_path(hub):
    for path, role in [
        ("/v1/contracts/nope", "consumer"),
        ("/v1/runs/nope", "consumer"),
        ("/v1/log/entries?start=99999", "auditor"),
        ("/v1/log/proof/inclusion?index=99999", "auditor"),
        ("/v1/log/proof/consistency?from=99&size=2", "auditor"),
        ("/v1/log/checkpoint?witnessed=true", None),
        ("/v1/catalog?limit=1e999", "consumer"),
        ("/v1/catalog?offset=99999999999999999999999", "consumer"),
        ("/v1/catalog?q=%FF%FE", "consumer"),
        ("/v1/nowhere", "consumer"),
    ]:
        r = hub.send("GET", path, role=role)
        assert r.status_code in (200, 400, 404, 422), (path, r.text)
    assert hub.send("DELETE", "/v1/catalog/nope", role="holder").status_code == 404
    body = json.dumps({"round": 0}).encode()
    assert hub.send("POST", "/v1/runs/nope/rounds", body, role="consumer").status_code == 404
    r = hub.send("POST", "/v1/log/add-checkpoint", b"old 0\n\n\xff\xfe not a note")
    assert 400 <= r.status_code < 500


def test_a_library_error_naming_the_site_folder_is_scrubbed(connector, monkeypatch):
    """Library code names files in its messages (for the holder's CLI); over HTTP the
    service answers the same error without them, however it got there."""
    import dataspace.policy as policy  # the front door the connector's routes call through

    site: Site = connector.extra["site"]

    def broken(*a, **kw):
        raise NotFoundError(f"{site.root / 'store' / 'budget.duckdb'}: no ledger in {site.root}")

    monkeypatch.setattr(policy, "budget_report", broken)
    r = connector.send("GET", "/v1/admin/budget", role="auditor")
    assert r.status_code == 404
    assert r.json()["detail"] == "<local path>: no ledger in <local path>"


def test_a_log_router_error_naming_the_data_folder_is_scrubbed(hub, monkeypatch):
    """The audit log's router answers its own errors (not through the service's
    handlers): the service's outer middleware scrubs those too."""
    from dataspace.audit.log import LogError

    log = hub.extra["app"].state.hub.log.log
    data: Path = hub.extra["data"]

    def broken(*a, **kw):
        raise LogError(f"{data / 'log'} has no checkpoint yet (see {data}/log/checkpoint)")

    monkeypatch.setattr(log, "checkpoint", broken)
    r = hub.send("GET", "/v1/log/checkpoint")
    assert r.status_code == 400
    assert r.json()["detail"] == "<local path> has no checkpoint yet (see <local path>)"


def test_a_bug_is_a_json_500_without_its_text(hub, monkeypatch):
    """Not a hostile input's doing: an unexpected exception still answers the one shape,
    and its text (an OSError names its file) stays in the service's log."""
    store = hub.extra["app"].state.hub.store
    data: Path = hub.extra["data"]

    def broken(*a, **kw):
        raise OSError(28, "No space left on device", str(data / "hub.duckdb"))

    monkeypatch.setattr(store, "unpublish", broken)
    # the entry is there whatever ran before on this module's hub (a withdrawal of an
    # entry that is not there is a 404 before the store is touched)
    monkeypatch.setitem(store.catalog, (hub.extra["holder"].key_id, "so101"), {})
    r = hub.client.delete("/v1/catalog/so101", auth=HttpSigAuth(hub.keys["holder"]))
    assert r.status_code == 500
    assert r.json() == {
        "error": "internal_error",
        "detail": "internal error; see the service's log",
    }
    assert str(data).encode() not in r.content


def test_public_detail_keeps_routes_and_urls():
    text = (
        "role 'consumer' may not call POST /v1/admin/contracts/x/approve; "
        "cannot reach http://127.0.0.1:8000/v1/hub: refused"
    )
    assert public_detail(text) == text
    assert public_detail("a/b/c relative") == "a/b/c relative"
    here = str(Path.cwd())
    assert public_detail(f"cannot read {here}/x.key") == "cannot read <local path>"
    assert public_detail(f"file://{here}/x") == "file://<local path>"
    assert public_detail("at /my site/s1/log: bad", ["/my site/s1"]) == "at <local path>: bad"


# --- 5. what the services wrote for remote readers ---------------------------------------


def test_refusals_in_the_logs_name_no_path(hub, connector):
    """After the attacks: the logs auditors read remotely carry no local path either."""
    for svc in (hub, connector):
        r = svc.send("GET", "/v1/log/entries?start=0", role="auditor")
        assert r.status_code == 200
