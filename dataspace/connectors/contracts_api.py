"""The connector service's contract, policy and budget routes (over dataspace.policy).

Flow over HTTP (dataspace.policy.contracts has the semantics):

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
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, Depends, FastAPI, Query

from dataspace.auth.service import Caller, RoleError, caller_of, require
from dataspace.connectors import models as m
from dataspace.errors import DataspaceError, NotFoundError
from dataspace.policy import contracts as pc
from dataspace.policy.identity import Identity
from dataspace.policy.odrl import PolicyError

if TYPE_CHECKING:
    from dataspace.connectors.service import Publisher
    from dataspace.connectors.site import Site

AnyCaller = Annotated[Caller, Depends(caller_of)]
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


def hub_record(c: pc.Contract, connector_url: str | None) -> dict[str, Any]:
    """What the hub's contract registry keeps of a contract (terms, state, signatures)."""
    return {
        "contract_id": c.contract_id,
        "dataset_id": c.dataset_id,
        "fingerprint": c.fingerprint,
        "consumer": c.consumer.key_b64,
        "purpose": c.purpose,
        "template": c.template,
        "epsilon": c.epsilon,
        "delta": c.delta,
        "rounds": c.rounds,
        "until": c.terms.to_json()["until"],
        "state": c.state,
        "connector_url": connector_url,
        "agreement": c.agreement().to_json(),
    }


def _agreement(body: m.AgreementBody) -> pc.Agreement:
    return pc.Agreement.from_json(body.model_dump(mode="json"))


def mount(app: FastAPI, site: Site, publisher: Publisher | None) -> None:
    def to_hub(c: pc.Contract) -> None:
        if publisher is not None and c.state == "agreed":
            url = publisher.public_url
            threading.Thread(
                target=publisher.register_contract, args=(hub_record(c, url),), daemon=True
            ).start()

    @app.post(
        "/v1/offers",
        response_model=m.AgreementBody,
        summary="Ask for an offer: the policy decides (403 with the reasons if refused)",
    )
    def offer(body: m.OfferBody, caller: Consumer) -> dict[str, Any]:
        consumer = Identity(
            name=caller.name or "consumer",
            role="consumer",
            public_key=base64.b64decode(caller.key_id),
        )
        req = pc.OfferRequest(
            dataset_id=body.dataset_id,
            purpose=body.purpose,
            epsilon=body.epsilon,
            rounds=body.rounds,
            until=parse_until(body.until),
            consumer=consumer,
            template=body.template,
            action=body.action,
            delta=body.delta,
        )
        return pc.request_offer(site, req).to_json()

    @app.post(
        "/v1/contracts/{contract_id}/countersign",
        response_model=m.ContractView,
        summary="Return the offer countersigned: the contract is agreed (or stays pending)",
    )
    def countersign(contract_id: str, body: m.AgreementBody, caller: Consumer) -> dict[str, Any]:
        agreement = _agreement(body)
        if agreement.contract_id != contract_id:
            raise DataspaceError(
                f"the path names contract {contract_id}, the body {agreement.contract_id}"
            )
        if agreement.terms.consumer != caller.key_id:
            raise RoleError(
                f"contract {contract_id} names consumer {agreement.terms.consumer}; "
                f"the caller is {caller.key_id}"
            )
        c = pc.accept(site, agreement, consumer_name=caller.name or None)
        to_hub(c)
        return c.to_json()

    @app.get(
        "/v1/contracts", response_model=m.ContractViews, summary="Contracts the caller may see"
    )
    def contracts(
        caller: Reader, dataset_id: Annotated[str | None, Query(max_length=200)] = None
    ) -> dict[str, Any]:
        consumer = caller.key_id if caller.role == "consumer" else None
        return {"contracts": [c.to_json() for c in pc.list_contracts(site, consumer, dataset_id)]}

    @app.get(
        "/v1/contracts/{contract_id}",
        response_model=m.ContractView,
        summary="One contract (404 unless it is the caller's to see)",
    )
    def contract(contract_id: str, caller: Reader) -> dict[str, Any]:
        try:
            c = pc.load_contract(site, contract_id)
        except NotFoundError:
            c = None
        if c is None or (caller.role == "consumer" and c.consumer.key_b64 != caller.key_id):
            raise NotFoundError(f"contract {contract_id!r} does not exist")
        return c.to_json()

    # --- the holder's admin API ---------------------------------------------------
    @app.get(
        "/v1/admin/contracts", response_model=m.ContractViews, summary="All contracts (holder)"
    )
    def admin_contracts(
        caller: Holder,
        state: Annotated[str | None, Query(max_length=40)] = None,
        dataset_id: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        cs = pc.list_contracts(site, None, dataset_id)
        return {"contracts": [c.to_json() for c in cs if state is None or c.state == state]}

    @app.post(
        "/v1/admin/contracts/{contract_id}/approve",
        response_model=m.ContractView,
        summary="Approve a pending contract (re-evaluates the policy)",
    )
    def approve(contract_id: str, caller: Holder) -> dict[str, Any]:
        c = pc.approve(site, contract_id)
        to_hub(c)
        return c.to_json()

    @app.post(
        "/v1/admin/contracts/{contract_id}/reject",
        response_model=m.ContractView,
        summary="Reject a pending contract",
    )
    def reject(
        contract_id: str, caller: Holder, body: Annotated[m.RejectBody | None, Body()] = None
    ) -> dict[str, Any]:
        reason = body.reason if body is not None else "rejected by the holder"
        return pc.reject(site, contract_id, reason).to_json()

    @app.put(
        "/v1/admin/datasets/{dataset_id}/policy",
        response_model=m.PolicyAck,
        summary="Set a dataset's usage policy (ODRL JSON-LD, the profile in dataspace.policy)",
        openapi_extra={
            "requestBody": {"content": {"application/json": {"schema": m.policy_body_schema()}}}
        },
    )
    def put_policy(
        dataset_id: str, caller: Holder, doc: Annotated[dict[str, Any], Body()]
    ) -> m.PolicyAck:
        from dataspace.policy.odrl import parse_policy
        from dataspace.policy.policies import publish_policy

        policy = parse_policy(doc)
        if policy.dataset_id != dataset_id:
            raise PolicyError(
                f"the path names dataset {dataset_id}, the policy {policy.dataset_id}"
            )
        p = publish_policy(site, policy)
        return m.PolicyAck(
            dataset_id=dataset_id, policy_sha256=p.policy_sha256, log_index=p.log_index
        )

    @app.get(
        "/v1/admin/datasets/{dataset_id}/policy",
        summary="The usage policy in force (ODRL JSON-LD)",
        response_model=dict[str, Any],
    )
    def get_policy(
        dataset_id: str, caller: Annotated[Caller, Depends(require("holder", "auditor"))]
    ) -> dict[str, Any]:
        from dataspace.policy.policies import current_policy

        return current_policy(site, dataset_id).to_jsonld()

    @app.get("/v1/admin/budget", response_model=m.BudgetReport, summary="Budget, reserved, spent")
    def budget(
        caller: Annotated[Caller, Depends(require("holder", "auditor"))],
        dataset_id: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        from dataspace.policy.ledger import budget_report

        return {"datasets": _jsonable(budget_report(site, dataset_id))}


def _jsonable(rows: Any) -> list[dict[str, Any]]:
    """budget_report rows (dataclasses or dicts) as JSON objects."""
    import dataclasses

    out = []
    for r in rows if isinstance(rows, list | tuple) else [rows]:
        if dataclasses.is_dataclass(r):
            r = dataclasses.asdict(r)
        elif hasattr(r, "to_json"):
            r = r.to_json()
        out.append({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()})
    return out
