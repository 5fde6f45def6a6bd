"""HTTP API of a log (FastAPI): append, entries, checkpoint, proofs, and a witness endpoint.

``log_router(log_provider, witness_provider=None)`` returns an ``APIRouter`` that
the hub (or a connector service) mounts under a prefix, e.g. ``/log``:

=====================================  ==============================================
POST /append                           body: one entry, or several, one per line
                                       (each a signed event); answers
                                       {"index": i} or {"indices": [...]}
GET  /entries?start=I&end=J            the entries [I, J) as lines (at most 1000)
GET  /checkpoint[?witnessed=true]      the latest signed checkpoint, text/plain (with
                                       ``witnessed``: the newest one its witness
                                       policy accepts, dataspace.audit.witnesspolicy)
GET  /witnesses                        the witness set: per witness the size it cosigned,
                                       whether it is stale (and since which size), why
GET  /proof/inclusion?index=I&size=N   {"index","size","leaf_hash","hashes"} (hex)
GET  /proof/consistency?from=M&size=N  {"from","size","hashes"} (hex)
POST /add-checkpoint                   C2SP tlog-witness (when a witness is given)
=====================================  ==============================================

It lives with the services' shared set-up, not in ``dataspace.audit`` (standard
library, cryptography and rfc8785 only): it is the log as both services serve it over
HTTP. Its error bodies have the services' shape, ``{"error", "detail"}``, with the
audit error's class name as the code (``LogError``, ``ProofError``, ``EventError``),
as clients have always read them.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from dataspace.audit.events import EventError, verify_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.witness import SIZE_CONTENT_TYPE, Witness, WitnessError
from dataspace.errors import DataspaceError

#: most entries one GET /entries answers
PAGE = 1000


def _provider(p: Any) -> Callable[[], Any]:
    return p if callable(p) and not isinstance(p, TransparencyLog | Witness) else (lambda: p)


def _error(e: DataspaceError) -> JSONResponse:
    return JSONResponse({"error": type(e).__name__, "detail": str(e)}, status_code=e.http_status)


def log_router(
    log_provider: TransparencyLog | Callable[[], TransparencyLog],
    witness_provider: Witness | Callable[[], Witness | None] | None = None,
    verify_entries: bool = True,
) -> APIRouter:
    """An APIRouter serving one log (and optionally a witness). Providers may be the
    objects themselves or zero-argument callables returning them."""
    get_log = _provider(log_provider)
    get_witness = _provider(witness_provider) if witness_provider is not None else (lambda: None)
    router = APIRouter()

    @router.post("/append")
    async def append(request: Request) -> Response:
        body = await request.body()
        lines = body.rstrip(b"\n").split(b"\n") if body.strip() else []
        if not lines:
            return JSONResponse({"error": "EventError", "detail": "empty body"}, status_code=400)
        try:
            if verify_entries:
                for i, e in enumerate(lines):
                    try:
                        verify_event(e)
                    except EventError as err:
                        raise EventError(f"entry {i} of the request: {err}") from err
            indices = get_log().append_many(lines)
        except DataspaceError as e:
            return _error(e)
        if len(indices) == 1:
            return JSONResponse({"index": indices[0]})
        return JSONResponse({"indices": indices})

    @router.get(
        "/entries",
        response_class=Response,
        responses={
            200: {
                "description": "the entries, one per line: exactly the hashed bytes",
                "content": {"application/jsonl": {"schema": {"type": "string"}}},
            }
        },
    )
    def entries(start: int = Query(0, ge=0), end: int | None = Query(None, ge=0)) -> Response:
        log = get_log()
        try:
            end = min(log.size if end is None else end, start + PAGE)
            es = log.entries(start, end)
        except DataspaceError as e:
            return _error(e)
        return Response(b"".join(e + b"\n" for e in es), media_type="application/jsonl")

    @router.get(
        "/checkpoint",
        response_class=PlainTextResponse,
        responses={200: {"description": "the latest checkpoint, a C2SP signed note"}},
    )
    def checkpoint(
        witnessed: bool = Query(
            False, description="the latest checkpoint cosigned by all its witnesses, instead"
        ),
    ) -> Response:
        try:
            log = get_log()
            note = log.witnessed_checkpoint() if witnessed else log.checkpoint()
        except DataspaceError as e:
            return _error(e)
        return PlainTextResponse(note, media_type="text/plain; charset=utf-8")

    @router.get("/witnesses")
    def witnesses() -> Response:
        """Who witnesses this log: the current witness set, how far each cosigned, which
        is stale since which size (TransparencyLog.witnessing_status)."""
        try:
            status = get_log().witnessing_status()
        except DataspaceError as e:
            return _error(e)
        return JSONResponse(status)

    @router.get("/proof/inclusion")
    def inclusion(index: int = Query(..., ge=0), size: int | None = Query(None, ge=1)) -> Response:
        log = get_log()
        try:
            size = log.size if size is None else size
            hashes = log.inclusion_proof(index, size)
            leaf = log.leaf_hash(index)
        except DataspaceError as e:
            return _error(e)
        return JSONResponse(
            {
                "index": index,
                "size": size,
                "leaf_hash": leaf.hex(),
                "hashes": [h.hex() for h in hashes],
            }
        )

    @router.get("/proof/consistency")
    def consistency(
        old: int = Query(..., ge=0, alias="from"), size: int | None = Query(None, ge=0)
    ) -> Response:
        log = get_log()
        try:
            size = log.size if size is None else size
            hashes = log.consistency_proof(old, size)
        except DataspaceError as e:
            return _error(e)
        return JSONResponse({"from": old, "size": size, "hashes": [h.hex() for h in hashes]})

    @router.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        witness = get_witness()
        if witness is None:
            return PlainTextResponse("this service is not a witness\n", status_code=404)
        body = await request.body()
        try:
            line = witness.add_checkpoint(body)
        except WitnessError as e:
            if e.status == 409 and e.body is not None:
                return Response(e.body, status_code=409, media_type=SIZE_CONTENT_TYPE)
            return PlainTextResponse(str(e) + "\n", status_code=e.status)
        return Response(line, media_type="text/plain; charset=utf-8")

    return router


def http_post(url: str, timeout: float = 30.0) -> Callable[[bytes], tuple[int, bytes]]:
    """A ``post`` for :func:`dataspace.audit.witness.witness_log` that talks to a remote
    witness's add-checkpoint URL (stdlib urllib)."""

    def post(body: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    return post
