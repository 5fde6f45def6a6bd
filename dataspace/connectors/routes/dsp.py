"""Dataspace Protocol 2025-1 routes of the connector, its DCAT-AP catalog and robot vocabulary.

DSP 2025-1 HTTPS bindings (the provider's side; docs/dsp.md):

==========================================================  ===========================
route                                                        who
==========================================================  ===========================
GET  /.well-known/dspace-version                             anyone (no signature: DSP)
POST /catalog/request, GET /catalog/datasets/{id}            any signed caller
POST /negotiations/request                                   a consumer (the signer)
GET  /negotiations/{providerPid}                             that consumer (404 otherwise)
POST /negotiations/{providerPid}/request                     400: no counter-offers
POST /negotiations/{providerPid}/events                      ACCEPTED (manual approval)
POST /negotiations/{providerPid}/agreement/verification      the consumer's countersignature
POST /negotiations/{providerPid}/termination                 the consumer
GET  /v1/dcat                                                any signed caller (DCAT-AP 3.0.1)
GET  /vocab/robot.ttl                                        anyone (the robot vocabulary)
==========================================================  ===========================

Every request but the two public ones is signed with RFC 9421 (the service's
middleware), the signer being the consumer. Every error under ``/catalog`` is a DSP
``CatalogError`` and under ``/negotiations`` a ``ContractNegotiationError``, whichever
layer refused (signature, size, role, policy, state): :class:`DspErrors` rewrites the
services' one error shape ``{"error", "detail"}`` on those paths, keeping the status.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlparse

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dataspace.auth.service import AnyCaller, Caller, require
from dataspace.connectors.dsp import catalog as dsp_catalog
from dataspace.connectors.dsp import client as dsp_client
from dataspace.connectors.dsp import messages as msgs
from dataspace.connectors.dsp import negotiation as neg
from dataspace.connectors.dsp.offers import dataset_iri
from dataspace.connectors.state import Connector, ConnectorDep
from dataspace.errors import NotFoundError
from dataspace.policy.odrl import DATASET_URN
from dataspace.site.identity import Identity
from dataspace.site.store import get_dataset

log = logging.getLogger("dataspace.connector.dsp")
router = APIRouter()


# --- what OpenAPI says of these routes (the DSP shapes; the schemas are DSP's own, trimmed
# to what a client needs: tests/standards validates the real messages against the full ones)


def _json(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


_CONTEXT = {"type": "array", "items": {"type": "string"}, "contains": {"const": msgs.DSP_CONTEXT}}
_MESSAGE = {"type": "object", "required": ["@context", "@type"]}


def _errors(type_name: str, required: list[str]) -> dict[int | str, dict[str, Any]]:
    schema = {
        "type": "object",
        "required": ["@context", "@type", *required],
        "properties": {
            "@type": {"const": type_name},
            "code": {"type": "string"},
            "reason": {"type": "array", "minItems": 1},
        },
    }
    said = ((400, "malformed message or state"), (401, "signature"), (403, "role or policy"),
            (404, "not found or not yours"), (409, "duplicate"), (413, "body too large"),
            (422, "invalid request"))  # fmt: skip
    return {s: {"description": f"{type_name}: {d}", **_json(schema)} for s, d in said}


CATALOG_ERRORS = _errors("CatalogError", [])
NEGOTIATION_ERRORS = _errors("ContractNegotiationError", ["providerPid", "consumerPid"])


def _body(msg_type: str, required: list[str], **props: Any) -> dict[str, Any]:
    schema = {
        "type": "object",
        "required": ["@context", "@type", *required],
        "properties": {"@context": _CONTEXT, "@type": {"const": msg_type}, **props},
    }
    return {"requestBody": {"required": True, **_json(schema)}}


_PID = {"type": "string", "minLength": 1, "maxLength": msgs.MAX_ID}
_NEGOTIATION = _json(
    _MESSAGE | {"required": ["@context", "@type", "providerPid", "consumerPid", "state"]}
)


class TurtleResponse(Response):
    media_type = "text/turtle"


class JsonLdResponse(JSONResponse):
    media_type = "application/ld+json"


Consumer = Annotated[Caller, Depends(require("consumer"))]
JSON_LD = "application/json"


class CatalogNotFoundError(NotFoundError):
    code = "dataset_not_found"


def _endpoint(conn: Connector, request: Request) -> str:
    """The DSP base URL of this connector: its public URL, else the one the caller used."""
    p = conn.publisher
    if p is not None and p.public_url:
        return p.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


async def _message(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as e:
        raise msgs.MalformedMessageError(f"the body is not JSON: {e}") from e


def _identity(caller: Caller) -> Identity:
    return Identity(
        name=caller.name or "consumer", role="consumer", public_key=base64.b64decode(caller.key_id)
    )


def _deliver(conn: Connector, callback: str | None, message: dict[str, Any]) -> None:
    """Best effort, in the background: the provider's message to the consumer's callback.

    The consumer can always read the state and this message with GET (docs/dsp.md); a
    callback that fails changes nothing.
    """
    if not callback or (urlparse(callback).hostname or "").endswith(".invalid"):
        return  # RFC 6761 .invalid: a consumer that polls says so (dsp.client.request_message)

    def run() -> None:
        try:
            status = dsp_client.post_callback(callback, message, conn.site.key)
            log.info("callback %s %s: %s", message["@type"], callback, status)
        except Exception as e:  # the consumer's address: anything may go wrong there
            log.warning("callback %s to %s failed: %s", message["@type"], callback, e)

    threading.Thread(target=run, name="dsp-callback", daemon=True).start()


# --- common ---------------------------------------------------------------------------


@router.get(
    "/.well-known/dspace-version",
    summary="DSP versions (public)",
    responses={200: _json({"type": "object", "required": ["protocolVersions"]})},
)
def dspace_version(conn: ConnectorDep) -> dict[str, Any]:
    return msgs.version_response("urn:dataspace:connector:" + conn.site.identity.key_b64)


@router.get(
    "/vocab/robot.ttl",
    summary="The robot vocabulary (Turtle, public)",
    response_class=TurtleResponse,
    responses={200: _json({"type": "string"}, "text/turtle")},
)
def robot_vocabulary() -> TurtleResponse:
    ttl = resources.files("dataspace.connectors").joinpath("robot.ttl").read_bytes()
    return TurtleResponse(ttl)


@router.get(
    "/v1/dcat",
    summary="This connector's DCAT-AP 3.0.1 catalog (JSON-LD)",
    responses={200: _json(_MESSAGE, "application/ld+json")},
)
def dcat(caller: AnyCaller, conn: ConnectorDep, request: Request) -> JsonLdResponse:
    return JsonLdResponse(dsp_catalog.dcat_catalog(conn.site, _endpoint(conn, request)))


# --- catalog (DSP 2025-1 "Catalog HTTPS Binding") ---------------------------------------


@router.post(
    "/catalog/request",
    summary="DSP CatalogRequestMessage -> Catalog",
    responses={200: _json(_MESSAGE | {"required": ["@context", "@type", "@id", "participantId"]}),
               **CATALOG_ERRORS},
    openapi_extra=_body("CatalogRequestMessage", [], filter={"type": "array", "maxItems": 0}),
)  # fmt: skip
async def catalog_request(caller: AnyCaller, conn: ConnectorDep, request: Request) -> JSONResponse:
    msgs.parse_catalog_request(await _message(request))
    cat = await run_in_threadpool(dsp_catalog.dsp_catalog, conn.site, _endpoint(conn, request))
    return JSONResponse(cat)


@router.get(
    "/catalog/datasets/{dataset}",
    summary="DSP Dataset",
    responses={200: _json(_MESSAGE | {"required": ["@context", "@id", "hasPolicy"]}),
               **CATALOG_ERRORS},
)  # fmt: skip
def catalog_dataset(
    dataset: str, caller: AnyCaller, conn: ConnectorDep, request: Request
) -> JSONResponse:
    ds = dataset[len(DATASET_URN) :] if dataset.startswith(DATASET_URN) else dataset
    missing = CatalogNotFoundError(f"dataset {dataset[:200]!r} is not in this catalog")
    try:
        rec = get_dataset(conn.site, ds)
    except NotFoundError as e:
        raise missing from e
    if rec.dataset_id != ds:  # get_dataset also finds a dataset by name; DSP names @ids
        raise missing
    doc = dsp_catalog.dsp_dataset(conn.site, rec, _endpoint(conn, request))
    if doc is None:  # no policy in force: not offered
        raise missing
    assert doc["@id"] == dataset_iri(rec.dataset_id)
    return JSONResponse({"@context": [msgs.DSP_CONTEXT], **doc})


# --- negotiation (DSP 2025-1 "Contract Negotiation HTTPS Binding", provider) ----------


@router.post(
    "/negotiations/request",
    summary="DSP ContractRequestMessage (initial)",
    status_code=201,
    responses={201: _NEGOTIATION, **NEGOTIATION_ERRORS},
    openapi_extra=_body(
        "ContractRequestMessage",
        ["consumerPid", "offer", "callbackAddress"],
        consumerPid=_PID,
        callbackAddress={"type": "string", "pattern": "^https?://"},
        offer={"type": "object", "required": ["@id", "@type", "target", "permission"]},
    ),
)
async def negotiation_request(
    caller: Consumer, conn: ConnectorDep, request: Request
) -> JSONResponse:
    req = msgs.parse_contract_request(await _message(request))
    n, ack = await run_in_threadpool(neg.start, conn.site, req, _identity(caller))
    _deliver(conn, n.callback, n.message or {})
    return JSONResponse(ack, status_code=201)


@router.get(
    "/negotiations/{pid}",
    summary="DSP ContractNegotiation",
    responses={200: _NEGOTIATION, **NEGOTIATION_ERRORS},
)
def negotiation_get(pid: str, caller: Consumer, conn: ConnectorDep) -> JSONResponse:
    return JSONResponse(neg.view(neg.mine(conn.site, pid, caller.key_id)))


@router.post(
    "/negotiations/{pid}/request",
    summary="DSP counter-offer (not accepted: 400)",
    responses=NEGOTIATION_ERRORS,
    openapi_extra=_body(
        "ContractRequestMessage", ["consumerPid", "providerPid", "offer"], providerPid=_PID
    ),
)
async def negotiation_counter(
    pid: str, caller: Consumer, conn: ConnectorDep, request: Request
) -> JSONResponse:
    req = msgs.parse_contract_request(await _message(request))
    if req.provider_pid != pid:
        raise msgs.MalformedMessageError("providerPid of the message must be the path's")
    await run_in_threadpool(neg.counter_offer, conn.site, pid, caller.key_id)
    raise AssertionError("counter_offer always raises")


@router.post(
    "/negotiations/{pid}/events",
    summary="DSP ContractNegotiationEventMessage",
    responses={200: _NEGOTIATION, **NEGOTIATION_ERRORS},
    openapi_extra=_body(
        "ContractNegotiationEventMessage",
        ["providerPid", "consumerPid", "eventType"],
        eventType={"enum": ["ACCEPTED"]},
    ),
)
async def negotiation_event(
    pid: str, caller: Consumer, conn: ConnectorDep, request: Request
) -> JSONResponse:
    m = msgs.parse_negotiation_message(await _message(request), "ContractNegotiationEventMessage")
    n = await run_in_threadpool(neg.accepted, conn.site, pid, m, _identity(caller))
    return JSONResponse(msgs.negotiation(n.provider_pid, n.consumer_pid, "ACCEPTED"))


@router.post(
    "/negotiations/{pid}/agreement/verification",
    summary="DSP ContractAgreementVerificationMessage",
    responses={200: _NEGOTIATION, **NEGOTIATION_ERRORS},
    openapi_extra=_body("ContractAgreementVerificationMessage", ["providerPid", "consumerPid"]),
)
async def negotiation_verification(
    pid: str, caller: Consumer, conn: ConnectorDep, request: Request
) -> JSONResponse:
    m = msgs.parse_negotiation_message(
        await _message(request), "ContractAgreementVerificationMessage"
    )
    n, contract = await run_in_threadpool(neg.verified, conn.site, pid, m, _identity(caller))
    if conn.publisher is not None:  # the hub's registry, as for /countersign
        conn.publisher.register_agreed(contract)
    _deliver(conn, n.callback, msgs.event_message(n.provider_pid, n.consumer_pid, "FINALIZED"))
    return JSONResponse(msgs.negotiation(n.provider_pid, n.consumer_pid, "VERIFIED"))


@router.post(
    "/negotiations/{pid}/termination",
    summary="DSP ContractNegotiationTerminationMessage",
    responses={200: _NEGOTIATION, **NEGOTIATION_ERRORS},
    openapi_extra=_body("ContractNegotiationTerminationMessage", ["providerPid", "consumerPid"]),
)
async def negotiation_termination(
    pid: str, caller: Consumer, conn: ConnectorDep, request: Request
) -> JSONResponse:
    m = msgs.parse_negotiation_message(
        await _message(request), "ContractNegotiationTerminationMessage"
    )
    n = await run_in_threadpool(neg.terminated, conn.site, pid, m, _identity(caller))
    return JSONResponse(neg.view(n))


# --- the DSP error shapes ------------------------------------------------------------------


def _dsp_error(path: str, status: int, body: bytes, request_body: bytes) -> bytes | None:
    """The DSP error for one of the services' ``{"error", "detail"}`` answers on a DSP
    path, or None (another path, or not that shape)."""
    try:
        err = json.loads(body)
    except ValueError:
        return None
    if not (isinstance(err, dict) and set(err) == {"error", "detail"}):
        return None
    code, reasons = str(err["error"]), [str(err["detail"])]
    if path.startswith("/catalog/"):
        return json.dumps(msgs.catalog_error(code, reasons)).encode()
    parts = path.split("/")
    provider_pid = parts[2] if len(parts) > 2 and parts[2] != "request" else ""
    consumer_pid = ""
    try:
        sent = json.loads(request_body) if request_body else None
    except ValueError:
        sent = None
    if isinstance(sent, dict):
        cp, pp = sent.get("consumerPid"), sent.get("providerPid")
        consumer_pid = cp[: msgs.MAX_ID] if isinstance(cp, str) else ""
        if not provider_pid and isinstance(pp, str):
            provider_pid = pp[: msgs.MAX_ID]
    return json.dumps(msgs.negotiation_error(provider_pid, consumer_pid, code, reasons)).encode()


class DspErrors:
    """ASGI middleware (outermost): errors on ``/catalog/`` and ``/negotiations`` paths in
    the DSP error shapes (binding: "If an error body is returned, it MUST be a Contract
    Negotiation Error"; "a Catalog Error in the response body"), status kept."""

    def __init__(self, app: ASGIApp, max_body: int = 256 * 1024) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path.startswith("/catalog/") or path.startswith("/negotiations")):
            await self.app(scope, receive, send)
            return
        seen: list[bytes] = []
        size = 0

        async def teeing_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request" and size <= self.max_body:
                chunk = message.get("body", b"")
                size += len(chunk)
                seen.append(chunk)
            return message

        start: Message | None = None
        chunks: list[bytes] = []

        async def rewriting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if message["status"] < 400:
                    await send(message)
                    return
                start = message
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            sent = b"".join(seen) if size <= self.max_body else b""
            new = _dsp_error(path, start["status"], body, sent) or body
            headers = [
                (k, v)
                for k, v in start.get("headers", [])
                if k not in (b"content-length", b"content-type")
            ]
            headers += [
                (b"content-length", str(len(new)).encode()),
                (b"content-type", b"application/json"),
            ]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": new})

        await self.app(scope, teeing_receive, rewriting_send)


def install(app: FastAPI) -> None:
    """The DSP routes and error shapes on the connector ``app`` (its ``create_app``)."""
    app.include_router(router)
    app.add_middleware(DspErrors)
