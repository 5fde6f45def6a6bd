"""URL-style origins for new logs (issue 19, C2SP tlog-checkpoint "Note text": the origin
SHOULD be a schema-less URL without spaces or "+"), and how witnesses come to trust them.

New site and hub logs are named ``dataspace.invalid/{site,hub}/HEX(SHA-256(log key)[:16])``
(dataspace.audit.witnesskey.log_origin); logs made before keep their name. A witness
trusts, per service known by (name, identity key), one origin per key: the one it cosigned
before, else the one the service's identity endorses, else both until one is cosigned.
The attacks come after the plain cases: an endorsement claiming another service's
origin, origins with spaces, newlines, non-ASCII or too long, an identity endorsing an
origin already bound to another key, an old-origin log pretending to be new.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.events import make_event
from dataspace.audit.log import LogError, TransparencyLog
from dataspace.audit.note import ALG_COSIGNATURE_V1, Verifier, parse_vkey, raw_public
from dataspace.audit.trust import parse_trusted_keys
from dataspace.audit.verify import verify_source
from dataspace.audit.witness import Witness, WitnessError, witness_log
from dataspace.audit.witnessing import (
    BadCosignatureError,
    endorsed_log,
    peer_for_identity,
    resolve_peer,
    service_logs,
)
from dataspace.audit.witnesskey import (
    HEADER,
    WitnessKeyError,
    bound_origin,
    check_endorsement,
    check_origin_text,
    endorse,
    log_origin,
)
from dataspace.hub.app import create_app
from dataspace.site import create_site
from dataspace.site.identity import load_private_key
from tests.services.conftest import hub_parties


def _pub(key: Ed25519PrivateKey) -> bytes:
    return raw_public(key)


def _witness_v(name: str) -> tuple[Ed25519PrivateKey, Verifier]:
    k = Ed25519PrivateKey.generate()
    return k, Verifier(name, _pub(k), ALG_COSIGNATURE_V1)


def _forge(identity: Ed25519PrivateKey, witness: Verifier, log_line: bytes) -> bytes:
    """An endorsement signed by ``identity`` whose ``log`` line is ``log_line`` verbatim
    (what a hostile service can send: any bytes, validly signed by its own key)."""
    msg = (
        b"\n".join(
            [
                HEADER,
                b"identity " + base64.b64encode(_pub(identity)),
                b"witness " + witness.vkey().encode(),
                b"log " + log_line,
            ]
        )
        + b"\n"
    )
    return msg + b"signature " + base64.b64encode(identity.sign(msg)) + b"\n"


def _log(directory: Path, origin: str, key: Ed25519PrivateKey, n: int = 3) -> TransparencyLog:
    log = TransparencyLog.create(directory, origin, key)
    log.append_many([make_event("dataset.enrolled", key, "x", dataset_id=str(i)) for i in range(n)])
    return log


@pytest.fixture
def hub(tmp_path: Path):
    parties, trust = hub_parties(tmp_path / "keys")
    data = tmp_path / "hub"
    with TestClient(create_app(data, trust=trust)) as c:
        yield c, parties, data


def _post(c: TestClient):
    def post(body: bytes) -> tuple[int, bytes]:
        r = c.post("/v1/log/add-checkpoint", content=body)
        return r.status_code, r.content

    return post


# --- the form -----------------------------------------------------------------------------
def test_the_origin_is_a_schemaless_url_derived_from_the_log_key():
    key = Ed25519PrivateKey.generate()
    pub = _pub(key)
    o = log_origin("site", pub)
    assert o == "dataspace.invalid/site/" + hashlib.sha256(pub).hexdigest()[:32]
    assert check_origin_text(o) == o and "+" not in o and " " not in o and "://" not in o
    assert log_origin("hub", pub) == "dataspace.invalid/hub/" + o.rsplit("/", 1)[1]
    assert bound_origin(o, pub) and not bound_origin(o, _pub(Ed25519PrivateKey.generate()))
    assert not bound_origin("site-a", pub)
    with pytest.raises(WitnessKeyError):
        log_origin("other", pub)


def test_a_new_site_log_has_a_url_origin_and_its_vkey_names_it(tmp_path):
    site = create_site(tmp_path / "site", "acme")
    with TransparencyLog.open(site.log_dir) as log:
        assert log.origin == log_origin("site", site.identity.public_key)
        assert checkpoint_of_note(log.checkpoint()).origin == log.origin
    v = parse_vkey(site.vkey_path.read_text())
    assert v.name == log.origin and v.public_key == site.identity.public_key


def test_a_new_hub_log_has_a_url_origin_and_its_endorsement_carries_it(hub):
    c, _parties, data = hub
    key = load_private_key(data / "hub.key")
    with TransparencyLog.open(data / "log") as log:
        assert log.origin == log_origin("hub", _pub(key))
    assert checkpoint_of_note(c.get("/v1/log/checkpoint").content).origin == log.origin
    wv = parse_vkey((data / "witness.vkey").read_text())
    e = check_endorsement(c.get("/v1/log/witness-key").content, wv.name, _pub(key))
    assert e.log == Verifier(log.origin, _pub(key))


def test_an_identity_file_in_a_trust_file_trusts_its_derived_origins(tmp_path):
    """``log HUB_DATA/hub.key.pub`` (an identity file) keeps working for the hub's new log."""
    site = create_site(tmp_path / "site", "acme")
    pub = tmp_path / "site" / "site.key.pub"
    tk = parse_trusted_keys(f"log {pub}\n")
    names = {v.name for v in tk.logs}
    assert {site.name, log_origin("site", site.identity.public_key)} <= names
    with TransparencyLog.open(site.log_dir) as log:
        rep = verify_source(log, tk, allow_unanchored=True)
        assert rep.ok, rep.violations


# --- the hub's witness: a holder's new log, with no URL announced --------------------------
def test_the_hub_witnesses_a_holders_new_log_without_being_told_its_origin(hub, tmp_path):
    c, parties, _data = hub
    key = parties["holder"].key
    log = _log(tmp_path / "new", log_origin("site", _pub(key)), key)
    line = witness_log(log, _post(c))
    assert line.startswith(b"\xe2\x80\x94 dataspace-hub ")
    # its monitor route serves it under the SHA-256 of the new origin
    h = hashlib.sha256(log.origin.encode()).hexdigest()
    assert c.get(f"/v1/log/{h}/checkpoint").status_code == 200


def test_an_old_origin_log_is_still_witnessed(hub, tmp_path):
    c, parties, _data = hub
    key = parties["holder"].key
    log = _log(tmp_path / "old", "site-a", key)
    witness_log(log, _post(c))
    log.append(make_event("dataset.enrolled", key, "site-a", dataset_id="z"))
    witness_log(log, _post(c), known_size=3)


def test_an_old_origin_log_cannot_start_a_fresh_history_under_the_new_origin(hub, tmp_path):
    """Attack: a holder whose log was witnessed under its old origin (its name) re-signs a
    different history under its new URL origin with the same key. One origin per key: the
    witness knows the key's log already and does not trust the new origin for it (404)."""
    c, parties, _data = hub
    key = parties["holder"].key
    old = _log(tmp_path / "old", "site-a", key)
    witness_log(old, _post(c))
    fresh = _log(tmp_path / "fresh", log_origin("site", _pub(key)), key, n=1)
    with pytest.raises(WitnessError) as e:
        witness_log(fresh, _post(c))
    assert e.value.status == 404
    witness_log(old, _post(c), known_size=3)  # the real one goes on


def test_a_new_origin_log_cannot_fall_back_to_the_old_origin(hub, tmp_path):
    """The other way round: once the new origin is cosigned, the name is not trusted."""
    c, parties, _data = hub
    key = parties["holder"].key
    new = _log(tmp_path / "new", log_origin("site", _pub(key)), key)
    witness_log(new, _post(c))
    old = _log(tmp_path / "old", "site-a", key, n=1)
    with pytest.raises(WitnessError) as e:
        witness_log(old, _post(c))
    assert e.value.status == 404


def test_an_origin_derived_from_another_key_is_refused(hub, tmp_path):
    """Attack: site-b signs a log under site-a's URL origin: that origin is bound to
    site-a's key, so site-b's signature is not a trusted one (403)."""
    c, parties, _data = hub
    a, b = parties["holder"].key, parties["holder2"].key
    squat = _log(tmp_path / "squat", log_origin("site", _pub(a)), b)
    with pytest.raises(WitnessError) as e:
        witness_log(squat, _post(c))
    assert e.value.status == 403
    stranger = Ed25519PrivateKey.generate()  # an origin of a key the hub does not know
    unknown = _log(tmp_path / "unknown", log_origin("site", _pub(stranger)), stranger)
    with pytest.raises(WitnessError) as e:
        witness_log(unknown, _post(c))
    assert e.value.status == 404


def test_a_log_json_edited_to_the_new_origin_does_not_open(tmp_path):
    """Attack: an old-origin log whose log.json is edited to claim the new origin: its
    signed checkpoint names the old one, so the log refuses to open."""
    key = Ed25519PrivateKey.generate()
    _log(tmp_path / "log", "site-a", key).close()
    meta = json.loads((tmp_path / "log" / "log.json").read_text())
    meta["origin"] = log_origin("site", _pub(key))
    (tmp_path / "log" / "log.json").write_text(json.dumps(meta))
    with pytest.raises(LogError):
        TransparencyLog.open(tmp_path / "log")


# --- endorsements: what a witness learns, and what it refuses -------------------------------
def test_an_endorsement_of_the_services_own_origin_is_accepted():
    ident = Ed25519PrivateKey.generate()
    _, wv = _witness_v("site-a")
    for origin in (log_origin("site", _pub(ident)), "site-a"):
        log = Verifier(origin, _pub(ident))
        e = check_endorsement(endorse(ident, wv, log), "site-a", _pub(ident))
        assert e.log == log


def test_an_endorsement_claiming_another_services_origin_is_refused():
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    _, wv = _witness_v("site-b")
    for claimed in (log_origin("site", _pub(a)), log_origin("hub", _pub(a)), "site-a"):
        text = endorse(b, wv, Verifier(claimed, _pub(b)))
        with pytest.raises(WitnessKeyError, match="origin"):
            check_endorsement(text, "site-b", _pub(b))


@pytest.mark.parametrize(
    "origin",
    [
        "dataspace.invalid/site/a b",  # a space: the vkey line does not even parse
        "dataspace.invalid/site/\u00e9t\u00e9",  # non-ASCII
        "dataspace.invalid/site/\u2028x",  # a Unicode line separator
        "dataspace.invalid/site/\u00a0x",  # a no-break space
        "x" * 256,  # too long
        "dataspace.invalid/" + "a" * 300,
    ],
)
def test_an_endorsed_origin_with_spaces_non_ascii_or_too_long_is_refused(origin):
    ident = Ed25519PrivateKey.generate()
    _, wv = _witness_v("site-a")
    pub = _pub(ident)
    from dataspace.audit.note import key_id

    kid = key_id(origin, 0x01, pub).hex()
    raw = base64.b64encode(bytes([1]) + pub).decode()
    line = f"{origin}+{kid}+{raw}".encode()
    with pytest.raises(WitnessKeyError):
        check_endorsement(_forge(ident, wv, line), "site-a", pub)


def test_an_endorsed_origin_with_a_newline_is_refused():
    ident = Ed25519PrivateKey.generate()
    _, wv = _witness_v("site-a")
    pub = _pub(ident)
    good = Verifier(log_origin("site", pub), pub).vkey().encode()
    for line in (good[:10] + b"\n" + good[10:], good + b"\nlog " + good, good + b"\r"):
        with pytest.raises(WitnessKeyError):
            check_endorsement(_forge(ident, wv, line), "site-a", pub)


def test_an_identity_endorsing_an_origin_bound_to_another_key_is_not_trusted(hub, tmp_path):
    """Attack: site-a's identity endorses its old origin "site-a" with another key K2 (to
    start a second history under a name the witness binds to site-a's identity). The
    endorsement is site-a's to make, but the witness keeps the name bound to the identity:
    service_logs never lists K2 under "site-a", and K2's checkpoints are refused."""
    c, parties, _data = hub
    a = parties["holder"].key
    k2 = Ed25519PrivateKey.generate()
    w = Witness(tmp_path / "w", "hub", Ed25519PrivateKey.generate(), [])
    trusted = service_logs(w, "site-a", _pub(a), "site", endorsed=Verifier("site-a", _pub(k2)))
    assert all(v.public_key == _pub(a) for v in trusted)
    assert {v.name for v in trusted} == {"site-a", log_origin("site", _pub(a))}
    # a URL origin claimed with a key it is not derived from is not even endorsable
    with pytest.raises(WitnessKeyError):
        check_endorsement(
            endorse(a, _witness_v("site-a")[1], Verifier(log_origin("site", _pub(a)), _pub(k2))),
            "site-a",
            _pub(a),
        )
    # at the hub: K2 signing under "site-a" is refused (403)
    forged = _log(tmp_path / "k2", "site-a", k2)
    with pytest.raises(WitnessError) as e:
        witness_log(forged, _post(c))
    assert e.value.status == 403


def test_a_rotated_sites_log_key_is_trusted_under_its_own_origin_only(tmp_path):
    """A site whose identity was rotated after its log was made endorses its log key (the
    old one, under the origin derived from it): trusted under that origin, not the name."""
    ident, old = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    w = Witness(tmp_path / "w", "hub", Ed25519PrivateKey.generate(), [])
    log_v = Verifier(log_origin("site", _pub(old)), _pub(old))
    trusted = service_logs(w, "site-a", _pub(ident), "site", endorsed=log_v)
    assert log_v in trusted
    assert Verifier("site-a", _pub(old)) not in trusted


def test_the_endorsed_origin_decides_before_anything_is_cosigned(tmp_path):
    ident = Ed25519PrivateKey.generate()
    pub = _pub(ident)
    w = Witness(tmp_path / "w", "hub", Ed25519PrivateKey.generate(), [])
    new = Verifier(log_origin("site", pub), pub)
    assert service_logs(w, "site-a", pub, "site", endorsed=new) == [new]
    assert service_logs(w, "site-a", pub, "site", endorsed=Verifier("site-a", pub)) == [
        Verifier("site-a", pub)
    ]
    # nothing known: both, until the first is cosigned
    assert set(service_logs(w, "site-b", pub, "site")) == {
        Verifier("site-b", pub),
        Verifier(log_origin("site", pub), pub),
    }


def test_a_peer_learns_the_endorsed_log_and_a_bad_origin_teaches_nothing():
    ident = Ed25519PrivateKey.generate()
    pub = _pub(ident)
    _, wv = _witness_v("site-x")
    log_v = Verifier(log_origin("site", pub), pub)
    peer = peer_for_identity("http://site-x.test", "site-x", pub)
    resolved = resolve_peer(peer, lambda url: (200, endorse(ident, wv, log_v)), refresh=True)
    assert resolved.verifier == wv and endorsed_log("site-x", pub) == log_v
    # another identity's peer, whose endorsement claims site-x's origin: refused, not learned
    other = Ed25519PrivateKey.generate()
    _, wv2 = _witness_v("site-y")
    bad = endorse(other, wv2, Verifier(log_v.name, _pub(other)))
    peer2 = peer_for_identity("http://site-y.test", "site-y", _pub(other))
    with pytest.raises(BadCosignatureError):
        resolve_peer(peer2, lambda url: (200, bad), refresh=True)
    assert endorsed_log("site-y", _pub(other)) is None
