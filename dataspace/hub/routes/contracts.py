"""The hub's contract registry: holders register what their connectors agreed, signed by
both parties; what it checks is :mod:`dataspace.hub.registry`."""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from dataspace.auth.service import AnyCaller, Caller, require
from dataspace.errors import NotFoundError
from dataspace.hub import models as m
from dataspace.hub.registry import check_registration
from dataspace.hub.state import HubDep, log_contract
from dataspace.hub.store import now_iso

router = APIRouter()
#: held while a registration is checked against the registry and stored
_REGISTERING = threading.Lock()


def may_see_contract(caller: Caller, c: dict[str, Any]) -> bool:
    """Auditors and operators see every contract; holders and consumers their own."""
    if caller.role in ("auditor", "operator"):
        return True
    return caller.key_id in (c["consumer"], c["holder"])


@router.post(
    "/v1/contracts",
    response_model=m.Ack,
    summary="Register a contract both parties signed, or its holder's change of its state",
)
def register_contract(
    body: m.ContractRecord, caller: Annotated[Caller, Depends(require("holder"))], hub: HubDep
) -> m.Ack:
    """The terms are checked against the agreement's signatures (holder and consumer),
    the holder is the caller, the dataset is in its catalog; registered terms never
    change, the state moves only agreed -> revoked | expired (dataspace.hub.registry)."""
    record = body.model_dump(mode="json")
    record.update(holder=caller.key_id, registered_at=now_iso())
    # checked and stored as one step: two moves of one contract cannot both pass the check
    with _REGISTERING:
        old = check_registration(record, caller.key_id, hub.store, datetime.now(UTC))
        if old is not None:
            record["registered_at"] = old.get("registered_at", record["registered_at"])
        if not hub.store.add_contract(record):
            return m.Ack()
    _fault_pause(f"contract {body.contract_id} stored")
    return m.Ack(log_index=log_contract(hub.store, hub.log, record))


@router.get("/v1/contracts", response_model=m.ContractList, summary="Contracts the caller may see")
async def contracts(
    caller: AnyCaller,
    hub: HubDep,
    request: Request,
    dataset_id: Annotated[str | None, Query(max_length=200)] = None,
    state: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    generation = hub.store.generation
    rows = [
        c
        for c in hub.store.contracts.values()
        if may_see_contract(caller, c)
        and (dataset_id is None or c["dataset_id"] == dataset_id)
        and (state is None or c["state"] == state)
    ]
    rows.sort(key=lambda c: (c["registered_at"], c["contract_id"]))
    return hub.read_cache.answer(request, {"contracts": rows}, generation)


@router.get(
    "/v1/contracts/{contract_id}",
    response_model=m.RegisteredContract,
    summary="One contract (404 unless it is the caller's to see)",
)
async def contract(contract_id: str, caller: AnyCaller, hub: HubDep, request: Request) -> Response:
    generation = hub.store.generation
    c = hub.store.contracts.get(contract_id)
    if c is None or not may_see_contract(caller, c):
        raise NotFoundError(f"contract {contract_id!r} does not exist")
    return hub.read_cache.answer(request, c, generation)


def _fault_pause(what: str) -> None:
    """Tests only: ``DATASPACE_HUB_FAULT_PAUSE_S=N`` sleeps N s between two writes of a request.

    Lets a fault test kill -9 the hub exactly between storing a contract and
    logging it (it waits for the line printed here); unset in production.
    """
    pause = os.environ.get("DATASPACE_HUB_FAULT_PAUSE_S")
    if pause:
        print(f"fault pause: {what}; pausing {pause} s", file=sys.stderr, flush=True)
        time.sleep(float(pause))
