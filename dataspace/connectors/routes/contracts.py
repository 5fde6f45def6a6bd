"""The connector's contract routes (over dataspace.policy).

Flow over HTTP (dataspace.policy's contracts have the semantics):

1. ``POST /v1/offers``: the consumer (the caller's key) asks; the connector
   evaluates the dataset's policy and answers a holder-signed offer, or
   pending terms when the holder approves by hand, or 403 with the reasons
   (logged as access.refused).
2. ``POST /v1/contracts/{id}/countersign``: the consumer sends the offer back
   with its signature; the connector checks both signatures and the policy
   again, stores the contract (reserving its epsilon), logs contract.agreed,
   and copies the record to the hub's contract registry.
3. The holder lists, approves or rejects pending contracts under ``/v1/admin``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from dataspace import policy
from dataspace.auth.service import Caller, RoleError, require
from dataspace.connectors import models as m
from dataspace.connectors.state import Connector, ConnectorDep
from dataspace.errors import DataspaceError, NotFoundError
from dataspace.site.identity import Identity

router = APIRouter()
Consumer = Annotated[Caller, Depends(require("consumer"))]
Holder = Annotated[Caller, Depends(require("holder"))]
Reader = Annotated[Caller, Depends(require("consumer", "holder", "auditor", "operator"))]


class BadTimeError(DataspaceError):
    code = "bad_time"


def parse_until(s: str) -> datetime:
    """RFC 3339 date-time, or a date (meaning its start, UTC)."""
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as e:
        raise BadTimeError(f"until {s!r} is not an RFC 3339 date or date-time: {e}") from e
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _to_hub(conn: Connector, c: policy.Contract) -> None:
    if conn.publisher is not None:
        conn.publisher.register_agreed(c)


@router.post(
    "/v1/offers",
    response_model=m.AgreementBody,
    summary="Ask for an offer: the policy decides (403 with the reasons if refused)",
)
def offer(body: m.OfferBody, caller: Consumer, conn: ConnectorDep) -> dict[str, Any]:
    consumer = Identity(
        name=caller.name or "consumer",
        role="consumer",
        public_key=base64.b64decode(caller.key_id),
    )
    req = policy.OfferRequest(
        dataset_id=body.dataset_id,
        consumer=consumer,
        terms=policy.ContractTerms(
            purpose=body.purpose,
            epsilon=body.epsilon,
            rounds=body.rounds,
            until=parse_until(body.until),
            template=body.template,
            action=body.action,
            delta=body.delta,
        ),
    )
    return policy.request_offer(conn.site, req).to_json()


@router.post(
    "/v1/contracts/{contract_id}/countersign",
    response_model=m.ContractView,
    summary="Return the offer countersigned: the contract is agreed (or stays pending)",
)
def countersign(
    contract_id: str, body: m.AgreementBody, caller: Consumer, conn: ConnectorDep
) -> dict[str, Any]:
    agreement = policy.Agreement.from_json(body.model_dump(mode="json"))
    if agreement.contract_id != contract_id:
        raise DataspaceError(
            f"the path names contract {contract_id}, the body {agreement.contract_id}"
        )
    if agreement.terms.consumer != caller.key_id:
        raise RoleError(
            f"contract {contract_id} names consumer {agreement.terms.consumer}; "
            f"the caller is {caller.key_id}"
        )
    c = policy.accept(conn.site, agreement, consumer_name=caller.name or None)
    _to_hub(conn, c)
    return c.to_json()


@router.get("/v1/contracts", response_model=m.ContractViews, summary="Contracts the caller may see")
def contracts(
    caller: Reader,
    conn: ConnectorDep,
    dataset_id: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    consumer = caller.key_id if caller.role == "consumer" else None
    return {
        "contracts": [c.to_json() for c in policy.list_contracts(conn.site, consumer, dataset_id)]
    }


@router.get(
    "/v1/contracts/{contract_id}",
    response_model=m.ContractView,
    summary="One contract (404 unless it is the caller's to see)",
)
def contract(contract_id: str, caller: Reader, conn: ConnectorDep) -> dict[str, Any]:
    try:
        c = policy.load_contract(conn.site, contract_id)
    except NotFoundError:
        c = None
    if c is None or (caller.role == "consumer" and c.consumer.key_b64 != caller.key_id):
        raise NotFoundError(f"contract {contract_id!r} does not exist")
    return c.to_json()


# --- the holder's side -----------------------------------------------------------------


@router.get("/v1/admin/contracts", response_model=m.ContractViews, summary="All contracts (holder)")
def admin_contracts(
    caller: Holder,
    conn: ConnectorDep,
    state: Annotated[str | None, Query(max_length=40)] = None,
    dataset_id: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    cs = policy.list_contracts(conn.site, None, dataset_id)
    return {"contracts": [c.to_json() for c in cs if state is None or c.state == state]}


@router.post(
    "/v1/admin/contracts/{contract_id}/approve",
    response_model=m.ContractView,
    summary="Approve a pending contract (re-evaluates the policy)",
)
def approve(contract_id: str, caller: Holder, conn: ConnectorDep) -> dict[str, Any]:
    c = policy.approve(conn.site, contract_id)
    _to_hub(conn, c)
    return c.to_json()


@router.post(
    "/v1/admin/contracts/{contract_id}/reject",
    response_model=m.ContractView,
    summary="Reject a pending contract",
)
def reject(
    contract_id: str,
    caller: Holder,
    conn: ConnectorDep,
    body: Annotated[m.RejectBody | None, Body()] = None,
) -> dict[str, Any]:
    reason = body.reason if body is not None else "rejected by the holder"
    return policy.reject(conn.site, contract_id, reason).to_json()
