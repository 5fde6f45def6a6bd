"""Contracts at a real site: agree, refuse, pending/approve/reject, signatures, reservations."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import replace
from datetime import timedelta

import pytest

from dataspace.errors import NotFoundError
from dataspace.policy import contracts
from dataspace.policy.contracts import (
    Agreement,
    BadSignatureError,
    ContractError,
    OfferRefusedError,
    OfferRequest,
    accept,
    approve,
    countersign,
    list_contracts,
    load_contract,
    negotiate,
    reject,
    request_offer,
    revoke,
    verify_agreement,
)
from dataspace.policy.ledger import budget_report
from dataspace.policy.odrl import PolicyError
from dataspace.policy.terms import ContractTerms
from tests.policy.conftest import NOW, World


def req(w: World, who: str = "alice", dataset_id: str | None = None, **kw) -> OfferRequest:
    """Alice's (or Bob's) request; ``kw`` changes its terms."""
    terms = ContractTerms(
        purpose="research", epsilon=2.0, rounds=3, until=NOW + timedelta(days=7), template="mlp"
    )
    return OfferRequest(
        dataset_id=dataset_id or w.dataset_id,
        consumer=w.alice if who == "alice" else w.bob,
        terms=replace(terms, **kw),
    )


def test_agreed_contract_is_signed_stored_and_logged(world: World) -> None:
    world.publish()
    c = negotiate(world.site, req(world), world.key(), now=NOW)
    assert c.state == "agreed" and c.terms.fingerprint == world.fingerprint
    assert c.holder.public_key == world.site.identity.public_key
    assert c.consumer.key_b64 == world.alice.key_b64 and c.consumer.name == "alice"
    verify_agreement(c)  # both signatures over the canonical terms
    again = load_contract(world.site, c.terms.contract_id, now=NOW)
    assert again == c
    (ev,) = world.events("contract.agreed")
    assert ev.contract_id == c.terms.contract_id and ev.dataset_id == world.dataset_id
    assert ev.fingerprint == world.fingerprint and ev.purpose == "research"
    f = ev.fields
    assert (f["consumer"], f["template"], f["epsilon"], f["rounds"]) == (
        world.alice.key_b64,
        "mlp",
        2,
        3,
    )
    assert f["delta"] == pytest.approx(2.5e-6) and f["until"] == "2026-12-02T12:00:00Z"
    # the agreement JSON is self-contained: a third party re-verifies it
    verify_agreement(Agreement.from_json(json.loads(json.dumps(c.agreement().to_json()))))


def test_refusal_names_the_reason_and_is_logged(world: World) -> None:
    world.publish()
    with pytest.raises(OfferRefusedError, match="purpose 'marketing' is not permitted") as e:
        negotiate(world.site, req(world, purpose="marketing"), world.key(), now=NOW)
    assert e.value.exit_code == 3 and e.value.http_status == 403
    (ev,) = world.events("access.refused")
    assert "marketing" in ev.fields["reason"] and ev.fields["consumer"] == world.alice.key_b64
    assert ev.purpose == "marketing" and ev.dataset_id == world.dataset_id
    assert list_contracts(world.site) == []  # nothing changed


def test_consumer_not_in_policy_and_unknown_dataset_are_refused(world: World) -> None:
    world.publish()
    with pytest.raises(OfferRefusedError, match="not an assignee"):
        negotiate(world.site, req(world, who="bob"), world.key("bob"), now=NOW)
    with pytest.raises(OfferRefusedError, match="not enrolled"):
        negotiate(world.site, req(world, dataset_id="ds-nope"), world.key(), now=NOW)
    assert len(world.events("access.refused")) == 2


def test_no_policy_means_no_contract(world: World) -> None:
    with pytest.raises(OfferRefusedError, match="has no usage policy"):
        negotiate(world.site, req(world), world.key(), now=NOW)


def test_manual_approval_pending_then_approve(world: World) -> None:
    world.publish(manual=True)
    c = negotiate(world.site, req(world), world.key(), now=NOW)
    assert c.state == "pending" and c.holder_signature is None and c.consumer_signature
    assert world.events("contract.agreed") == []
    assert budget_report(world.site, now=NOW)[0].reserved == 0  # pending reserves nothing
    a = approve(world.site, c.terms.contract_id, now=NOW + timedelta(hours=1))
    assert a.state == "agreed"
    verify_agreement(a)
    assert budget_report(world.site, now=NOW + timedelta(hours=1))[0].reserved == 2.0
    assert [e.contract_id for e in world.events("contract.agreed")] == [c.terms.contract_id]
    with pytest.raises(ContractError, match="is agreed, not pending"):
        approve(world.site, c.terms.contract_id, now=NOW)


def test_manual_approval_reject(world: World) -> None:
    world.publish(manual=True)
    c = negotiate(world.site, req(world), world.key(), now=NOW)
    r = reject(world.site, c.terms.contract_id, "not this quarter", now=NOW)
    assert r.state == "rejected" and r.reason == "not this quarter"
    assert "not this quarter" in world.events("access.refused")[-1].fields["reason"]
    with pytest.raises(ContractError, match="is rejected, not pending"):
        approve(world.site, c.terms.contract_id, now=NOW)


def test_approval_reevaluates_the_budget(world: World) -> None:
    world.publish(manual=True)
    a = negotiate(world.site, req(world, epsilon=5.0), world.key(), now=NOW)
    b = negotiate(world.site, req(world, epsilon=5.0), world.key(), now=NOW)
    approve(world.site, a.terms.contract_id, now=NOW)
    with pytest.raises(OfferRefusedError, match="unreserved"):
        approve(world.site, b.terms.contract_id, now=NOW)
    assert load_contract(world.site, b.terms.contract_id, now=NOW).state == "pending"


def test_pending_contract_expires(world: World) -> None:
    world.publish(manual=True)
    c = negotiate(world.site, req(world), world.key(), now=NOW)
    later = NOW + timedelta(days=8)
    assert load_contract(world.site, c.terms.contract_id, now=later).state == "expired"
    with pytest.raises(ContractError, match="is expired, not pending"):
        approve(world.site, c.terms.contract_id, now=later)


def test_expired_contract_releases_its_reservation(world: World) -> None:
    world.publish()
    c = negotiate(world.site, req(world, epsilon=3.0), world.key(), now=NOW)
    assert budget_report(world.site, now=NOW)[0].reserved == 3.0
    end = c.terms.until + timedelta(seconds=1)
    assert load_contract(world.site, c.terms.contract_id, now=end).state == "expired"
    row = budget_report(world.site, now=end)[0]
    assert (row.reserved, row.spent, row.remaining) == (0.0, 0.0, 8.0)


def test_wrong_signatures_are_refused_and_logged(world: World) -> None:
    world.publish()
    offer = request_offer(world.site, req(world), now=NOW)
    assert offer.state == "offered" and offer.holder_signature
    # signed by someone who is not the named consumer
    with pytest.raises(BadSignatureError, match="the terms name consumer"):
        countersign(offer, world.key("bob"))
    signed = countersign(offer, world.key())
    # the consumer's signature over altered terms
    tampered = replace(signed, terms=replace(signed.terms, epsilon=8.0))
    with pytest.raises(BadSignatureError, match="consumer signature does not verify"):
        accept(world.site, tampered, now=NOW)
    # a consumer re-signing altered terms still lacks the holder's signature on them
    forged = countersign(replace(offer, terms=tampered.terms, holder_signature=None), world.key())
    forged = replace(forged, holder_signature=offer.holder_signature)
    with pytest.raises(BadSignatureError, match="holder signature does not verify"):
        accept(world.site, forged, now=NOW)
    bad = replace(signed, consumer_signature=base64.b64encode(b"x" * 64).decode())
    with pytest.raises(BadSignatureError):
        accept(world.site, bad, now=NOW)
    assert len(world.events("access.refused")) == 3
    assert list_contracts(world.site) == []
    c = accept(world.site, signed, consumer_name="alice", now=NOW)  # the genuine one works
    assert c.state == "agreed"
    assert accept(world.site, signed, now=NOW) == c  # a retried message changes nothing
    assert len(world.events("contract.agreed")) == 1


def test_stale_offer_is_refused(world: World) -> None:
    world.publish()
    offer = request_offer(world.site, req(world), now=NOW)
    signed = countersign(offer, world.key())
    with pytest.raises(ContractError, match="offers are open for"):
        accept(world.site, signed, now=NOW + contracts.OFFER_TTL + timedelta(seconds=1))
    with pytest.raises(ContractError, match="offers are open for"):
        accept(world.site, signed, now=NOW - timedelta(minutes=10))  # made "in the future"


def test_offer_rechecked_against_budget_at_acceptance(world: World) -> None:
    world.publish()
    o1 = countersign(request_offer(world.site, req(world, epsilon=5.0), now=NOW), world.key())
    o2 = countersign(request_offer(world.site, req(world, epsilon=5.0), now=NOW), world.key())
    accept(world.site, o1, now=NOW)
    with pytest.raises(OfferRefusedError, match="unreserved"):
        accept(world.site, o2, now=NOW)
    assert [c.terms.contract_id for c in list_contracts(world.site, now=NOW)] == [o1.contract_id]


def test_terms_round_trip_and_reject_non_canonical(world: World) -> None:
    world.publish()
    c = negotiate(world.site, req(world), world.key(), now=NOW)
    j = c.terms.to_json()
    assert contracts.Terms.from_json(j) == c.terms
    with pytest.raises(ContractError, match="canonical"):
        contracts.Terms.from_json({**j, "until": "2026-12-02T12:00:00+00:00"})
    with pytest.raises(ContractError, match="unexpected fields"):
        contracts.Terms.from_json({**j, "extra": 1})


def test_list_contracts_by_consumer(world: World) -> None:
    world.publish(consumers=[world.alice.key_b64, world.bob.key_b64])
    a = negotiate(world.site, req(world), world.key(), now=NOW)
    b = negotiate(world.site, req(world, who="bob"), world.key("bob"), now=NOW)

    def ids(**kw) -> list[str]:
        return [c.terms.contract_id for c in list_contracts(world.site, **kw)]

    assert set(ids()) == {a.terms.contract_id, b.terms.contract_id}
    assert ids(consumer=world.bob) == [b.terms.contract_id]
    assert ids(consumer=world.alice.key_b64) == [a.terms.contract_id]
    with pytest.raises(NotFoundError):
        load_contract(world.site, "no-such-contract")


def test_revoke_frees_the_reservation(world: World) -> None:
    world.publish()
    c = negotiate(world.site, req(world, epsilon=8.0), world.key(), now=NOW)
    with pytest.raises(OfferRefusedError):
        negotiate(world.site, req(world, epsilon=1.0), world.key(), now=NOW)
    assert revoke(world.site, c.terms.contract_id, now=NOW).state == "revoked"
    assert negotiate(world.site, req(world, epsilon=1.0), world.key(), now=NOW).state == "agreed"


def test_policy_cannot_drop_below_what_is_committed(world: World) -> None:
    world.publish()
    negotiate(world.site, req(world, epsilon=5.0), world.key(), now=NOW)
    with pytest.raises(PolicyError, match="would promise less"):
        world.publish(epsilon=4.0)
    world.publish(epsilon=5.0)  # exactly what is committed is fine
    assert budget_report(world.site, now=NOW)[0].remaining == 0.0


def test_policy_must_match_the_dataset_and_the_site(world: World) -> None:
    with pytest.raises(PolicyError, match="fingerprint"):
        world.publish(fingerprint="0" * 64)
    with pytest.raises(PolicyError, match="a site publishes only its own policies"):
        world.publish(assigner=world.alice.key_b64)
    pub = world.publish()
    (ev,) = world.events("policy.published")
    assert ev.fields["policy_sha256"] == pub.policy_sha256
    assert (ev.fields["epsilon"], ev.fields["delta"]) == (8, 1e-5)
    assert ev.fields["purposes"] == ["benchmarking", "research"]


@pytest.mark.slow
def test_reservations_never_exceed_the_budget(world: World) -> None:
    """Random requests, approvals, revocations and expiries: reserved + spent <= budget."""
    world.publish(epsilon=6.0, delta=1e-5, max_rounds=20)
    rng = random.Random(4)
    agreed = []
    now = NOW
    for _ in range(18):
        now += timedelta(hours=rng.choice([0, 1, 30]))
        eps = rng.choice([0.5, 1.0, 1.5, 2.5, 4.0])
        until = now + timedelta(hours=rng.choice([2, 48, 200]))
        action = rng.random()
        if action < 0.75:
            try:
                c = negotiate(
                    world.site, req(world, epsilon=eps, until=until), world.key(), now=now
                )
                agreed.append(c)
            except OfferRefusedError:
                pass
        elif agreed:
            c = rng.choice(agreed)
            if load_contract(world.site, c.terms.contract_id, now=now).state == "agreed":
                revoke(world.site, c.terms.contract_id, now=now)
        (row,) = budget_report(world.site, now=now)
        assert row.reserved + row.spent <= row.budget + 1e-9
        assert row.delta_reserved + row.delta_spent <= row.delta_budget * (1 + 1e-9)
        live = [c for c in list_contracts(world.site, now=now) if c.state == "agreed"]
        assert sum(c.terms.epsilon for c in live) <= 6.0 + 1e-9
    assert len(agreed) >= 3  # the walk did exercise agreements


def test_offer_request_json_round_trip(world: World) -> None:
    r = req(world, delta=1e-6)
    assert OfferRequest.from_json(json.loads(json.dumps(r.to_json()))) == r
    with pytest.raises(ContractError, match=r"missing fields \['epsilon'\]"):
        OfferRequest.from_json({k: v for k, v in r.to_json().items() if k != "epsilon"})
    with pytest.raises(ContractError, match=r"offer request: .*no time zone"):
        OfferRequest.from_json({**r.to_json(), "until": "2027-01-01T00:00:00"})
    with pytest.raises(ContractError, match="unknown role"):
        OfferRequest.from_json({**r.to_json(), "consumer": {**world.alice.to_json(), "role": "x"}})


def test_bad_policy_is_refused_logged_and_changes_nothing(world: World) -> None:
    from dataspace.policy.policies import publish_policy

    good = world.publish().policy.to_jsonld()
    bad = json.loads(json.dumps(good))
    bad["permission"][0]["constraint"][0]["leftOperand"] = "spatial"
    with pytest.raises(PolicyError, match=r"\$\.permission\[0\]\.constraint\[0\]\.leftOperand"):
        publish_policy(world.site, bad)
    with pytest.raises(PolicyError, match="not JSON"):
        publish_policy(world.site, b'{"@type": ')
    with pytest.raises(NotFoundError, match="not enrolled"):
        publish_policy(world.site, good, dataset_id="no-such-dataset")
    refused = world.events("access.refused")
    assert len(refused) == 3
    assert refused[0].dataset_id == world.dataset_id and "spatial" in refused[0].fields["reason"]
    assert refused[1].fields["operation"] == "policy.publish"
    assert len(world.events("policy.published")) == 1
