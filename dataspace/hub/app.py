"""The hub service: catalog, contract registry, run registry and the hub's audit log.

``create_app(data_dir)`` builds the FastAPI app; ``dataspace serve hub --data DIR
--port N`` runs it with uvicorn. Everything under ``DATA``::

    DATA/hub.key, hub.key.pub   the hub's Ed25519 identity (role operator), made on first start
    DATA/hub.duckdb             participants, catalog, contracts, runs (dataspace.hub.store)
    DATA/log/                   the hub's transparency log (dataspace.audit), origin = hub name
    DATA/nonces                 nonces of signed requests seen within the window (replay guard)
    DATA/refusals.jsonl         requests refused before a caller was authenticated

Who may call what (roles from ``dataspace.policy.identity``; a key the hub
does not know is a consumer):

========================  =========================================================
route                     roles
========================  =========================================================
GET  /v1/hub, /v1/whoami  any signed caller
GET  /v1/catalog          any signed caller (metadata only)
POST/DELETE /v1/catalog   holder (its own entries)
POST /v1/contracts        holder (contracts its connector agreed)
GET  /v1/contracts        consumer: its own; holder: its datasets'; auditor, operator: all
POST /v1/runs, rounds     consumer (runs over its own contracts), operator
GET  /v1/runs             consumer: its own; holder: over its contracts; auditor, operator: all
/v1/participants          operator (register holders, auditors, operators)
/v1/log/...               holder, auditor, operator (the log names consumers and contracts)
========================  =========================================================

The hub appends its own events to its log: catalog.published, contract.registered,
run.registered, round.registered, access.refused. It never holds or serves data
rows, frames or per-episode values: only what connectors chose to publish.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.auth.httpsig import WINDOW_S
from dataspace.auth.nonces import FileNonceStore
from dataspace.auth.service import (
    ERROR_RESPONSES,
    PUBLIC_LOG,
    PUBLIC_PATHS,
    SIGNATURE_DOC,
    Caller,
    PrivatePaths,
    SignedRequests,
    caller_of,
    error_code,
    install_error_handlers,
    public_detail,
    require,
    require_unless_public,
)
from dataspace.errors import DataspaceError, NotFoundError, RefusedError
from dataspace.hub import models as m
from dataspace.hub.dashboard import Dashboard, dashboard_token
from dataspace.hub.store import GroupCommit, HubStore, now_iso
from dataspace.policy.identity import Identity, load_private_key, new_identity

log = logging.getLogger("dataspace.hub")

DEFAULT_NAME = "dataspace-hub"
KEY = "hub.key"
#: catalog pages kept encoded (cleared when full or when the catalog changes)
PAGE_CACHE = 4096


AnyCaller = Annotated[Caller, Depends(caller_of)]


class MalformedJsonLdError(DataspaceError):
    code = "malformed_jsonld"


def hub_key(data_dir: Path, name: str):
    """The hub's private key, made (role operator) on first start."""
    path = data_dir / KEY
    if not path.exists():
        new_identity(path, name=name, role="operator")
    return load_private_key(path)


def check_dcat(doc: dict[str, Any], dataset_id: str) -> None:
    """A DCAT entry must be JSON-LD: an @context and an @type naming dcat:Dataset."""
    if "@context" not in doc:
        raise MalformedJsonLdError(f"catalog entry for {dataset_id!r} has no @context")
    types = doc.get("@type")
    types = types if isinstance(types, list) else [types]
    if not any(isinstance(t, str) and t.split(":")[-1].split("#")[-1] == "Dataset" for t in types):
        raise MalformedJsonLdError(
            f"catalog entry for {dataset_id!r} has @type {doc.get('@type')!r}; "
            "expected dcat:Dataset"
        )


class HubLog:
    """The hub's transparency log and the events it appends (dataspace.audit)."""

    def __init__(self, directory: Path, origin: str, key) -> None:
        self.key = key
        self.origin = origin
        self._lock = threading.Lock()
        if (directory).exists() and any(directory.iterdir()):
            self.log = TransparencyLog.open(directory, key=key)
        else:
            self.log = TransparencyLog.create(directory, origin, key)

    def record(self, kind: str, **fields: Any) -> int:
        entry = make_event(kind, self.key, self.origin, **fields)
        with self._lock:
            return self.log.append(entry)

    def record_many(self, events: list[tuple[str, dict[str, Any]]]) -> list[int]:
        """Several events in one ``append_many`` (one commit, one signed checkpoint)."""
        entries = [make_event(kind, self.key, self.origin, **f) for kind, f in events]
        with self._lock:
            return self.log.append_many(entries)


class ReadCache:
    """Encoded answers of the hub's reads, valid while the hub's state is unchanged.

    Answers to reads change only when the state does (``HubStore.generation``
    is bumped by every write). A read route stores its encoded answer with
    :meth:`remember` under (generation, the caller's key, path, raw query
    string); the catalog, whose pages are the same for every caller, under an
    empty key. :class:`ReadCacheMiddleware` answers the next identical read
    without routing, validation or encoding. Failed requests are never stored.
    """

    PATHS = ("/v1/catalog", "/v1/contracts", "/v1/runs")

    def __init__(self, store: HubStore, size: int = PAGE_CACHE) -> None:
        self.store, self.size = store, size
        self.entries: dict[tuple[int, str, str, bytes], bytes] = {}

    def key(self, scope: Scope) -> tuple[int, str, str, bytes]:
        path = scope["path"]
        who = "" if path == "/v1/catalog" else scope["state"]["caller"].key_id
        return (self.store.generation, who, path, scope.get("query_string", b""))

    def remember(self, request: Request, body: bytes, generation: int) -> Response:
        key = self.key(request.scope)
        if key[0] == generation:  # nothing changed while the answer was computed
            if len(self.entries) >= self.size:
                self.entries.clear()
            self.entries[key] = body
        return Response(body, media_type="application/json")


class ReadCacheMiddleware:
    """ASGI middleware inside the signature check: answers cached reads (see ReadCache)."""

    def __init__(self, app: ASGIApp, *, cache: ReadCache) -> None:
        self.app, self.cache = app, cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"].startswith(ReadCache.PATHS)
            and "caller" in scope.get("state", {})
        ):
            body = self.cache.entries.get(self.cache.key(scope))
            if body is not None:
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def create_app(
    data_dir: Path | str,
    *,
    name: str = DEFAULT_NAME,
    trust: list[Identity] | tuple[Identity, ...] = (),
    window_s: int = WINDOW_S,
) -> FastAPI:
    """The hub app over ``data_dir`` (created if missing). ``trust``: identities to register."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir.resolve()  # absolute: messages naming it are found and scrubbed
    private = (data_dir,)  # never named to a remote caller (auth.service.public_detail)
    key = hub_key(data_dir, name)
    key_id = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    store = HubStore(data_dir)
    if store.lookup(key_id) != (name, "operator"):
        store.register(key_id, name, "operator")
    for ident in trust:
        if store.lookup(ident.key_b64) != (ident.name, ident.role):
            store.register(ident.key_b64, ident.name, ident.role)
    hub_log = HubLog(data_dir / "log", name, key)
    recover_contracts(store, hub_log)

    def commit_publications(batch: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[int]:
        # the catalog rows first, then their log entries: an acknowledged publication
        # is in both (a kill between the two loses only unacknowledged log entries)
        store.publish_many([(holder, entry) for holder, entry, _ in batch])
        return hub_log.record_many([("catalog.published", event) for _, _, event in batch])

    publications = GroupCommit(commit_publications, name="hub-publications", burst=store.burst)
    refusals_path = data_dir / "refusals.jsonl"

    def on_refused(scope: Scope, e: DataspaceError, caller: Caller | None) -> None:
        what = {
            "reason": error_code(e),
            # the log is read by remote auditors and holders: no local paths in it
            "detail": public_detail(str(e), private)[:500],
            "method": scope.get("method"),
            "path": scope.get("path"),
        }
        if caller is None:  # not authenticated: a local file, not the signed log (no log spam)
            fd = os.open(refusals_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps({"time": now_iso(), **what}) + "\n").encode())
            finally:
                os.close(fd)
        else:
            hub_log.record("access.refused", caller=caller.key_id, **what)

    app = FastAPI(
        title="dataspace hub",
        version="1",
        summary="Catalog, contract registry, run registry and audit log of the data space.",
        description=(__doc__ or "").split("\n\n", 1)[0] + "\n" + SIGNATURE_DOC,
        responses=ERROR_RESPONSES,
    )
    app.state.store = store
    app.state.log = hub_log
    app.state.key_id = key_id
    # inner (runs after the signature check): answers repeated reads
    read_cache = ReadCache(store)
    app.add_middleware(ReadCacheMiddleware, cache=read_cache)
    app.add_middleware(
        SignedRequests,
        nonces=FileNonceStore(data_dir / "nonces"),
        directory=store.lookup,
        on_refused=on_refused,
        public_paths=PUBLIC_PATHS | PUBLIC_LOG,
        window_s=window_s,
    )
    # error answers (the log router's own included) never name a local path
    app.add_middleware(PrivatePaths, private=private)
    # /dashboard: unsigned (a browser cannot sign), local clients holding the hub's token
    app.add_middleware(Dashboard, store=store, hub_log=hub_log, token=dashboard_token(data_dir))
    install_error_handlers(app, on_refused, private=private)
    _mount_log(app, hub_log, data_dir, store)

    @app.get("/healthz", response_model=m.Health, summary="Liveness (no signature needed)")
    def healthz() -> m.Health:
        return m.Health(service="hub", name=name)

    @app.get("/v1/hub", response_model=m.HubInfo, summary="The hub's identity and log")
    async def hub_info(caller: AnyCaller) -> m.HubInfo:
        return m.HubInfo(name=name, public_key=key_id, vkey=_vkey(hub_log), log_size=_size(hub_log))

    @app.get("/v1/whoami", response_model=m.WhoAmI, summary="The caller as the hub sees it")
    async def whoami(caller: AnyCaller) -> m.WhoAmI:
        return m.WhoAmI(
            key_id=caller.key_id, name=caller.name, role=caller.role, known=caller.known
        )

    # --- participants ---------------------------------------------------------
    @app.post("/v1/participants", response_model=m.Ack, summary="Register a participant's role")
    def register(
        body: m.Participant, caller: Annotated[Caller, Depends(require("operator"))]
    ) -> m.Ack:
        try:
            raw = base64.b64decode(body.public_key, validate=True)
        except ValueError as e:
            raise DataspaceError(f"public_key is not base64: {e}") from e
        if len(raw) != 32:
            raise DataspaceError(f"public_key has {len(raw)} bytes; Ed25519 needs 32")
        store.register(body.public_key, body.name, body.role)
        return m.Ack()

    @app.get(
        "/v1/participants", response_model=list[m.Participant], summary="Registered participants"
    )
    def participants(
        caller: Annotated[Caller, Depends(require("operator", "auditor"))],
    ) -> list[m.Participant]:
        return [
            m.Participant(name=p["name"], role=p["role"], public_key=k)
            for k, p in sorted(store.participants.items())
        ]

    # --- catalog ----------------------------------------------------------------
    @app.post("/v1/catalog", response_model=m.Ack, summary="Publish a dataset's catalog entry")
    def publish(
        body: m.PublishRequest, caller: Annotated[Caller, Depends(require("holder"))]
    ) -> m.Ack:
        check_dcat(body.dcat, body.dataset_id)
        entry = body.model_dump(mode="json")
        entry.update(holder=caller.key_id, holder_name=caller.name, published_at=now_iso())
        event = {
            "dataset_id": body.dataset_id,
            "fingerprint": body.fingerprint,
            "holder": caller.key_id,
            "quality_score": body.quality_score,
        }
        return m.Ack(log_index=publications.submit((caller.key_id, entry, event)))

    @app.delete(
        "/v1/catalog/{dataset_id}", response_model=m.Ack, summary="Withdraw a catalog entry"
    )
    def unpublish(dataset_id: str, caller: Annotated[Caller, Depends(require("holder"))]) -> m.Ack:
        store.unpublish(caller.key_id, dataset_id)
        idx = hub_log.record("catalog.withdrawn", dataset_id=dataset_id, holder=caller.key_id)
        return m.Ack(log_index=idx)

    @app.get("/v1/catalog", response_model=m.CatalogPage, summary="Search the catalog")
    async def catalog(
        caller: AnyCaller,
        request: Request,
        q: Annotated[
            str | None, Query(max_length=200, description="text in id, title, tasks")
        ] = None,
        robot_type: Annotated[str | None, Query(max_length=200)] = None,
        task: Annotated[str | None, Query(max_length=200, description="text in a task")] = None,
        fps: Annotated[float | None, Query(ge=0, le=100_000)] = None,
        min_quality: Annotated[float | None, Query(ge=0, le=100)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> JSONResponse:
        generation = store.generation
        hits = search(list(store.catalog.values()), q, robot_type, task, fps, min_quality)
        page = {"total": len(hits), "entries": hits[offset : offset + limit]}
        return read_cache.remember(request, _dumps(page), generation)

    # --- contracts ---------------------------------------------------------------
    @app.post("/v1/contracts", response_model=m.Ack, summary="Register an agreed contract")
    def register_contract(
        body: m.ContractRecord, caller: Annotated[Caller, Depends(require("holder"))]
    ) -> m.Ack:
        record = body.model_dump(mode="json")
        record.update(holder=caller.key_id, registered_at=now_iso())
        old = store.contracts.get(body.contract_id)
        if old is not None:
            record["registered_at"] = old.get("registered_at", record["registered_at"])
        if not store.add_contract(record):
            return m.Ack()
        _fault_pause(f"contract {body.contract_id} stored")
        return m.Ack(log_index=log_contract(store, hub_log, record))

    @app.get("/v1/contracts", response_model=m.ContractList, summary="Contracts the caller may see")
    async def contracts(
        caller: AnyCaller,
        request: Request,
        dataset_id: Annotated[str | None, Query(max_length=200)] = None,
        state: Annotated[str | None, Query(max_length=40)] = None,
    ) -> Response:
        generation = store.generation
        rows = [
            c
            for c in store.contracts.values()
            if _may_see_contract(caller, c)
            and (dataset_id is None or c["dataset_id"] == dataset_id)
            and (state is None or c["state"] == state)
        ]
        rows.sort(key=lambda c: (c["registered_at"], c["contract_id"]))
        return read_cache.remember(request, _dumps({"contracts": rows}), generation)

    @app.get(
        "/v1/contracts/{contract_id}",
        response_model=m.RegisteredContract,
        summary="One contract (404 unless it is the caller's to see)",
    )
    async def contract(contract_id: str, caller: AnyCaller, request: Request) -> Response:
        generation = store.generation
        c = store.contracts.get(contract_id)
        if c is None or not _may_see_contract(caller, c):
            raise NotFoundError(f"contract {contract_id!r} does not exist")
        return read_cache.remember(request, _dumps(c), generation)

    # --- runs ---------------------------------------------------------------------
    @app.post("/v1/runs", response_model=m.Ack, summary="Register a training run")
    def register_run(
        body: m.RunRequest,
        caller: Annotated[Caller, Depends(require("consumer", "operator"))],
    ) -> m.Ack:
        for cid in body.contract_ids:
            c = store.contracts.get(cid)
            if c is None or not _may_see_contract(caller, c):
                raise NotFoundError(f"contract {cid!r} does not exist")
        consumer = caller.key_id
        if caller.role == "operator":  # an operator runs on behalf of the contracts' consumer
            consumers = {store.contracts[cid]["consumer"] for cid in body.contract_ids}
            if len(consumers) != 1:
                raise RefusedError("a run's contracts must all belong to one consumer")
            consumer = consumers.pop()
        record = {**body.model_dump(mode="json"), "consumer": consumer, "created_at": now_iso()}
        store.add_run(record)
        idx = hub_log.record(
            "run.registered", run_id=body.run_id, consumer=consumer, contracts=body.contract_ids
        )
        return m.Ack(log_index=idx)

    @app.post("/v1/runs/{run_id}/rounds", response_model=m.Ack, summary="Record one finished round")
    def register_round(
        run_id: str,
        body: m.RoundRequest,
        caller: Annotated[Caller, Depends(require("consumer", "operator"))],
    ) -> m.Ack:
        owner = None if caller.role == "operator" else caller.key_id
        store.add_round(run_id, owner, body.model_dump(mode="json"))
        # contributions (quality/contribution.py) go into the signed log with their round,
        # so the suggested revenue split is as auditable as the epsilon charged
        extra = {"contributions": body.contributions} if body.contributions else {}
        idx = hub_log.record(
            "round.registered",
            run_id=run_id,
            round=body.round,
            loss=body.loss,
            epsilon_per_dataset=body.epsilon,
            **extra,
        )
        return m.Ack(log_index=idx)

    @app.get("/v1/runs", response_model=m.RunList, summary="Runs the caller may see")
    async def runs(caller: AnyCaller, request: Request) -> Response:
        generation = store.generation
        visible = [r for r in store.runs.values() if _may_see_run(caller, r, store)]
        visible.sort(key=lambda r: (r["created_at"], r["run_id"]))
        return read_cache.remember(request, _dumps({"runs": visible}), generation)

    @app.get("/v1/runs/{run_id}", response_model=m.Run, summary="One run with its rounds")
    async def run(run_id: str, caller: AnyCaller, request: Request) -> Response:
        generation = store.generation
        r = store.runs.get(run_id)
        if r is None or not _may_see_run(caller, r, store):
            raise NotFoundError(f"run {run_id!r} does not exist")
        return read_cache.remember(request, _dumps(r), generation)

    return app


def search(
    entries: list[dict[str, Any]],
    q: str | None,
    robot_type: str | None,
    task: str | None,
    fps: float | None,
    min_quality: float | None,
) -> list[dict[str, Any]]:
    """Filter catalog entries; every given criterion must hold (case-insensitive text)."""
    out = []
    ql = q.lower() if q else None
    tl = task.lower() if task else None
    rl = robot_type.lower() if robot_type else None
    for e in entries:
        if rl is not None and (e.get("robot_type") or "").lower() != rl:
            continue
        if fps is not None and (e.get("fps") is None or abs(e["fps"] - fps) > 1e-6):
            continue
        if min_quality is not None and (
            e.get("quality_score") is None or e["quality_score"] < min_quality
        ):
            continue
        tasks = [t.lower() for t in e.get("tasks") or []]
        if tl is not None and not any(tl in t for t in tasks):
            continue
        if ql is not None:
            hay = " ".join(
                [e["dataset_id"], e.get("title") or "", e.get("robot_type") or "", *tasks]
            ).lower()
            if ql not in hay:
                continue
        out.append(e)
    out.sort(key=lambda e: (-(e.get("quality_score") or 0.0), e["dataset_id"], e["holder"]))
    return out


def log_contract(store: HubStore, hub_log: HubLog, record: dict[str, Any]) -> int:
    """Append a stored contract's ``contract.registered`` event, then mark it logged."""
    idx = hub_log.record(
        "contract.registered",
        contract_id=record["contract_id"],
        dataset_id=record["dataset_id"],
        fingerprint=record["fingerprint"],
        purpose=record["purpose"],
        holder=record["holder"],
        consumer=record["consumer"],
        epsilon=record["epsilon"],
        state=record["state"],
    )
    store.mark_logged(record["contract_id"], idx)
    return idx


def recover_contracts(store: HubStore, hub_log: HubLog) -> None:
    """Finish registrations the hub died in (stored, not marked logged): no half contract.

    A registration is three writes: the row (log_index NULL), the log entry, the
    mark. After a kill between the first two, the entry is appended now; between
    the last two, it is found in the log and only the mark is written. Either
    way the contract is served only with its log entry (tests/assurance/test_hub_faults.py).
    """
    pending = store.unlogged_contracts()
    if not pending:
        return
    from dataspace.audit.events import parse_event

    logged: dict[tuple[str, str], int] = {}
    log_ = hub_log.log
    for i, raw in enumerate(log_.entries(0, log_.size)):
        ev = parse_event(raw)
        if ev.kind == "contract.registered":
            logged[(ev.fields.get("contract_id"), ev.fields.get("state"))] = i
    for rec in pending:
        idx = logged.get((rec["contract_id"], rec["state"]))
        if idx is None:
            log_contract(store, hub_log, rec)
        else:
            store.mark_logged(rec["contract_id"], idx)


def _fault_pause(what: str) -> None:
    """Tests only: ``DATASPACE_HUB_FAULT_PAUSE_S=N`` sleeps N s between two writes of a request.

    Lets a fault test kill -9 the hub exactly between storing a contract and
    logging it (it waits for the line printed here); unset in production.
    """
    pause = os.environ.get("DATASPACE_HUB_FAULT_PAUSE_S")
    if pause:
        import sys
        import time

        print(f"fault pause: {what}; pausing {pause} s", file=sys.stderr, flush=True)
        time.sleep(float(pause))


def _may_see_contract(caller: Caller, c: dict[str, Any]) -> bool:
    if caller.role in ("auditor", "operator"):
        return True
    return caller.key_id in (c["consumer"], c["holder"])


def _may_see_run(caller: Caller, r: dict[str, Any], store: HubStore) -> bool:
    if caller.role in ("auditor", "operator") or r["consumer"] == caller.key_id:
        return True
    return any(
        store.contracts.get(cid, {}).get("holder") == caller.key_id for cid in r["contract_ids"]
    )


def _vkey(hub_log: HubLog) -> str:
    """The hub log's verifier key, C2SP vkey text (what witnesses and auditors trust)."""
    from dataspace.audit.note import raw_public, vkey_text

    return vkey_text(hub_log.origin, raw_public(hub_log.key))


def _size(hub_log: HubLog) -> int:
    return hub_log.log.size


_read_log = require_unless_public(PUBLIC_LOG, "holder", "auditor", "operator")
_append_log = require("operator")


async def _log_access(request: Request) -> None:
    """Log routes: appends by the operator only; reads as PUBLIC_LOG and _read_log say."""
    if request.url.path.endswith("/append"):
        await _append_log(request)
    else:
        await _read_log(request)


def _mount_log(app: FastAPI, hub_log: HubLog, data_dir: Path, store: HubStore) -> None:
    """The audit area's log endpoints under /v1/log, and the hub's witness for site logs.

    The checkpoint and the C2SP witness endpoint are public (the checkpoint is
    a size and a root; a witness request is authenticated by the log signature
    it carries); entries and proofs name consumers and contracts, so they need
    a holder, auditor or operator key.
    """
    from dataspace.audit.api import log_router
    from dataspace.audit.note import Verifier
    from dataspace.audit.witness import Witness

    def witness() -> Witness:
        holders = [
            Verifier(p["name"], base64.b64decode(k))
            for k, p in store.participants.items()
            if p["role"] == "holder"
        ]
        return Witness(data_dir / "witness", hub_log.origin, hub_log.key, holders)

    app.include_router(
        log_router(hub_log.log, witness),
        prefix="/v1/log",
        dependencies=[Depends(_log_access)],
    )
    from dataspace.hub.witnesses import start_witnessing

    start_witnessing(app, hub_log.log, store)  # connectors cosign the hub's checkpoints
