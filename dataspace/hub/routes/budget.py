"""The holders' budget reports: each site's signed statement of its ledger (hub.budgets)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from dataspace.auth.service import Caller, require
from dataspace.hub import models as m
from dataspace.hub.budgets import accept_report
from dataspace.hub.state import HubDep

router = APIRouter()
Holder = Annotated[Caller, Depends(require("holder"))]
Reader = Annotated[Caller, Depends(require("holder", "auditor", "operator"))]


@router.post(
    "/v1/budget",
    response_model=m.BudgetAck,
    summary="Report a dataset's budget: a statement signed by the holder's site",
)
def report(body: m.BudgetReportBody, caller: Holder, hub: HubDep) -> m.BudgetAck:
    status, kept = accept_report(hub.store, caller, body.statement)
    return m.BudgetAck(
        status=status, reported_at=kept["reported_at"], site_log_size=kept["site_log_size"]
    )


def may_see_report(caller: Caller, r: dict[str, Any]) -> bool:
    """Auditors and operators see every report; a holder its own."""
    return caller.role in ("auditor", "operator") or r["holder"] == caller.key_id


@router.get(
    "/v1/budget",
    response_model=m.BudgetReports,
    summary="The latest budget report per dataset (holder: its own; auditor, operator: all)",
)
async def reports(
    caller: Reader,
    hub: HubDep,
    request: Request,
    dataset_id: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    generation = hub.store.generation
    rows = [
        r
        for r in hub.store.budgets.values()
        if may_see_report(caller, r) and (dataset_id is None or r["dataset_id"] == dataset_id)
    ]
    rows.sort(key=lambda r: (r["dataset_id"], r["holder"]))
    return hub.read_cache.answer(request, {"reports": rows}, generation)
