"""What both services share (the hub, the connector service): one front door, :func:`service_app`.

:func:`service_app` builds a FastAPI app with everything the two services do alike,
so each ``create_app`` adds only its own routers and state:

* :class:`SignedRequests`, a pure ASGI middleware that reads the body (up to a
  limit), refuses JSON nested too deeply or with absurd numbers, verifies the
  RFC 9421 signature (:mod:`dataspace.auth.httpsig`) and puts the :class:`Caller`
  into the request's state, before any route code or body parsing runs: an
  unsigned request never reaches a handler;
* :class:`PrivatePaths`, which keeps local paths out of every error answer;
* :func:`install_error_handlers`: every error of either service is one JSON
  shape, ``{"error": CODE, "detail": MESSAGE}``, the :class:`ErrorBody` model
  that each route documents in OpenAPI (:data:`ERROR_RESPONSES`);
* :class:`Refusals`: every 401/403 is recorded, a known caller's in the
  service's signed log, an unauthenticated one's in a local JSON-lines file.

Routes name the roles that may call them with :func:`require` (403 otherwise)
or take any signed caller with :data:`AnyCaller`; the audit log's routes are
guarded by :func:`log_access`.

Roles: a key the service knows (its directory: registered participants, the
site's own key, the hub's key) has the role it was registered with. Any other
key that signs correctly is a ``consumer``: in a data space anyone may browse
the catalog and ask for a contract; the holder's policy decides what they get.

Limits (documented in each service's OpenAPI description): request bodies up
to :data:`MAX_BODY` bytes (413 above), JSON nested at most :data:`MAX_JSON_DEPTH`
levels with numbers of at most :data:`MAX_JSON_DIGITS` digits (400 ``malformed_json``
otherwise, checked on the raw bytes before anything parses them), signatures
within ±300 s (401), the body received within :data:`BODY_TIMEOUT_S` s of its
headers (408 ``request_timeout``). What the connection layer bounds before a request
reaches the app (header deadline, header size, number of connections) is
:class:`dataspace.auth.limits.ConnectionLimits`, enforced by :mod:`dataspace.auth.connections`.

Each service accepts only requests signed for itself: the signature covers
``@authority`` (the ``Host``), which must be one of the service's names, those it is
given (``authorities``: ``--authority``, a connector's public URL) and the address
the connection arrived at (``localhost:PORT`` too when that is a loopback address).

What a remote caller reads never names a local file: error details go through
:func:`public_detail`, which replaces the service's own folders (and any other
absolute path of this machine) with ``<local path>``, and :class:`PrivatePaths`
applies it to every error response, also to those of routers that answer their
errors themselves (the audit log's).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from dataspace.audit.tiles import TILE_PATH_RE
from dataspace.auth.httpsig import (
    WINDOW_S,
    NonceStore,
    SignatureError,
    normalize_authority,
    verify_request,
)
from dataspace.auth.limits import BODY_TIMEOUT_S, DEFAULT_LIMITS, ConnectionLimits
from dataspace.auth.nonces import FileNonceStore
from dataspace.errors import DataspaceError, RefusedError
from dataspace.site.identity import ROLES

log = logging.getLogger("dataspace.service")

#: largest request body a service reads (bytes); DCAT entries and contracts are a few kB
MAX_BODY = 256 * 1024
#: deepest JSON nesting a service parses; DCAT entries, ODRL policies and agreements
#: nest a few levels, and deeper documents make recursive code (parsers, validators,
#: canonical JSON) run out of stack
MAX_JSON_DEPTH = 64
#: most digits of one number in a JSON body: every numeric field has a range far
#: below this, and longer integers overflow floats or Python's int parsing (4300)
MAX_JSON_DIGITS = 300

#: paths that need no signature (health, the API description)
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"})
#: DSP 2025-1: the version endpoint "MUST be unversioned and unauthenticated"; and the
#: connector's robot vocabulary (dataspace.connectors.routes.dsp)
PUBLIC_DSP = frozenset({"/.well-known/dspace-version", "/vocab/robot.ttl"})
#: the ODRL profile's ontology and JSON-LD context (dataspace.connectors.routes.vocab)
PUBLIC_VOCAB = frozenset({"/odrl", "/odrl/v1", "/odrl/v1/profile.ttl", "/odrl/v1/context.jsonld"})
#: log routes anyone may call: the checkpoint is a size and a root, and a C2SP
#: witness request is authenticated by the log signature it carries; the witness key
#: is signed by the service's identity (dataspace.audit.witnesskey)
PUBLIC_LOG = frozenset({"/v1/log/checkpoint", "/v1/log/add-checkpoint", "/v1/log/witness-key"})
#: and by pattern: C2SP tlog-tiles hash tiles (hashes, like the checkpoint's root; entry
#: bundles are the entries, for signed readers only) and the witness's monitoring route
#: (C2SP tlog-witness: cosigned checkpoints); the log router checks each path strictly
PUBLIC_LOG_RE = re.compile(r"/v1/log/[0-9a-f]{64}/checkpoint")


def public_log(path: str) -> bool:
    """Whether ``path`` is a log route anyone may call (:data:`PUBLIC_LOG`, ``PUBLIC_LOG_RE``,
    a hash tile in tlog-tiles' path grammar: ``dataspace.audit.tiles.TILE_PATH_RE``)."""
    if path in PUBLIC_LOG or PUBLIC_LOG_RE.fullmatch(path) is not None:
        return True
    if not path.startswith("/v1/log/"):
        return False
    m = TILE_PATH_RE.fullmatch(path.removeprefix("/v1/log/"))
    return m is not None and m["level"] != "entries"

SIGNATURE_DOC = f"""
**Authentication.** Every request except `/healthz` and the API description is
signed with the caller's Ed25519 identity key, HTTP message signatures (RFC 9421)
over `@method`, `@authority`, `@path`, `@query` and `content-digest` (RFC 9530, sha-256
of the body, present even when the body is empty), with parameters `created` (UNIX
seconds, within ±{WINDOW_S} s of the server clock), `nonce` (16–128 base64url
characters, never reused), `keyid` (the raw public key in standard base64) and
`alg="ed25519"`, label `sig1`. See `dataspace.auth.httpsig`. `@authority` is the `Host`
the request is sent to; a service accepts only its own names (401 `misdirected_request`
otherwise; 401 `unbound_signature` for a signature without `@authority`).

**Errors** are JSON `{{"error": CODE, "detail": MESSAGE}}`: 401 for a missing,
malformed, stale, replayed, misdirected or wrong signature or a body that does not
match its digest; 403 when the caller's role or the policy refuses; 404 for what does
not exist (or is not the caller's to see); 408 for a body not received within
{BODY_TIMEOUT_S:.0f} s of its headers; 413 for a body over {MAX_BODY} bytes;
400/422 for malformed input (400 `malformed_json` also for JSON nested deeper
than {MAX_JSON_DEPTH} levels or a number of more than {MAX_JSON_DIGITS} digits).
No error detail names a file of the service's machine.
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


class MalformedJsonError(DataspaceError):
    """A body that is not JSON the service will parse (e.g. nested too deeply)."""

    code = "malformed_json"


class RequestTimeoutError(DataspaceError):
    """A request whose body (or headers) did not arrive within the service's deadline."""

    http_status = 408
    code = "request_timeout"


@functools.lru_cache(maxsize=256)
def local_authorities(host: str, port: int | None, scheme: str) -> frozenset[str]:
    """The names a connection that arrived at ``host:port`` reached this service by: the
    address itself, and ``localhost:PORT`` when it is a loopback address."""
    if port is None:
        return frozenset()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return frozenset({normalize_authority(f"{host}:{port}", scheme)})
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    names = [f"[{ip}]" if ip.version == 6 else str(ip)]
    if ip.is_loopback:
        names.append("localhost")
    return frozenset(normalize_authority(f"{n}:{port}", scheme) for n in names)


def authority_of(url_or_name: str) -> str:
    """``host[:port]`` of a URL (``http://hub:8000/x`` -> ``hub:8000``) or of a bare name."""
    if "://" not in url_or_name:
        return normalize_authority(url_or_name)
    scheme, rest = url_or_name.split("://", 1)
    return normalize_authority(rest.split("/", 1)[0].rsplit("@", 1)[-1], scheme)


@functools.lru_cache(maxsize=8)
def _json_patterns(max_digits: int) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """(a digit run too long, the bytes that matter: brackets, quotes, backslashes, and
    digit runs too long for any number of these APIs)."""
    run = b"[0-9]{%d}" % (max_digits + 1)
    return re.compile(run), re.compile(rb'[\[\]{}"\\]|' + run)


def json_problem(
    body: bytes, max_depth: int = MAX_JSON_DEPTH, max_digits: int = MAX_JSON_DIGITS
) -> str | None:
    """Why ``body`` is JSON no service will parse, or None: nested more than
    ``max_depth`` brackets deep, or a number of more than ``max_digits`` digits
    (outside strings both).

    A linear scan of the raw bytes (no parsing, no recursion), exact for JSON and
    for JSON lines; for other text it errs towards refusing only text that opens
    more than ``max_depth`` brackets or holds such a digit run, which no body of
    these services does. Most bodies pass on two byte counts and one search, in C.
    """
    long_run, tokens = _json_patterns(max_digits)
    if body.count(b"[") + body.count(b"{") <= max_depth and long_run.search(body) is None:
        return None  # the common case: cannot be deeper than that, no long number
    depth = 0
    in_string = False
    escaped_at = -1
    for m in tokens.finditer(body):
        i = m.start()
        if i == escaped_at:
            continue
        c = body[i]
        if in_string:
            if c == 0x5C:  # backslash: the next byte is escaped
                escaped_at = i + 1
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                return f"request body nests JSON more than {max_depth} levels deep"
        elif c in (0x5D, 0x7D):
            depth = max(depth - 1, 0)
        elif 0x30 <= c <= 0x39:
            return f"request body has a number of more than {max_digits} digits"
    return None


# --- what a remote caller may read: no local paths ----------------------------------

PATH_PLACEHOLDER = "<local path>"
#: characters that end a path in a message (quotes, brackets, separators)
_PATH_CHARS = r"[^\s'\"`<>|,;:()\[\]{}\\]"
#: an absolute POSIX path: a slash not inside a word, a URL or a relative path
_ABS_PATH = re.compile(rf"(?:(?<=file://)|(?<![\w.~:/\\-]))/{_PATH_CHARS}*")
#: first path segments that are this API's routes, never local folders
_ROUTE_ROOTS = frozenset({"v1", "dashboard", "healthz", "docs", "redoc", "openapi.json"})


@functools.lru_cache(maxsize=1024)
def _local_top(segment: str) -> bool:
    """Whether ``/segment`` is a folder of this machine (/tmp, /home, /srv, ...)."""
    if not segment or segment in _ROUTE_ROOTS:
        return False
    try:
        return os.path.isdir("/" + segment)
    except (OSError, ValueError):
        return False


def _roots(private: Iterable[str | os.PathLike[str]]) -> tuple[str, ...]:
    out: set[str] = set()
    for p in private:
        s = os.fspath(p)
        if not s:
            continue
        out.add(s)
        with contextlib.suppress(OSError, ValueError):
            out.add(os.path.realpath(s))
    # longest first, so that a folder inside another is replaced whole
    return tuple(sorted((r for r in out if len(r) > 1), key=len, reverse=True))


def public_detail(text: str, private: Iterable[str | os.PathLike[str]] = ()) -> str:
    """``text`` with every local filesystem path replaced by ``<local path>``.

    ``private``: the service's own folders (the site root, the hub's data folder),
    replaced wherever they occur; any other absolute path whose top folder exists
    on this machine (``/tmp/...``, ``/home/...``) is replaced too. API paths
    (``/v1/...``) and URLs are kept.
    """
    for root in _roots(private):
        if root in text:
            text = re.sub(re.escape(root) + _PATH_CHARS + "*", PATH_PLACEHOLDER, text)
    if "/" not in text:
        return text

    def repl(m: re.Match[str]) -> str:
        path = m.group(0)
        return PATH_PLACEHOLDER if _local_top(path[1:].split("/", 1)[0]) else path

    return _ABS_PATH.sub(repl, text)


def _scrub_json(value: Any, private: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return public_detail(value, private)
    if isinstance(value, dict):
        return {k: _scrub_json(v, private) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(v, private) for v in value]
    return value


class PrivatePaths:
    """ASGI middleware: error responses (4xx, 5xx) never name a local path.

    The error handlers already answer with :func:`public_detail`; this also covers
    routers that build their error responses themselves (``dataspace.auth.log_api``:
    ``{"error", "detail"}`` JSON and text/plain witness errors). Successful answers
    pass untouched (they may be signed: nothing in them is rewritten).
    """

    def __init__(self, app: ASGIApp, *, private: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.app = app
        self.private = _roots(private)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def scrubbing_send(message: Message) -> None:
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
            body = self._scrub(start, b"".join(chunks))
            headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, scrubbing_send)

    def _scrub(self, start: Message, body: bytes) -> bytes:
        ctype = b""
        for k, v in start.get("headers", []):
            if k == b"content-type":
                ctype = v
        if b"json" in ctype:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            else:
                clean = _scrub_json(doc, self.private)
                return body if clean == doc else json.dumps(clean).encode()
        text = body.decode("utf-8", "surrogateescape")
        clean_text = public_detail(text, self.private)
        return body if clean_text == text else clean_text.encode("utf-8", "surrogateescape")


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
        max_json_depth: int = MAX_JSON_DEPTH,
        window_s: int = WINDOW_S,
        public_paths: frozenset[str] = PUBLIC_PATHS,
        authorities: Iterable[str] = (),
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.app = app
        #: the names of this service besides the address a connection arrives at
        self.authorities = frozenset(authority_of(a) for a in authorities)
        self.body_timeout_s = body_timeout_s
        self.max_json_depth = max_json_depth
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
        try:
            if declared > self.max_body:
                raise BodyTooLargeError(
                    f"request body of {declared} bytes is over the limit of {self.max_body}"
                )
            async with asyncio.timeout(self.body_timeout_s):
                body = await self._read_body(receive)
        except TimeoutError:
            late = RequestTimeoutError(
                f"request body not received within {self.body_timeout_s:g} s of its headers"
            )
            await send_error(scope, receive, send, late, close=True)
            return
        except BodyTooLargeError as e:
            await send_error(scope, receive, send, e, close=True)
            return
        if body is None:  # the client went away
            return
        problem = json_problem(body, self.max_json_depth)
        if problem is not None:  # before anything parses it, the signature check included
            await send_error(scope, receive, send, MalformedJsonError(problem))
            return

        if scope["path"] not in self.public_paths and not (
            self.public_paths >= PUBLIC_LOG and public_log(scope["path"])
        ):
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
                    authorities=self._names(scope),
                    scheme=scope.get("scheme", "http"),
                    window_s=self.window_s,
                )
            except SignatureError as e:
                self._refused(scope, e, None)
                await send_error(scope, receive, send, e)
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

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None if the client disconnected; over the limit: 413."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLargeError(f"request body is over the limit of {self.max_body} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _names(self, scope: Scope) -> frozenset[str]:
        """Every ``@authority`` this service accepts on this request's connection."""
        server = scope.get("server")
        if not server:
            return self.authorities
        scheme = scope.get("scheme", "http")
        return self.authorities | local_authorities(str(server[0]), server[1], scheme)

    def _refused(self, scope: Scope, e: DataspaceError, caller: Caller | None) -> None:
        log.warning("refused %s %s: %s", scope.get("method"), scope.get("path"), e)
        if self.on_refused is not None:
            try:
                self.on_refused(scope, e, caller)
            except Exception:  # a failing log must not turn a 401 into a 500
                log.exception("could not record a refusal")


async def send_error(
    scope: Scope, receive: Receive, send: Send, e: DataspaceError, *, close: bool = False
) -> None:
    """Answer ``e`` in the one error shape; ``close``: and end the connection (its body
    was not read to the end, so the next bytes on it are not a request)."""
    response = error_response(e.http_status, error_code(e), str(e))
    if close:
        response.headers["connection"] = "close"
    await response(scope, receive, send)


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


#: a route parameter: the signed caller, whatever its role
AnyCaller = Annotated[Caller, Depends(caller_of)]


def log_access(appender: str) -> Callable[[Request], Awaitable[None]]:
    """FastAPI dependency of the audit log's routes (``/v1/log/...``).

    Appends by the role ``appender`` only (the hub's operator, the site's holder).
    The checkpoint and the C2SP witness endpoint (:data:`PUBLIC_LOG`) are public:
    the checkpoint is a size and a root, and a witness request is authenticated by
    the log signature it carries. Entries and proofs name consumers and contracts,
    so they need a holder, auditor or operator key.
    """
    append = require(appender)
    read = require("holder", "auditor", "operator")

    async def dependency(request: Request) -> None:
        path = request.url.path
        if path.endswith("/append"):
            await append(request)
        elif not public_log(path):
            await read(request)

    return dependency


def install_error_handlers(
    app: FastAPI,
    on_refused: RefusalHook | None = None,
    *,
    private: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Every error becomes ``{"error", "detail"}``; refusals (401/403) go to ``on_refused``.

    Details are :func:`public_detail`: ``private`` (the service's folders) and any
    other local path are replaced by ``<local path>``. The handlers read both from
    ``app.state`` (``on_refused``, ``private_roots``).
    """
    app.state.on_refused = on_refused
    app.state.private_roots = _roots(private)
    app.add_exception_handler(DataspaceError, _dataspace_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RecursionError, _too_deep)
    app.add_exception_handler(Exception, _internal_error)


def _scrubbed(request: Request, text: str) -> str:
    return public_detail(text, getattr(request.app.state, "private_roots", ()))


async def _dataspace_error(request: Request, e: DataspaceError) -> JSONResponse:
    on_refused: RefusalHook | None = getattr(request.app.state, "on_refused", None)
    if e.http_status in (401, 403) and on_refused is not None:
        try:
            on_refused(request.scope, e, getattr(request.state, "caller", None))
        except Exception:  # a failing log must not turn a 403 into a 500
            log.exception("could not record a refusal")
    return error_response(e.http_status, error_code(e), _scrubbed(request, str(e)))


async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    errors = e.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        msg = next((err.get("ctx", {}).get("error", "") for err in errors if err.get("ctx")), "")
        detail = _scrubbed(request, f"request body is not JSON: {msg}")
        return error_response(400, "malformed_json", detail)
    parts = []
    for err in errors[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    detail = _scrubbed(request, "; ".join(parts) or "invalid request")
    return error_response(422, "invalid_request", detail)


#: the ``error`` code of an HTTP error Starlette or FastAPI raise themselves
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    if e.status_code == 400:
        # FastAPI's answer to a body json.loads could not read for a reason other than
        # a syntax error: not UTF-8, an integer of too many digits, too deep
        return error_response(
            400,
            "malformed_json",
            "request body could not be parsed as JSON (it must be UTF-8 JSON with "
            f"numbers of at most {MAX_JSON_DIGITS} digits, nested at most "
            f"{MAX_JSON_DEPTH} levels)",
        )
    code = _HTTP_CODES.get(e.status_code, "http_error")
    detail = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
    return error_response(e.status_code, code, _scrubbed(request, detail))


async def _too_deep(request: Request, e: Exception) -> JSONResponse:
    # the depth limit (SignedRequests) keeps bodies shallow; this is the net under it
    return error_response(
        400, "malformed_json", f"request nests too deeply (at most {MAX_JSON_DEPTH} levels)"
    )


async def _internal_error(request: Request, e: Exception) -> JSONResponse:
    # a bug: logged here with its traceback, answered without any of its text
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=e)
    return error_response(500, "internal_error", "internal error; see the service's log")


# --- refusals and the app itself ------------------------------------------------------


class Refusals:
    """Records every refusal (401/403) of a service: the :data:`RefusalHook` it installs.

    A known caller's refusal goes to the service's signed log through ``to_log(caller,
    error, what)`` (``what``: reason, detail, method, path); one refused before the
    caller was authenticated goes to the local JSON-lines file ``path`` instead, with
    the time (a bad signature must not make the signed log grow). The detail is
    :func:`public_detail`: the log is read by remote auditors.
    """

    def __init__(
        self,
        path: Path,
        to_log: Callable[[Caller, DataspaceError, dict[str, Any]], None],
        private: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.path, self.to_log, self.private = path, to_log, _roots(private)

    def __call__(self, scope: Scope, e: DataspaceError, caller: Caller | None) -> None:
        what = {
            "reason": error_code(e),
            "detail": public_detail(str(e), self.private)[:500],
            "method": scope.get("method"),
            "path": scope.get("path"),
        }
        if caller is not None:
            self.to_log(caller, e, what)
            return
        line = {"time": datetime.now(UTC).isoformat(timespec="seconds"), **what}
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
        finally:
            os.close(fd)


def service_app(
    *,
    title: str,
    summary: str,
    doc: str | None,
    nonces: Path,
    directory: Directory,
    refusals: Refusals,
    private: Sequence[str | os.PathLike[str]],
    window_s: int = WINDOW_S,
    authorities: Iterable[str] = (),
    limits: ConnectionLimits = DEFAULT_LIMITS,
    inner: Sequence[Middleware] = (),
    outer: Sequence[Middleware] = (),
    lifespan: Lifespan[FastAPI] | None = None,
) -> FastAPI:
    """A service's FastAPI app with everything both services share; routers come next.

    ``doc``: the service module's docstring (its first paragraph describes the API);
    ``nonces``: the file of nonces seen (replay guard); ``directory``: who a key is;
    ``private``: the service's folders, never named to a remote caller;
    ``authorities``: the names (``host[:port]`` or URLs) clients reach it by besides
    the address they connect to (signed requests name one, :mod:`~.httpsig`);
    ``limits``: its body deadline (the rest is the connection layer's). ``inner``
    middleware runs after the signature check (the caller is known), ``outer``
    before anything else (e.g. the hub's unsigned dashboard). The middleware, from
    the outside in: ``outer``, :class:`PrivatePaths`, :class:`SignedRequests`, ``inner``.
    """
    app = FastAPI(
        title=title,
        version="1",
        summary=summary,
        description=(doc or "").split("\n\n", 1)[0] + "\n" + SIGNATURE_DOC,
        responses=ERROR_RESPONSES,
        lifespan=lifespan,
        middleware=[
            *outer,
            # error answers (the log router's own included) never name a local path
            Middleware(PrivatePaths, private=private),
            Middleware(
                SignedRequests,
                nonces=FileNonceStore(nonces),
                directory=directory,
                on_refused=refusals,
                public_paths=PUBLIC_PATHS | PUBLIC_LOG | PUBLIC_VOCAB | PUBLIC_DSP,
                window_s=window_s,
                authorities=authorities,
                body_timeout_s=limits.body_timeout_s,
            ),
            *inner,
        ],
    )
    install_error_handlers(app, refusals, private=private)
    return app
