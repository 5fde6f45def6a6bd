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
GET  /tile/L/N[.p/W]                   C2SP tlog-tiles: level L tile N (W hashes if partial)
GET  /tile/entries/N[.p/W]             C2SP tlog-tiles: entry bundle N (signed readers only)
POST /add-checkpoint                   C2SP tlog-witness (when a witness is given)
GET  /<hex sha256(origin)>/checkpoint  C2SP tlog-witness "Monitor Retrieval Mechanism":
                                       the latest checkpoint of that log this witness cosigned
GET  /witness-key                      the witness's 0x04 vkey, endorsed by the service's
                                       identity key (dataspace.audit.witnesskey)
=====================================  ==============================================

Caching (tlog-tiles): the checkpoint is mutable, cacheable for a few seconds at most
(:data:`CHECKPOINT_CACHE`); a tile, full or partial, never changes once the tree holds
it (:data:`TILE_CACHE`); entry bundles too, but they answer signed readers only, so no
shared cache may keep them (:data:`BUNDLE_CACHE`). Errors are never cached: a tile not
there yet will be. The tiles served are those of the latest checkpoint, so every tile
a client fetches is covered by a checkpoint it can fetch.

It lives with the services' shared set-up, not in ``dataspace.audit`` (standard
library, cryptography and rfc8785 only): it is the log as both services serve it over
HTTP. Its error bodies have the services' shape, ``{"error", "detail"}``, with the
audit error's class name as the code (``LogError``, ``ProofError``, ``EventError``),
as clients have always read them.
"""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.events import EventError, verify_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.tiles import (
    CHECKPOINT_CONTENT_TYPE,
    TILE_CONTENT_TYPE,
    parse_tile_path,
    read_tile,
)
from dataspace.audit.witness import SIZE_CONTENT_TYPE, Witness, WitnessError
from dataspace.errors import DataspaceError

#: most entries one GET /entries answers
PAGE = 1000
#: tlog-tiles "Checkpoints": mutable, "SHOULD prevent caching beyond a few seconds"
CHECKPOINT_CACHE = "public, max-age=5"
#: tlog-tiles "Merkle Tree": "immutable, so its caching headers SHOULD be long-lived"
TILE_CACHE = "public, max-age=31536000, immutable"
#: entry bundles are immutable too, but only for signed readers: no shared cache
BUNDLE_CACHE = "private, max-age=31536000, immutable"
#: tlog-witness monitoring: "SHOULD NOT delay for more than an hour"; a minute at most here
MONITOR_CACHE = "public, max-age=60"
#: error answers: a tile not there yet, a witness refusal; never kept by a cache
NO_STORE = "no-store"


def _provider(p: Any) -> Callable[[], Any]:
    return p if callable(p) and not isinstance(p, TransparencyLog | Witness) else (lambda: p)


def _error(e: DataspaceError) -> JSONResponse:
    return JSONResponse(
        {"error": type(e).__name__, "detail": str(e)},
        status_code=e.http_status,
        headers={"cache-control": NO_STORE},
    )


def exact_response(body: bytes, status: int, content_type: str, **headers: str) -> Response:
    """A response whose Content-Type is exactly ``content_type``: Starlette appends
    ``; charset=utf-8`` to a ``text/*`` media type, which tlog-witness's 409 must not
    have ("MUST have a Content-Type of text/x.tlog.size"), so the header is given as is."""
    h = {"content-type": content_type, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return Response(body, status_code=status, headers=h)


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
        return exact_response(note, 200, CHECKPOINT_CONTENT_TYPE, cache_control=CHECKPOINT_CACHE)

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
            return _witness_error(WitnessError(404, "this service is not a witness"))
        body = await request.body()
        try:
            line = witness.add_checkpoint(body)
        except WitnessError as e:
            if e.status == 409 and e.body is not None:
                # tlog-witness add-checkpoint: exactly text/x.tlog.size, no charset
                return exact_response(e.body, 409, SIZE_CONTENT_TYPE, cache_control=NO_STORE)
            return _witness_error(e)
        return exact_response(line, 200, "text/plain; charset=utf-8", cache_control=NO_STORE)

    @router.get(
        "/tile/{path:path}",
        response_class=Response,
        responses={
            200: {
                "description": "C2SP tlog-tiles: a tile (hashes) or an entry bundle",
                "content": {TILE_CONTENT_TYPE: {"schema": {"type": "string"}}},
            }
        },
    )
    def tile(path: str, request: Request) -> Response:
        """C2SP tlog-tiles: ``tile/L/N[.p/W]`` and ``tile/entries/N[.p/W]`` of the tree
        of the latest checkpoint (404 beyond it, 400 for a path not in the spec's form)."""
        try:
            ref = parse_tile_path("tile/" + path)
            log = get_log()
            size = checkpoint_of_note(log.checkpoint()).size
            data = read_tile(log, ref, size)
        except DataspaceError as e:
            return _error(e)
        if ref.level is not None:
            return exact_response(data, 200, TILE_CONTENT_TYPE, cache_control=TILE_CACHE)
        # tlog-tiles "Log entries": bundles SHOULD be compressed at the HTTP layer
        headers = {"cache_control": BUNDLE_CACHE, "vary": "Accept-Encoding"}
        if _accepts_gzip(request.headers.get("accept-encoding", "")):
            data = gzip.compress(data, mtime=0)
            headers["content_encoding"] = "gzip"
        return exact_response(data, 200, TILE_CONTENT_TYPE, **headers)

    @router.get(
        "/witness-key",
        response_class=Response,
        responses={
            200: {
                "description": "the witness key, endorsed by the identity key",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    def witness_key() -> Response:
        witness = get_witness()
        if witness is None or witness.endorsement is None:
            return _error(WitnessError(404, "this service is not a witness"))
        return exact_response(witness.endorsement, 200, "text/plain; charset=utf-8")

    @router.get(
        "/{origin_hash}/checkpoint",
        response_class=Response,
        responses={
            200: {
                "description": "C2SP tlog-witness: a log's checkpoint, cosigned",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    def monitor(origin_hash: str) -> Response:
        """tlog-witness "Monitor Retrieval Mechanism": the latest checkpoint of the log
        whose origin's SHA-256 is ``origin_hash`` (lowercase hex) this witness cosigned."""
        witness = get_witness()
        try:
            if witness is None:
                raise WitnessError(404, "this service is not a witness")
            note = witness.monitor_checkpoint(origin_hash)
        except WitnessError as e:
            return _error(e)
        return exact_response(note, 200, CHECKPOINT_CONTENT_TYPE, cache_control=MONITOR_CACHE)

    return router


def _witness_error(e: WitnessError) -> Response:
    """A tlog-witness error status with its reason as text."""
    return exact_response(
        (str(e) + "\n").encode(), e.status, "text/plain; charset=utf-8", cache_control=NO_STORE
    )


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` lists gzip with a non-zero weight (RFC 9110 12.5.3)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            p = params.strip()
            try:
                return float(p[2:] if p.startswith("q=") else "1") > 0
            except ValueError:
                return False
    return False


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
