"""Events: canonical JSON, signed by the actor, parsed back."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit.events import (
    KINDS,
    EventError,
    EventSignatureError,
    UntrustedActorError,
    make_event,
    parse_event,
    signed_message,
    verify_event,
)
from dataspace.audit.note import raw_public


def test_every_kind_round_trips() -> None:
    key = Ed25519PrivateKey.generate()
    for kind in KINDS:
        e = make_event(
            kind,
            key,
            "site-a",
            dataset_id="d",
            fingerprint="ff",
            contract_id="c",
            purpose="research",
            time=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
            epsilon=0.5,
            nested={"sig": "x", "list": [1, 2.5, None]},
        )
        assert rfc8785.dumps(json.loads(e)) == e  # canonical
        ev = verify_event(e, {raw_public(key)})
        assert ev.kind == kind and ev.actor_name == "site-a" and ev.actor_key == raw_public(key)
        assert ev.get("time") == "2026-11-25T12:00:00Z" and ev.details["epsilon"] == 0.5
        assert ev.dataset_id == "d" and ev.contract_id == "c" and ev.purpose == "research"
        obj = json.loads(e)
        del obj["sig"]
        assert signed_message(e, json.loads(e)["sig"]) == rfc8785.dumps(obj)


def test_tampering_is_detected() -> None:
    key = Ed25519PrivateKey.generate()
    e = make_event("round.started", key, "s", contract_id="c1", epsilon=0.25, round=1)
    with pytest.raises(EventSignatureError):
        verify_event(e.replace(b'"epsilon":0.25', b'"epsilon":0.35'))
    other = make_event("round.started", Edkey := Ed25519PrivateKey.generate(), "s", epsilon=0.25)
    sig = json.loads(other)["sig"]
    with pytest.raises(EventSignatureError) as bad:
        verify_event(e.replace(json.loads(e)["sig"].encode(), sig.encode()))
    assert not isinstance(bad.value, UntrustedActorError)  # the auditor's rule is by type
    with pytest.raises(UntrustedActorError, match="not a trusted key"):
        verify_event(e, {raw_public(Edkey)})
    with pytest.raises(EventError, match="canonical"):
        verify_event(e.replace(b'{"actor"', b'{ "actor"'))
    with pytest.raises(EventError):
        verify_event(b"not json")
    with pytest.raises(EventError):
        parse_event(b'{"v":1,"kind":"nope"}')


def test_bad_arguments() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(EventError, match="unknown event kind"):
        make_event("dataset.deleted", key, "s")
    with pytest.raises(EventError, match="reserved"):
        make_event("dataset.enrolled", key, "s", sig="x")
    with pytest.raises(EventError, match="timezone"):
        make_event("dataset.enrolled", key, "s", time=datetime(2026, 1, 1))
    with pytest.raises(EventError):
        make_event("dataset.enrolled", key, "s", bad=float("nan"))
