"""Dataspace Protocol 2025-1 messages: the JSON the connector sends, and checks of what it reads.

Plain JSON in the DSP context (``@context: ["https://w3id.org/dspace/2025/1/context.jsonld"]``),
shaped as the specification's JSON schemas want (DSP 2025-1, "Common", "Catalog Protocol",
"Contract Negotiation Protocol"; the schemas are vendored in tests/vectors/dsp and the tests
validate every message here against them). Incoming messages are checked by hand, field
by field, for what the schemas require and for what this connector needs (bounded
identifiers, one known ``@type``): the schemas are a test dependency, and a check here
names the field at fault.

Our profile adds properties that DSP leaves open (JSON-LD: full IRIs under
:data:`EXT`): the exact terms both parties sign (``dataspace/contract/v1``, RFC 8785) and
the two Ed25519 signatures over them, so that a DSP negotiation ends in the same signed
contract as ``POST /v1/offers`` + countersign (docs/dsp.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dataspace.errors import DataspaceError, NotFoundError

#: DSP 2025-1 JSON-LD context (every message names it)
DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
VERSION = "2025-1"
#: our extension properties (full IRIs, so no context is needed to read them)
EXT = "https://w3id.org/dataspace/dsp#"
TERMS = EXT + "terms"
HOLDER_SIGNATURE = EXT + "holderSignature"
CONSUMER_SIGNATURE = EXT + "consumerSignature"
#: the provider's latest message of a negotiation, for a consumer that polls
PROVIDER_MESSAGE = EXT + "providerMessage"
REASON = EXT + "reason"

#: DSP 2025-1 "Contract Negotiation Protocol", States
STATES = ("REQUESTED", "OFFERED", "ACCEPTED", "AGREED", "VERIFIED", "FINALIZED", "TERMINATED")
TERMINAL = ("FINALIZED", "TERMINATED")
#: longest providerPid / consumerPid / callback we store (a URN or URL)
MAX_ID = 256


class DspError(DataspaceError):
    """A DSP message this connector refuses (400 unless a subclass says otherwise)."""

    code = "dsp_error"


class MalformedMessageError(DspError):
    """A message that is not what its DSP schema describes (names the field)."""

    code = "malformed_message"


class UnsupportedFilterError(DspError):
    """A catalog request with a filter expression (DSP catalog binding: 400)."""

    code = "unsupported_filter"


class InvalidTransitionError(DspError):
    """A message the negotiation's state does not allow (DSP negotiation binding: 400)."""

    code = "invalid_state_transition"


class CounterOfferError(DspError):
    """A consumer's counter-offer: this connector negotiates on its published offers only."""

    code = "counter_offer_not_accepted"


class UnknownOfferError(DspError):
    """An offer id or target the provider did not publish (DSP: it MUST answer an error)."""

    code = "unknown_offer"


class DuplicateNegotiationError(DspError):
    """A consumerPid the same consumer already used for another negotiation."""

    http_status = 409
    code = "duplicate_consumer_pid"


class NegotiationNotFoundError(NotFoundError):
    """No negotiation of this caller under that providerPid (DSP: 404, also when it is
    someone else's)."""

    code = "negotiation_not_found"


# --- checks of incoming messages ------------------------------------------------------


def _object(doc: Any, msg_type: str) -> dict[str, Any]:
    """``doc`` as a DSP message of ``@type`` ``msg_type`` (DSP schemas: @context, @type)."""
    if not isinstance(doc, dict):
        raise MalformedMessageError(f"a {msg_type} is a JSON object, got {type(doc).__name__}")
    ctx = doc.get("@context")
    if not (isinstance(ctx, list) and all(isinstance(c, str) for c in ctx) and DSP_CONTEXT in ctx):
        raise MalformedMessageError(f"@context must be a list of strings naming {DSP_CONTEXT}")
    if doc.get("@type") != msg_type:
        raise MalformedMessageError(f"@type must be {msg_type!r}, got {doc.get('@type')!r}")
    return doc


def _id(doc: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    v = doc.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip() or len(v) > MAX_ID:
        raise MalformedMessageError(f"{key} must be a non-empty string of at most {MAX_ID}")
    return v


@dataclass(frozen=True)
class ContractRequest:
    """A ContractRequestMessage (DSP 2025-1, "Contract Request Message")."""

    consumer_pid: str
    provider_pid: str | None
    offer: dict[str, Any]
    callback: str | None


def parse_catalog_request(doc: Any) -> None:
    """Check a CatalogRequestMessage; a (non-empty) filter is not supported (binding: 400)."""
    msg = _object(doc, "CatalogRequestMessage")
    f = msg.get("filter")
    if f is not None and not isinstance(f, list):
        raise MalformedMessageError("filter must be an array")
    if f:
        raise UnsupportedFilterError(
            "this catalog service supports no filter expression: send no filter (or an "
            "empty one) and filter the catalog on your side"
        )


def parse_contract_request(doc: Any) -> ContractRequest:
    """Check a ContractRequestMessage (schema: consumerPid, offer; callbackAddress or
    providerPid)."""
    msg = _object(doc, "ContractRequestMessage")
    consumer_pid = _id(msg, "consumerPid")
    provider_pid = _id(msg, "providerPid", required=False)
    callback = _id(msg, "callbackAddress", required=False)
    if (callback is None) == (provider_pid is None):
        raise MalformedMessageError(
            "give callbackAddress (a new negotiation) or providerPid (an existing one), "
            "exactly one of them"
        )
    if callback is not None and not callback.startswith(("https://", "http://")):
        raise MalformedMessageError("callbackAddress must be an https:// (or http://) URL")
    offer = msg.get("offer")
    if not isinstance(offer, dict) or offer.get("@type") != "Offer":
        raise MalformedMessageError("offer must be an ODRL Offer object (@type Offer)")
    if not isinstance(offer.get("@id"), str) or not offer["@id"]:
        raise MalformedMessageError("offer.@id must name the offer of the catalog")
    if not any(isinstance(offer.get(k), list) and offer[k] for k in ("permission", "prohibition")):
        raise MalformedMessageError("offer needs a permission (a non-empty array)")
    assert consumer_pid is not None
    return ContractRequest(consumer_pid, provider_pid, offer, callback)


@dataclass(frozen=True)
class NegotiationMessage:
    """A consumer's message about an existing negotiation: event, verification, termination."""

    provider_pid: str
    consumer_pid: str
    event_type: str | None = None
    consumer_signature: str | None = None
    reason: tuple[str, ...] = ()


def parse_negotiation_message(doc: Any, msg_type: str) -> NegotiationMessage:
    """Check a ContractNegotiationEventMessage, ContractAgreementVerificationMessage or
    ContractNegotiationTerminationMessage (all: providerPid, consumerPid)."""
    msg = _object(doc, msg_type)
    provider_pid, consumer_pid = _id(msg, "providerPid"), _id(msg, "consumerPid")
    assert provider_pid is not None and consumer_pid is not None
    event = None
    if msg_type == "ContractNegotiationEventMessage":
        event = msg.get("eventType")
        if event not in ("ACCEPTED", "FINALIZED"):
            raise MalformedMessageError(f"eventType must be ACCEPTED or FINALIZED, got {event!r}")
    sig = msg.get(CONSUMER_SIGNATURE)
    if sig is not None and (not isinstance(sig, str) or len(sig) > 200):
        raise MalformedMessageError(f"{CONSUMER_SIGNATURE} must be a base64 signature")
    reason = msg.get("reason", [])
    if not isinstance(reason, list):
        raise MalformedMessageError("reason must be an array")
    texts = tuple(str(r)[:500] for r in reason[:10])
    return NegotiationMessage(provider_pid, consumer_pid, event, sig, texts)


# --- what the connector sends ---------------------------------------------------------


def version_response(service_id: str) -> dict[str, Any]:
    """The ``/.well-known/dspace-version`` answer (DSP 2025-1, "Exposure of Versions"):
    2025-1 over HTTPS at the service root, identities as our key URNs, requests
    authenticated by RFC 9421 signatures (docs/dsp.md)."""
    return {
        "protocolVersions": [
            {
                "version": VERSION,
                "path": "/",
                "binding": "HTTPS",
                "serviceId": service_id,
                "identifierType": "urn:dataspace:key",
                "auth": {
                    "protocol": "RFC9421",
                    "version": "1",
                    "profile": ["ed25519", "content-digest-sha-256", "keyid-base64"],
                },
            }
        ]
    }


def _base(msg_type: str) -> dict[str, Any]:
    return {"@context": [DSP_CONTEXT], "@type": msg_type}


def negotiation(provider_pid: str, consumer_pid: str, state: str, **ext: Any) -> dict[str, Any]:
    """A ContractNegotiation (the ACK of every negotiation message); ``ext``: our
    extension properties, keyed by full IRI."""
    if state not in STATES:
        raise ValueError(f"unknown DSP state {state!r}")
    return (
        _base("ContractNegotiation")
        | {
            "providerPid": provider_pid,
            "consumerPid": consumer_pid,
            "state": state,
        }
        | ext
    )


def negotiation_error(
    provider_pid: str, consumer_pid: str, code: str, reasons: list[str]
) -> dict[str, Any]:
    """A ContractNegotiationError (binding: the body of every 4xx of a negotiation)."""
    return _base("ContractNegotiationError") | {
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "code": code,
        "reason": reasons or [code],
    }


def catalog_error(code: str, reasons: list[str]) -> dict[str, Any]:
    """A CatalogError (catalog binding: the body of every error of the catalog service)."""
    return _base("CatalogError") | {"code": code, "reason": reasons or [code]}


def agreement_message(
    provider_pid: str,
    consumer_pid: str,
    agreement: dict[str, Any],
    terms: dict[str, Any],
    holder_signature: str,
) -> dict[str, Any]:
    """A ContractAgreementMessage: the ODRL Agreement, and (our profile) the exact terms
    with the holder's signature, which the consumer countersigns."""
    return _base("ContractAgreementMessage") | {
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "agreement": agreement,
        TERMS: terms,
        HOLDER_SIGNATURE: holder_signature,
    }


def offer_message(
    provider_pid: str, consumer_pid: str, offer: dict[str, Any], terms: dict[str, Any]
) -> dict[str, Any]:
    """A ContractOfferMessage: terms the holder will approve by hand once countersigned."""
    return _base("ContractOfferMessage") | {
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "offer": offer,
        TERMS: terms,
    }


def event_message(provider_pid: str, consumer_pid: str, event: str) -> dict[str, Any]:
    """A ContractNegotiationEventMessage (the provider sends FINALIZED)."""
    return _base("ContractNegotiationEventMessage") | {
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "eventType": event,
    }


def termination_message(
    provider_pid: str, consumer_pid: str, code: str, reasons: list[str]
) -> dict[str, Any]:
    """A ContractNegotiationTerminationMessage."""
    return _base("ContractNegotiationTerminationMessage") | {
        "providerPid": provider_pid,
        "consumerPid": consumer_pid,
        "code": code,
        "reason": reasons or [code],
    }
