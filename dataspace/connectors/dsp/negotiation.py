"""The provider's side of DSP contract negotiation, mapped onto the contracts of dataspace.policy.

DSP 2025-1 "Contract Negotiation Protocol" (states, state machine) over today's flow
(``dataspace.policy.contracts``: offer, holder approval, countersignature, agreement).
Nothing here signs, stores or logs a contract itself: :func:`dataspace.policy.request_offer`,
:func:`~dataspace.policy.accept`, :func:`~dataspace.policy.reject` and
:func:`~dataspace.policy.revoke` do, exactly as for ``POST /v1/offers`` and
``/countersign``, so a DSP negotiation ends in the same signed contract, the same log
events (``contract.agreed``, ``access.refused``) and the same ledger reservation.

==========================  =================================  ===============================
consumer sends              policy call                        DSP state after
==========================  =================================  ===============================
ContractRequestMessage      ``request_offer`` (policy check;   REQUESTED (the ACK), then
                            holder signs, or stores pending)   AGREED (automatic approval:
                                                               holder-signed terms) or
                                                               OFFERED (manual approval)
event ACCEPTED (OFFERED)    ``accept`` of the pending terms    ACCEPTED; the holder approves
  + consumer signature      (stores the countersignature)      (``/v1/admin/.../approve``,
                                                               CLI): AGREED
AgreementVerification       ``accept`` (both signatures,       VERIFIED, then FINALIZED
  (AGREED) + consumer sig   policy again: contract.agreed,     (the provider's event)
                            epsilon reserved)
Termination                 ``reject`` a pending contract,     TERMINATED
                            ``revoke`` one agreed but not yet
                            verified; nothing otherwise
==========================  =================================  ===============================

The consumer's signature (Ed25519 over the RFC 8785 bytes of the terms, as for
``/countersign``) travels in our extension property ``CONSUMER_SIGNATURE`` of the event
or verification message. A policy refusal at request or verification (the budget moved,
the offer's 15 minutes passed) ends the negotiation: TERMINATED, with the reason.
Messages on a negotiation that is not the caller's are answered as if it did not exist
(DSP binding, "Unauthorized Access": 404).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import duckdb

from dataspace import policy
from dataspace.connectors.dsp import messages as msgs
from dataspace.connectors.dsp import store
from dataspace.connectors.dsp.messages import (
    ContractRequest,
    CounterOfferError,
    DuplicateNegotiationError,
    InvalidTransitionError,
    MalformedMessageError,
    NegotiationMessage,
    NegotiationNotFoundError,
    UnknownOfferError,
)
from dataspace.connectors.dsp.offers import (
    agreement,
    dataset_of_offer,
    offer_of_terms,
    requested_terms,
)
from dataspace.connectors.dsp.store import Negotiation
from dataspace.errors import NotFoundError
from dataspace.policy.contracts import BadSignatureError, ContractError
from dataspace.site.folder import Site
from dataspace.site.identity import Identity

CONSUMER_WITHDREW = "withdrawn by the consumer (DSP termination)"


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def start(
    site: Site, req: ContractRequest, consumer: Identity, now: datetime | None = None
) -> tuple[Negotiation, dict[str, Any]]:
    """A new negotiation from a ContractRequestMessage: (the stored negotiation, the ACK).

    Refusals of the policy (:class:`~dataspace.policy.OfferRefusedError`) are raised and
    logged by the policy library, as for ``POST /v1/offers``; an unknown dataset or offer
    is refused before the policy is asked (nothing logged, nothing stored).
    """
    now = _now(now)
    if req.provider_pid is not None:
        raise MalformedMessageError("a new negotiation's request carries no providerPid")
    if store.find(site, consumer.key_b64, req.consumer_pid) is not None:
        raise DuplicateNegotiationError(
            f"consumerPid {req.consumer_pid[:200]!r} already names a negotiation of yours"
        )
    dataset_id = dataset_of_offer(req.offer)
    try:
        published = policy.current_policy(site, dataset_id)
    except NotFoundError as e:
        raise UnknownOfferError(f"dataset {dataset_id[:200]!r} has no offer in this catalog") from e
    if published.dataset_id != dataset_id:  # current_policy also finds a dataset by name
        raise UnknownOfferError("offer.target must be a dataset id of this catalog")
    terms = requested_terms(req.offer, published, dataset_id, consumer.key_b64)
    offer = policy.request_offer(
        site, policy.OfferRequest(dataset_id=dataset_id, consumer=consumer, terms=terms), now
    )
    pp = "urn:uuid:" + str(uuid.uuid4())
    t = offer.terms
    if offer.state == "pending":
        state = "OFFERED"
        message = msgs.offer_message(pp, req.consumer_pid, offer_of_terms(t), t.to_json())
    else:
        assert offer.holder_signature is not None
        state = "AGREED"
        message = msgs.agreement_message(
            pp, req.consumer_pid, agreement(t), t.to_json(), offer.holder_signature
        )
    n = Negotiation(
        provider_pid=pp,
        consumer_pid=req.consumer_pid,
        consumer=consumer.key_b64,
        consumer_name=consumer.name,
        dataset_id=dataset_id,
        contract_id=t.contract_id,
        state=state,
        callback=req.callback,
        message=message,
        reason=None,
        created=now,
        updated=now,
    )
    try:
        store.insert(site, n)
    except duckdb.ConstraintException as e:  # the same consumerPid, raced
        if offer.state == "pending":
            policy.reject(site, t.contract_id, CONSUMER_WITHDREW, now)
        raise DuplicateNegotiationError(
            f"consumerPid {req.consumer_pid[:200]!r} already names a negotiation of yours"
        ) from e
    return n, msgs.negotiation(pp, req.consumer_pid, "REQUESTED")


def _contract(site: Site, n: Negotiation, now: datetime) -> policy.Contract | None:
    try:
        return policy.load_contract(site, n.contract_id, now)
    except NotFoundError:
        return None  # an automatic offer is stored only once countersigned


def sync(site: Site, n: Negotiation, now: datetime | None = None) -> Negotiation:
    """``n`` with what happened to its contract outside DSP: the holder approved it
    (ACCEPTED -> AGREED), rejected it or it expired (-> TERMINATED)."""
    now = _now(now)
    if n.state not in ("OFFERED", "ACCEPTED"):
        return n
    c = _contract(site, n, now)
    if c is None:
        return n
    if c.state == "agreed" and n.state == "ACCEPTED":
        assert c.holder_signature is not None
        message = msgs.agreement_message(
            n.provider_pid, n.consumer_pid, agreement(c.terms), c.terms.to_json(),
            c.holder_signature,
        )  # fmt: skip
        store.move(site, n.provider_pid, ("ACCEPTED",), "AGREED", now, message=message)
    elif c.state in ("rejected", "revoked", "expired"):
        reason = f"contract {c.state}" + (f": {c.reason}" if c.reason else "")
        store.move(site, n.provider_pid, ("OFFERED", "ACCEPTED"), "TERMINATED", now, reason)
    return store.get(site, n.provider_pid)


def mine(site: Site, provider_pid: str, consumer_key: str) -> Negotiation:
    """The caller's negotiation ``provider_pid``, synced; someone else's is not found."""
    n = store.get(site, provider_pid)
    if n.consumer != consumer_key:
        raise NegotiationNotFoundError(f"no negotiation {provider_pid[:200]!r} of yours here")
    return sync(site, n)


def view(n: Negotiation) -> dict[str, Any]:
    """The ContractNegotiation a consumer reads (``GET /negotiations/:providerPid``), with
    the provider's latest message for a consumer that polls instead of a callback."""
    ext: dict[str, Any] = {}
    if n.message is not None and n.state in ("OFFERED", "AGREED"):
        ext[msgs.PROVIDER_MESSAGE] = n.message
    if n.state == "FINALIZED":
        ext[msgs.PROVIDER_MESSAGE] = msgs.event_message(n.provider_pid, n.consumer_pid, "FINALIZED")
    if n.reason:
        ext[msgs.REASON] = n.reason
    return msgs.negotiation(n.provider_pid, n.consumer_pid, n.state, **ext)


def _same_pids(n: Negotiation, m: NegotiationMessage) -> None:
    if m.provider_pid != n.provider_pid or m.consumer_pid != n.consumer_pid:
        raise MalformedMessageError(
            "providerPid and consumerPid of the message must be those of the negotiation "
            f"({n.provider_pid}, {n.consumer_pid[:200]})"
        )


def _terms(n: Negotiation) -> policy.Terms:
    assert n.message is not None
    return policy.Terms.from_json(n.message[msgs.TERMS])


def counter_offer(site: Site, provider_pid: str, consumer_key: str) -> None:
    """``POST /negotiations/:pid/request``: this provider accepts no counter-offer."""
    n = mine(site, provider_pid, consumer_key)
    if n.state in msgs.TERMINAL:
        raise InvalidTransitionError(f"negotiation {provider_pid} is {n.state}")
    raise CounterOfferError(
        "this provider does not accept counter-offers: terminate this negotiation and "
        "request the published offer with the terms you want (POST /negotiations/request)"
    )


def accepted(
    site: Site, provider_pid: str, m: NegotiationMessage, consumer: Identity,
    now: datetime | None = None,
) -> Negotiation:  # fmt: skip
    """A consumer's ContractNegotiationEventMessage: ACCEPTED of an OFFERED negotiation
    (the pending terms countersigned). FINALIZED from a consumer is an error (DSP)."""
    now = _now(now)
    n = mine(site, provider_pid, consumer.key_b64)
    _same_pids(n, m)
    if m.event_type != "ACCEPTED":
        raise InvalidTransitionError("a consumer may not send FINALIZED (DSP 2025-1)")
    if n.state != "OFFERED":
        raise InvalidTransitionError(
            f"negotiation is {n.state}: ACCEPTED answers an OFFERED negotiation only"
        )
    if not m.consumer_signature:
        raise MalformedMessageError(
            f"ACCEPTED must carry {msgs.CONSUMER_SIGNATURE}: your Ed25519 signature over "
            "the RFC 8785 bytes of the offer's terms"
        )
    pending = policy.Agreement(_terms(n), "pending", None, m.consumer_signature)
    policy.accept(site, pending, consumer_name=consumer.name, now=now)
    if not store.move(site, provider_pid, ("OFFERED",), "ACCEPTED", now):
        raise InvalidTransitionError(f"negotiation {provider_pid} moved meanwhile")
    return sync(site, store.get(site, provider_pid), now)


def verified(
    site: Site, provider_pid: str, m: NegotiationMessage, consumer: Identity,
    now: datetime | None = None,
) -> tuple[Negotiation, policy.Contract]:  # fmt: skip
    """A ContractAgreementVerificationMessage of an AGREED negotiation: the contract is
    agreed (``accept``: both signatures, the policy again, contract.agreed, epsilon
    reserved) and the negotiation FINALIZED. A policy refusal terminates it."""
    now = _now(now)
    n = mine(site, provider_pid, consumer.key_b64)
    _same_pids(n, m)
    if n.state != "AGREED":
        raise InvalidTransitionError(
            f"negotiation is {n.state}: verification answers an AGREED negotiation only"
        )
    assert n.message is not None
    existing = _contract(site, n, now)
    if existing is not None and existing.state == "agreed":
        contract = existing  # manual approval: agreed when the holder approved
    else:
        if not m.consumer_signature:
            raise MalformedMessageError(
                f"the verification must carry {msgs.CONSUMER_SIGNATURE}: your Ed25519 "
                "signature over the RFC 8785 bytes of the agreement's terms"
            )
        signed = policy.Agreement(
            _terms(n), "offered", n.message[msgs.HOLDER_SIGNATURE], m.consumer_signature
        )
        try:
            contract = policy.accept(site, signed, consumer_name=consumer.name, now=now)
        except BadSignatureError:
            raise  # the consumer may retry with a good signature: no transition
        except ContractError as e:
            store.move(site, provider_pid, ("AGREED",), "TERMINATED", now, str(e)[:500])
            raise
    store.move(site, provider_pid, ("AGREED",), "VERIFIED", now)
    store.move(site, provider_pid, ("VERIFIED",), "FINALIZED", now)
    return store.get(site, provider_pid), contract


def terminated(
    site: Site, provider_pid: str, m: NegotiationMessage, consumer: Identity,
    now: datetime | None = None,
) -> Negotiation:  # fmt: skip
    """A consumer's ContractNegotiationTerminationMessage: a pending contract is rejected,
    one agreed by the holder but not yet verified is revoked (both logged, as the holder's
    own reject and revoke are); a finalized negotiation cannot be terminated."""
    now = _now(now)
    n = mine(site, provider_pid, consumer.key_b64)
    _same_pids(n, m)
    if n.state in (*msgs.TERMINAL, "VERIFIED"):
        raise InvalidTransitionError(f"negotiation {provider_pid} is {n.state}")
    c = _contract(site, n, now)
    said = "; ".join(m.reason)[:300]
    reason = CONSUMER_WITHDREW + (f": {said}" if said else "")
    if not store.move(site, provider_pid, (n.state,), "TERMINATED", now, reason):
        raise InvalidTransitionError(f"negotiation {provider_pid} moved meanwhile")
    if c is not None and c.state == "pending":
        policy.reject(site, c.terms.contract_id, reason, now)
    elif c is not None and c.state == "agreed":
        policy.revoke(site, c.terms.contract_id, reason, now)
    return store.get(site, provider_pid)
