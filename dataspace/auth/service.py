"""What every dataspace service shares: signed callers, roles, JSON errors, body limits.

* :class:`SignedRequests` is a pure ASGI middleware that reads the body (up to
  a limit), verifies the RFC 9421 signature (:mod:`dataspace.auth.httpsig`)
  and puts the :class:`Caller` into the request's state, before any route
  code or body parsing runs: an unsigned request never reaches a handler.
* :func:`require` is the FastAPI dependency that lets a route name the roles
  that may call it (403 otherwise).
* :func:`install_error_handlers` turns every error into one JSON shape,
  ``{"error": CODE, "detail": MESSAGE}``, the :class:`ErrorBody` model that
  each route documents in OpenAPI.

Roles: a key the service knows (its directory: registered participants, the
site's own key, the hub's key) has the role it was registered with. Any other
key that signs correctly is a ``consumer``: in a data space anyone may browse
the catalog and ask for a contract; the holder's policy decides what they get.

Limits (documented in each service's OpenAPI description): request bodies up
to :data:`MAX_BODY` bytes (413 above), signatures within ±300 s (401).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dataspace.auth.httpsig import WINDOW_S, NonceStore, SignatureError, verify_request
from dataspace.errors import DataspaceError, RefusedError
from dataspace.policy.identity import ROLES

log = logging.getLogger("dataspace.service")

#: largest request body a service reads (bytes); DCAT entries and contracts are a few kB
MAX_BODY = 256 * 1024

#: paths that need no signature (health, the API description)
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"})
#: log routes anyone may call: the checkpoint is a size and a root, and a C2SP
#: witness request is authenticated by the log signature it carries
PUBLIC_LOG = frozenset({"/v1/log/checkpoint", "/v1/log/add-checkpoint"})

SIGNATURE_DOC = f"""
**Authentication.** Every request except `/healthz` and the API description is
signed with the caller's Ed25519 identity key, HTTP message signatures (RFC 9421)
over `@method`, `@path`, `@query` and `content-digest` (RFC 9530, sha-256 of the
body, present even when the body is empty), with parameters `created` (UNIX
seconds, within ±{WINDOW_S} s of the server clock), `nonce` (16–128 base64url
characters, never reused), `keyid` (the raw public key in standard base64) and
`alg="ed25519"`, label `sig1`. See `dataspace.auth.httpsig`.

**Errors** are JSON `{{"error": CODE, "detail": MESSAGE}}`: 401 for a missing,
malformed, stale, replayed or wrong signature or a body that does not match its
digest; 403 when the caller's role or the policy refuses; 404 for what does not
exist (or is not the caller's to see); 413 for a body over {MAX_BODY} bytes;
400/422 for malformed input.
"""


class ErrorBody(BaseModel):
    """Every error any service answers."""

    error: str = Field(description="machine-readable code, e.g. replayed_request")
    detail: str = Field(description="what was wrong, naming the value at fault")


#: the error responses every signed route can give (for OpenAPI and schemathesis)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody, "description": d}
    for s, d in (
        (400, "malformed input"),
        (401, "missing, malformed, stale, replayed or wrong signature"),
        (403, "refused by role or policy"),
        (404, "not found"),
        (409, "conflicts with what is recorded"),
        (413, "request body too large"),
        (422, "request does not match the schema"),
    )
}


class RoleError(RefusedError):
    """A correctly signed caller whose role may not call this route."""

    code = "role_forbidden"


class BodyTooLargeError(DataspaceError):
    http_status = 413
    code = "body_too_large"


def error_code(e: DataspaceError) -> str:
    """The ``error`` field: a class's ``code`` or its name in snake case without 'Error'."""
    code = getattr(type(e), "code", None)
    if isinstance(code, str):
        return code
    name = type(e).__name__.rstrip("_").removesuffix("Error") or "error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


@dataclass(frozen=True)
class Caller:
    """The verified caller of one request."""

    key_id: str  # base64 raw public key
    name: str
    role: str
    known: bool  # False: an unregistered key, treated as a consumer


#: given a key id, (name, role) when the service knows the key
Directory = Callable[[str], tuple[str, str] | None]
#: called with (request scope, error, caller or None) for every 401/403
RefusalHook = Callable[[Scope, DataspaceError, Caller | None], None]


class SignedRequests:
    """ASGI middleware: body limit, then signature check, then the app."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        nonces: NonceStore,
        directory: Directory,
        on_refused: RefusalHook | None = None,
        max_body: int = MAX_BODY,
        window_s: int = WINDOW_S,
        public_paths: frozenset[str] = PUBLIC_PATHS,
    ) -> None:
        self.app = app
        self.nonces = nonces
        self.directory = directory
        self.on_refused = on_refused
        self.max_body = max_body
        self.window_s = window_s
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            declared = int(headers.get("content-length", "0"))
        except ValueError:
            declared = 0
        if declared > self.max_body:
            await _send_error(
                scope,
                receive,
                send,
                BodyTooLargeError(
                    f"request body of {declared} bytes is over the limit of {self.max_body}"
                ),
            )
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _send_error(
                    scope,
                    receive,
                    send,
                    BodyTooLargeError(f"request body is over the limit of {self.max_body} bytes"),
                )
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)

        if scope["path"] not in self.public_paths:
            raw_path = scope.get("raw_path") or scope["path"].encode()
            path = raw_path.split(b"?")[0].decode("latin-1")
            query = scope.get("query_string", b"").decode("latin-1")
            try:
                v = verify_request(
                    scope["method"],
                    path,
                    query,
                    headers,
                    body,
                    self.nonces,
                    window_s=self.window_s,
                )
            except SignatureError as e:
                self._refused(scope, e, None)
                await _send_error(scope, receive, send, e)
                return
            known = self.directory(v.key_id)
            name, role = known if known else ("", "consumer")
            caller = Caller(key_id=v.key_id, name=name, role=role, known=known is not None)
            scope.setdefault("state", {})["caller"] = caller

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _refused(self, scope: Scope, e: DataspaceError, caller: Caller | None) -> None:
        log.warning("refused %s %s: %s", scope.get("method"), scope.get("path"), e)
        if self.on_refused is not None:
            try:
                self.on_refused(scope, e, caller)
            except Exception:  # a failing log must not turn a 401 into a 500
                log.exception("could not record a refusal")


async def _send_error(scope: Scope, receive: Receive, send: Send, e: DataspaceError) -> None:
    await error_response(e.http_status, error_code(e), str(e))(scope, receive, send)


async def caller_of(request: Request) -> Caller:
    caller = getattr(request.state, "caller", None)
    if caller is None:  # a route outside the middleware's reach: refuse, never guess
        raise SignatureError("this route needs a signed request")
    return caller


def require(*roles: str) -> Callable[[Request], Awaitable[Caller]]:
    """FastAPI dependency: the caller, if its role is one of ``roles`` (403 otherwise)."""
    for r in roles:
        if r not in ROLES:
            raise ValueError(f"unknown role {r!r}")

    async def dependency(request: Request) -> Caller:
        caller = await caller_of(request)
        if caller.role not in roles:
            raise RoleError(
                f"role {caller.role!r} (key {caller.key_id}) may not call "
                f"{request.method} {request.url.path}; it needs {' or '.join(roles)}"
            )
        return caller

    return dependency


def require_unless_public(public: frozenset[str], *roles: str):
    """Like :func:`require`, but paths in ``public`` (also public in the middleware) pass."""
    inner = require(*roles)

    async def dependency(request: Request) -> Caller | None:
        if request.url.path in public:
            return None
        return await inner(request)

    return dependency


def install_error_handlers(app: FastAPI, on_refused: RefusalHook | None = None) -> None:
    """Every error becomes ``{"error", "detail"}``; refusals (401/403) go to ``on_refused``."""

    @app.exception_handler(DataspaceError)
    async def _dataspace_error(request: Request, e: DataspaceError) -> JSONResponse:
        if e.http_status in (401, 403) and on_refused is not None:
            try:
                on_refused(request.scope, e, getattr(request.state, "caller", None))
            except Exception:
                log.exception("could not record a refusal")
        return error_response(e.http_status, error_code(e), str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        if any(err.get("type") == "json_invalid" for err in errors):
            msg = next(err.get("ctx", {}).get("error", "") for err in errors)
            return error_response(400, "malformed_json", f"request body is not JSON: {msg}")
        parts = []
        for err in errors[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        detail = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        return error_response(e.status_code, code, detail)
