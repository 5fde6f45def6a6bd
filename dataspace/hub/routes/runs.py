"""The hub's run registry: consumers (or the operator for them) register runs and rounds,
download their runs' files and have their end logged.

A run trained through the hub writes its directory at the hub's host
(``RUNS/<run-id>``, :mod:`dataspace.federated.rundir`); its consumer downloads the
allow-listed files (``GET /v1/runs/{id}/files/{path}``) and asks the hub to log
``run.finished`` (``POST /v1/runs/{id}/finished``) with the SHA-256 of the final
global model, read from the hub's own copy, never from the consumer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from dataspace.auth.service import AnyCaller, Caller, public_detail, require
from dataspace.errors import NotFoundError, RefusedError
from dataspace.federated import rundir
from dataspace.hub import models as m
from dataspace.hub.routes.contracts import may_see_contract
from dataspace.hub.state import Hub, HubDep
from dataspace.hub.store import ConflictError, HubStore, now_iso

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
    if rundir.RUN_ID.fullmatch(body.run_id) and set(body.run_id) != {"."}:
        # the hub worker runs only what is registered here (rundir.confine); other ids
        # (the registry allows more characters) can be registered, never trained here
        rundir.write_registration(hub.runs_dir, body.run_id, consumer, body.contract_ids)
    idx = hub.log.record(
        "run.registered", run_id=body.run_id, consumer=consumer, contracts=body.contract_ids
    )
    return m.Ack(log_index=idx)


@router.post("/v1/runs/{run_id}/rounds", response_model=m.Ack, summary="Record one finished round")
def register_round(run_id: str, body: m.RoundRequest, caller: Runner, hub: HubDep) -> m.Ack:
    """The round's figures are the caller's claims: the hub cannot see what the sites
    charged or what each contributed. They are logged as such (``claimed_by``, the key
    that posted them); the facts are in the sites' own signed logs (``round.started``:
    the epsilon each charged), which ``dataspace audit cross-check`` compares."""
    owner = None if caller.role == "operator" else caller.key_id
    hub.store.add_round(run_id, owner, body.model_dump(mode="json"))
    # contributions (quality/contribution.py) go into the signed log with their round,
    # so the suggested revenue split is as auditable as the epsilon claimed
    extra = {"contributions": body.contributions} if body.contributions else {}
    idx = hub.log.record(
        "round.registered",
        run_id=run_id,
        round=body.round,
        loss=body.loss,
        epsilon_per_dataset=body.epsilon,
        claimed_by=caller.key_id,
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


def _own_run(run_id: str, caller: Caller, hub: Hub, roles: tuple[str, ...]) -> dict[str, Any]:
    """The run, if ``caller`` is its consumer or has one of ``roles``; else not found."""
    r = hub.store.runs.get(run_id)
    if r is None or (caller.role not in roles and r["consumer"] != caller.key_id):
        raise NotFoundError(f"run {run_id!r} does not exist")
    return r


@router.get(
    "/v1/runs/{run_id}/files/{path:path}",
    summary="One file of the run's directory at the hub (allow-listed names only)",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def run_file(run_id: str, path: str, caller: AnyCaller, hub: HubDep) -> Response:
    """``history.json``, ``stats.json``, ``rounds/NNN/round.json``, ``rounds/NNN/global.npz``,
    ``rounds/NNN/updates/<dataset>.npz``; to the run's consumer, auditors, the operator."""
    _own_run(run_id, caller, hub, ("auditor", "operator"))
    data = rundir.read_run_file(hub.runs_dir, run_id, path, hub.max_run_file)
    kind = "application/octet-stream"
    if path.endswith(".json"):
        kind = "application/json"
        data = _without_local_paths(data, (hub.data_dir, hub.runs_dir))
    return Response(data, media_type=kind, headers={"Cache-Control": "no-store"})


def _without_local_paths(data: bytes, private: tuple[Path, ...]) -> bytes:
    """A run's JSON file with every path of the hub's host replaced (its ``out_dir``, an
    error naming a file): no answer names a file of the service's machine."""
    try:
        doc = json.loads(data)
    except ValueError:
        return data

    def scrub(v: Any) -> Any:
        if isinstance(v, str):
            return public_detail(v, private)
        if isinstance(v, dict):
            return {k: scrub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [scrub(x) for x in v]
        return v

    clean = scrub(doc)
    return data if clean == doc else json.dumps(clean, indent=2, sort_keys=True).encode()


@router.post(
    "/v1/runs/{run_id}/finished",
    response_model=m.RunFinished,
    summary="Log the run's end (run.finished) from the hub's own copy of its directory",
)
def run_finished(run_id: str, caller: Runner, hub: HubDep) -> m.RunFinished:
    r = _own_run(run_id, caller, hub, ("operator",))
    history = _history(hub, run_id)
    status = str(history.get("status"))
    if status not in ("finished", "stopped"):
        raise ConflictError(f"run {run_id!r} is {status}: it has not ended")
    last = rundir.last_round(history)
    model = None
    if last is not None:
        final = f"rounds/{last:03d}/global.npz"
        data = rundir.read_run_file(hub.runs_dir, run_id, final, hub.max_run_file)
        model = hashlib.sha256(data).hexdigest()
    fields = {
        "status": status,
        "rounds_completed": len(history.get("rounds", [])),
        "model_sha256": model,
    }
    if all(r.get(k) == v for k, v in fields.items()) and r.get("finished_log_index") is not None:
        idx = r["finished_log_index"]  # asked again: the same answer, logged once
    else:
        idx = hub.log.record(
            "run.finished",
            run_id=run_id,
            consumer=r["consumer"],
            contracts=r["contract_ids"],
            status=status,
            rounds=fields["rounds_completed"],
            model_sha256=model,
        )
        hub.store.update_run(run_id, fields | {"finished_at": now_iso(), "finished_log_index": idx})
    return m.RunFinished(
        run_id=run_id,
        consumer=r["consumer"],
        contracts=r["contract_ids"],
        status=status,
        rounds=fields["rounds_completed"],
        last_round=last,
        model_sha256=model,
        log_index=idx,
    )


def _history(hub: Hub, run_id: str) -> dict[str, Any]:
    """The run's history.json in the hub's own copy of its directory."""
    try:
        raw = rundir.read_run_file(hub.runs_dir, run_id, "history.json", hub.max_run_file)
    except NotFoundError as e:
        raise ConflictError(f"run {run_id!r} has no files at the hub: it never ran here") from e
    try:
        history = json.loads(raw)
    except ValueError as e:
        raise ConflictError(f"run {run_id!r}: its history.json cannot be read") from e
    rounds = history.get("rounds", []) if isinstance(history, dict) else None
    if not isinstance(rounds, list) or not all(
        isinstance(x, dict) and type(x.get("round")) is int for x in rounds
    ):
        raise ConflictError(f"run {run_id!r}: its history.json is not a run's history")
    return history
