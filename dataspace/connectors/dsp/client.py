"""The consumer's side of DSP with this connector: messages to send, and the callback client.

A consumer (our CLI has no server to receive callbacks) negotiates by polling:

1. ``POST /catalog/request`` (or ``GET /catalog/datasets/:id``): the dataset's Offer;
2. ``POST /negotiations/request`` with :func:`request_message` (the Offer's ``@id`` and
   ``target``, and the terms asked, :func:`ask`): 201, state REQUESTED;
3. ``GET /negotiations/:providerPid`` until the state is AGREED (automatic approval) or
   OFFERED (the holder approves by hand); the provider's message is in the answer
   (``PROVIDER_MESSAGE``): a ContractAgreementMessage or ContractOfferMessage with the
   exact terms;
4. OFFERED: ``POST .../events`` with :func:`accepted_message` (countersigned), then poll
   until AGREED (the holder approved);
5. AGREED: ``POST .../agreement/verification`` with :func:`verification_message`
   (countersigned, after checking the holder's signature): the contract is agreed and the
   negotiation FINALIZED.

Every request is signed with RFC 9421 (:class:`dataspace.auth.httpsig.HttpSigAuth`): the
key that signs is the consumer. :func:`post_callback` is what a provider uses to send a
message to a consumer that named a ``callbackAddress`` (DSP "Consumer Path Bindings").
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.auth.httpsig import HttpSigAuth
from dataspace.connectors.dsp import messages as msgs
from dataspace.policy import ContractTerms
from dataspace.policy.contracts import Terms, sign_terms, verify_signature
from dataspace.policy.odrl import format_datetime
from dataspace.site.identity import public_bytes

XSD = "http://www.w3.org/2001/XMLSchema#"
#: the path under the callbackAddress of each provider message (DSP consumer bindings)
CALLBACK_PATHS = {
    "ContractAgreementMessage": "agreement",
    "ContractOfferMessage": "offers",
    "ContractNegotiationEventMessage": "events",
    "ContractNegotiationTerminationMessage": "termination",
}


def ask(offer: dict[str, Any], dataset: str, terms: ContractTerms) -> dict[str, Any]:
    """The request offer for ``terms`` on a catalog Offer (``@id``) of ``dataset`` (its @id)."""
    cs: list[dict[str, Any]] = [
        {"leftOperand": "purpose", "operator": "eq", "rightOperand": terms.purpose},
        {
            "leftOperand": "epsilon",
            "operator": "lteq",
            "rightOperand": {"@value": repr(terms.epsilon), "@type": XSD + "decimal"},
        },
        {
            "leftOperand": "maxRounds",
            "operator": "lteq",
            "rightOperand": {"@value": str(terms.rounds), "@type": XSD + "integer"},
        },
        {
            "leftOperand": "dateTime",
            "operator": "lteq",
            "rightOperand": {"@value": format_datetime(terms.until), "@type": XSD + "dateTime"},
        },
    ]
    if terms.delta is not None:
        cs.append(
            {
                "leftOperand": "delta",
                "operator": "lteq",
                "rightOperand": {"@value": repr(terms.delta), "@type": XSD + "decimal"},
            }
        )
    if terms.template is not None:
        cs.append(
            {"leftOperand": "modelTemplate", "operator": "eq", "rightOperand": terms.template}
        )
    return {
        "@id": offer["@id"],
        "@type": "Offer",
        "target": dataset,
        "permission": [{"action": terms.action, "constraint": cs}],
    }


def request_message(
    consumer_pid: str, offer: dict[str, Any], callback: str | None = None
) -> dict[str, Any]:
    """An initiating ContractRequestMessage. DSP wants a ``callbackAddress`` (or a
    providerPid); a consumer that polls names where it would listen, or any URL of its
    own: this provider posts there only best-effort and never needs an answer."""
    return {
        "@context": [msgs.DSP_CONTEXT],
        "@type": "ContractRequestMessage",
        "consumerPid": consumer_pid,
        "offer": offer,
        "callbackAddress": callback or "https://consumer.invalid/dsp",
    }


def _countersign(message: dict[str, Any], key: Ed25519PrivateKey) -> tuple[Terms, str]:
    """Check a provider message's terms (ours to sign, the holder's signature if any) and
    sign them; (terms, base64 signature)."""
    terms = Terms.from_json(message[msgs.TERMS])
    mine = base64.b64encode(public_bytes(key)).decode()
    if terms.consumer != mine:
        raise msgs.MalformedMessageError(f"the terms name consumer {terms.consumer}, not this key")
    holder_sig = message.get(msgs.HOLDER_SIGNATURE)
    if holder_sig is not None:
        verify_signature(terms, terms.holder, holder_sig, "holder")
    return terms, sign_terms(terms, key)


def accepted_message(offer_message: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """ContractNegotiationEventMessage ACCEPTED of a ContractOfferMessage, countersigned."""
    _, sig = _countersign(offer_message, key)
    return msgs.event_message(
        offer_message["providerPid"], offer_message["consumerPid"], "ACCEPTED"
    ) | {msgs.CONSUMER_SIGNATURE: sig}


def verification_message(
    agreement_message: dict[str, Any], key: Ed25519PrivateKey
) -> dict[str, Any]:
    """ContractAgreementVerificationMessage of a ContractAgreementMessage, countersigned
    after checking the holder's signature over the same terms."""
    _, sig = _countersign(agreement_message, key)
    return {
        "@context": [msgs.DSP_CONTEXT],
        "@type": "ContractAgreementVerificationMessage",
        "providerPid": agreement_message["providerPid"],
        "consumerPid": agreement_message["consumerPid"],
        msgs.CONSUMER_SIGNATURE: sig,
    }


def callback_url(callback: str, consumer_pid: str, message_type: str) -> str:
    """Where a provider message goes under a consumer's ``callbackAddress`` (with or
    without its trailing ``/``: DSP binding note)."""
    return (
        f"{callback.rstrip('/')}/negotiations/{quote(consumer_pid, safe=':')}/"
        f"{CALLBACK_PATHS[message_type]}"
    )


def post_callback(
    callback: str,
    message: dict[str, Any],
    key: Ed25519PrivateKey,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout_s: float = 5.0,
) -> int:
    """POST a provider message to the consumer's callback, signed with ``key`` (RFC 9421);
    the HTTP status. Redirects are not followed and the answer's body is not read: the
    address is the consumer's to choose."""
    url = callback_url(callback, message["consumerPid"], message["@type"])
    with httpx.Client(
        auth=HttpSigAuth(key), timeout=timeout_s, follow_redirects=False, transport=transport
    ) as c:
        return c.post(url, json=message).status_code
