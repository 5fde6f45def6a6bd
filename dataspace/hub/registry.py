"""What the hub's contract registry accepts: only what both parties signed (issue 20).

A contract reaches the hub from its holder's connector (``POST /v1/contracts``,
:func:`dataspace.connectors.publisher.hub_record`): the terms as flat fields, the
state, and the agreement both parties signed (:class:`dataspace.policy.Agreement`).
The hub used to store whatever a holder sent; now, in this order:

1. a contract another holder registered is that holder's (409 ``conflict``);
2. the agreement's terms carry the holder's and the consumer's Ed25519 signatures
   (:func:`dataspace.policy.verify_agreement`, what an auditor runs; 403
   ``contract_signature``);
3. the terms are the caller's (their holder is the signed caller), every flat field
   is the signed terms' value, and a contract registered for the first time is on a
   dataset the caller published here (403 ``contract``);
4. registered terms never change (409 ``conflict``): only the state moves, along the
   contract's own transitions (:data:`TRANSITIONS`: agreed, then revoked or expired),
   each by its holder, the party that may make it; ``expired`` only once the terms'
   ``until`` has come (403 ``contract``).

The hub checks signatures, not the holder's policy: whether the holder should have
agreed is the holder's site's business (its ledger enforces every round).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dataspace.errors import RefusedError
from dataspace.hub.store import ConflictError, HubStore
from dataspace.policy.contracts import CLOCK_SKEW, Agreement, ContractError, verify_agreement

#: the state a contract is first registered in, and where each state may move
FIRST_STATE = "agreed"
TRANSITIONS: dict[str, frozenset[str]] = {"agreed": frozenset({"revoked", "expired"})}
#: the flat fields of a registration that restate the signed terms
TERM_FIELDS = (
    "dataset_id",
    "fingerprint",
    "consumer",
    "purpose",
    "template",
    "epsilon",
    "delta",
    "rounds",
    "until",
)


class ContractRegistrationError(RefusedError):
    """A registration whose terms or state the signed agreement does not support."""

    code = "contract"


class ContractSignatureError(ContractRegistrationError):
    """A registration without both parties' valid signatures on its terms."""

    code = "contract_signature"


def check_registration(
    record: dict[str, Any], caller: str, store: HubStore, now: datetime
) -> dict[str, Any] | None:
    """Check a registration by holder ``caller`` (module docstring); returns the contract
    already registered under its id, if any. Raises the typed refusal otherwise."""
    cid = record["contract_id"]
    old = store.contracts.get(cid)
    if old is not None and old["holder"] != caller:
        raise ConflictError(f"contract {cid} is registered by another holder")
    agreement = signed_agreement(record)
    check_terms(record, agreement, caller)
    if old is None:
        if (caller, record["dataset_id"]) not in store.catalog:
            raise ContractRegistrationError(
                f"contract {cid}: dataset {record['dataset_id']!r} is not in your catalog at "
                "this hub; a holder registers contracts on its own published datasets"
            )
        if record["state"] != FIRST_STATE:
            raise ContractRegistrationError(
                f"contract {cid} is registered once {FIRST_STATE}, not {record['state']!r}"
            )
    else:
        check_unchanged(old, record)
        check_transition(cid, old["state"], record["state"])
    if record["state"] == "expired" and now < agreement.terms.until - CLOCK_SKEW:
        raise ContractRegistrationError(
            f"contract {cid} runs until {record['until']}: it has not expired (a holder ends "
            "it earlier by revoking it)"
        )
    return old


def signed_agreement(record: dict[str, Any]) -> Agreement:
    """The record's agreement, with both parties' signatures verified on its terms."""
    cid = record["contract_id"]
    raw = record.get("agreement")
    if not isinstance(raw, dict):
        raise ContractSignatureError(
            f"contract {cid} carries no agreement: the hub registers terms signed by the "
            "holder and the consumer"
        )
    try:
        agreement = Agreement.from_json(raw)
        verify_agreement(agreement)
    except ContractError as e:
        raise ContractSignatureError(f"contract {cid}: {e}") from e
    return agreement


def check_terms(record: dict[str, Any], agreement: Agreement, caller: str) -> None:
    """The signed terms are this contract's and the caller's, and every flat field says
    what they say (the registry serves the flat fields)."""
    t = agreement.terms
    cid = record["contract_id"]
    if t.contract_id != cid:
        raise ContractRegistrationError(f"contract {cid}: its agreement is of {t.contract_id}")
    if t.holder != caller:
        raise ContractRegistrationError(
            f"contract {cid}: its terms are signed for holder {t.holder}, not the caller {caller}"
        )
    signed = signed_fields(agreement)
    for name in TERM_FIELDS:
        if record.get(name) != signed[name]:
            raise ContractRegistrationError(
                f"contract {cid}: {name} {record.get(name)!r} is not the signed terms' "
                f"{signed[name]!r}"
            )


def signed_fields(agreement: Agreement) -> dict[str, Any]:
    """The flat fields of a registration, as the signed terms give them."""
    t = agreement.terms.to_json()
    return {name: t[name] for name in TERM_FIELDS}


def check_unchanged(old: dict[str, Any], record: dict[str, Any]) -> None:
    """Registered terms never change: the same flat terms and, where the registry kept
    them (every registration since issue 20), the same signed terms."""
    cid = record["contract_id"]
    changed = [n for n in TERM_FIELDS if old.get(n) != record.get(n)]
    kept = old.get("agreement")
    if isinstance(kept, dict) and kept.get("terms") != record["agreement"]["terms"]:
        changed.append("agreement.terms")
    if changed:
        raise ConflictError(
            f"contract {cid} is registered with other terms ({', '.join(changed)}); "
            "registered terms never change"
        )


def check_transition(cid: str, old: str, new: str) -> None:
    """``old`` -> ``new`` is one of the contract's transitions (or no move at all)."""
    if new == old:
        return
    if new not in TRANSITIONS.get(old, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(old, frozenset()))) or "nothing"
        raise ContractRegistrationError(
            f"contract {cid} is {old}: it may become {allowed}, not {new!r}"
        )
