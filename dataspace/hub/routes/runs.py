"""The hub's run registry: consumers (or the operator for them) register runs and rounds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from dataspace.auth.service import AnyCaller, Caller, require
from dataspace.errors import NotFoundError, RefusedError
from dataspace.hub import models as m
from dataspace.hub.routes.contracts import may_see_contract
from dataspace.hub.state import HubDep
from dataspace.hub.store import HubStore, now_iso

router = APIRouter()
Runner = Annotated[Caller, Depends(require("consumer", "operator"))]


def may_see_run(caller: Caller, r: dict[str, Any], store: HubStore) -> bool:
    """Auditors, operators and the run's consumer see a run; so do the holders of its contracts."""
    if caller.role in ("auditor", "operator") or r["consumer"] == caller.key_id:
        return True
    return any(
        store.contracts.get(cid, {}).get("holder") == caller.key_id for cid in r["contract_ids"]
    )


@router.post("/v1/runs", response_model=m.Ack, summary="Register a training run")
def register_run(body: m.RunRequest, caller: Runner, hub: HubDep) -> m.Ack:
    for cid in body.contract_ids:
        c = hub.store.contracts.get(cid)
        if c is None or not may_see_contract(caller, c):
            raise NotFoundError(f"contract {cid!r} does not exist")
    consumer = caller.key_id
    if caller.role == "operator":  # an operator runs on behalf of the contracts' consumer
        consumers = {hub.store.contracts[cid]["consumer"] for cid in body.contract_ids}
        if len(consumers) != 1:
            raise RefusedError("a run's contracts must all belong to one consumer")
        consumer = consumers.pop()
    record = {**body.model_dump(mode="json"), "consumer": consumer, "created_at": now_iso()}
    hub.store.add_run(record)
    idx = hub.log.record(
        "run.registered", run_id=body.run_id, consumer=consumer, contracts=body.contract_ids
    )
    return m.Ack(log_index=idx)


@router.post("/v1/runs/{run_id}/rounds", response_model=m.Ack, summary="Record one finished round")
def register_round(run_id: str, body: m.RoundRequest, caller: Runner, hub: HubDep) -> m.Ack:
    owner = None if caller.role == "operator" else caller.key_id
    hub.store.add_round(run_id, owner, body.model_dump(mode="json"))
    # contributions (quality/contribution.py) go into the signed log with their round,
    # so the suggested revenue split is as auditable as the epsilon charged
    extra = {"contributions": body.contributions} if body.contributions else {}
    idx = hub.log.record(
        "round.registered",
        run_id=run_id,
        round=body.round,
        loss=body.loss,
        epsilon_per_dataset=body.epsilon,
        **extra,
    )
    return m.Ack(log_index=idx)


@router.get("/v1/runs", response_model=m.RunList, summary="Runs the caller may see")
async def runs(caller: AnyCaller, hub: HubDep, request: Request) -> Response:
    generation = hub.store.generation
    visible = [r for r in hub.store.runs.values() if may_see_run(caller, r, hub.store)]
    visible.sort(key=lambda r: (r["created_at"], r["run_id"]))
    return hub.read_cache.answer(request, {"runs": visible}, generation)


@router.get("/v1/runs/{run_id}", response_model=m.Run, summary="One run with its rounds")
async def run(run_id: str, caller: AnyCaller, hub: HubDep, request: Request) -> Response:
    generation = hub.store.generation
    r = hub.store.runs.get(run_id)
    if r is None or not may_see_run(caller, r, hub.store):
        raise NotFoundError(f"run {run_id!r} does not exist")
    return hub.read_cache.answer(request, r, generation)
