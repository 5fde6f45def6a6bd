"""The consumer's side of the services: negotiate a contract with a connector, list at the hub.

``request_via_connector`` is ``dataspace contract request --connector URL``:
ask the holder's connector for an offer (signed request), check the holder's
signature on the terms, countersign them with the consumer's key and send
them back; the connector stores, logs and registers the contract. It returns
the countersigned agreement as the connector recorded it (``contract_id``,
``state``, ``terms``, ``signatures``) or raises the connector's refusal
(:class:`dataspace.auth.client.ServiceRefusedError`, exit code 3, with the reasons).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace import policy
from dataspace.auth.client import call, signed_client


def _until(until: datetime | str) -> str:
    if isinstance(until, datetime):
        return until.isoformat()
    return until


def request_via_connector(
    connector_url: str,
    key: Ed25519PrivateKey,
    *,
    dataset: str,
    purpose: str,
    epsilon: float,
    rounds: int,
    until: datetime | str,
    template: str | None = None,
    delta: float | None = None,
    action: str = "train",
    expected_holder: str | None = None,
) -> dict[str, Any]:
    """Offer, countersign, accept over HTTP; the contract JSON (see module docstring).

    ``expected_holder`` (base64 key, e.g. from the hub's catalog) makes the
    consumer refuse terms signed by any other holder.
    """
    body = {
        "dataset_id": dataset,
        "purpose": purpose,
        "epsilon": epsilon,
        "rounds": rounds,
        "until": _until(until),
        "template": template,
        "action": action,
        "delta": delta,
    }
    with signed_client(connector_url, key) as c:
        offer = policy.Agreement.from_json(call(c, "POST", "/v1/offers", json=body))
        if expected_holder is not None and offer.terms.holder != expected_holder:
            raise policy.BadSignatureError(
                f"offer {offer.contract_id} is from holder {offer.terms.holder}, "
                f"not the expected {expected_holder}"
            )
        signed = policy.countersign(offer, key)  # checks the holder's signature first
        return call(
            c, "POST", f"/v1/contracts/{offer.contract_id}/countersign", json=signed.to_json()
        )


def contracts_via_hub(
    hub_url: str, key: Ed25519PrivateKey, dataset_id: str | None = None
) -> list[dict[str, Any]]:
    """``dataspace contract list --hub URL``: the contracts the hub shows this key."""
    params = {"dataset_id": dataset_id} if dataset_id else {}
    with signed_client(hub_url, key) as c:
        return call(c, "GET", "/v1/contracts", params=params)["contracts"]
