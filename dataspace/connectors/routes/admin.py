"""The holder's admin of its datasets (over dataspace.policy): set and read a dataset's
ODRL usage policy, read the privacy budget granted, reserved and spent. (The holder's
side of contracts, ``/v1/admin/contracts``, is with the other contract routes.)"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from dataspace import policy
from dataspace.auth.service import Caller, require
from dataspace.connectors import models as m
from dataspace.connectors.state import ConnectorDep

router = APIRouter()
Holder = Annotated[Caller, Depends(require("holder"))]
HolderOrAuditor = Annotated[Caller, Depends(require("holder", "auditor"))]


@router.put(
    "/v1/admin/datasets/{dataset_id}/policy",
    response_model=m.PolicyAck,
    summary="Set a dataset's usage policy (ODRL JSON-LD, the profile in dataspace.policy)",
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": m.policy_body_schema()}}}
    },
)
def put_policy(
    dataset_id: str, caller: Holder, conn: ConnectorDep, doc: Annotated[dict[str, Any], Body()]
) -> m.PolicyAck:
    usage = policy.parse_usage_policy(doc)
    if usage.dataset_id != dataset_id:
        raise policy.PolicyError(
            f"the path names dataset {dataset_id}, the policy {usage.dataset_id}"
        )
    p = policy.publish_policy(conn.site, usage)
    return m.PolicyAck(dataset_id=dataset_id, policy_sha256=p.policy_sha256, log_index=p.log_index)


@router.get(
    "/v1/admin/datasets/{dataset_id}/policy",
    summary="The usage policy in force (ODRL JSON-LD)",
    response_model=dict[str, Any],
)
def get_policy(dataset_id: str, caller: HolderOrAuditor, conn: ConnectorDep) -> dict[str, Any]:
    return policy.current_policy(conn.site, dataset_id).to_jsonld()


@router.get("/v1/admin/budget", response_model=m.BudgetReport, summary="Budget, reserved, spent")
def budget(
    caller: HolderOrAuditor,
    conn: ConnectorDep,
    dataset_id: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    return {"datasets": _jsonable(policy.budget_report(conn.site, dataset_id))}


def _jsonable(rows: Any) -> list[dict[str, Any]]:
    """budget_report rows (dataclasses or dicts) as JSON objects."""
    out = []
    for r in rows if isinstance(rows, list | tuple) else [rows]:
        if dataclasses.is_dataclass(r):
            r = dataclasses.asdict(r)
        elif hasattr(r, "to_json"):
            r = r.to_json()
        out.append({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()})
    return out
