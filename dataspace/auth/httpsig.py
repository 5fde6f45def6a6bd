"""HTTP message signatures (RFC 9421) with Ed25519 keys, over a Content-Digest (RFC 9530).

Every request to the hub or a connector is signed by its caller's identity key
(``dataspace.site.identity``): a participant *is* its public key, so the key
id is the raw 32-byte Ed25519 public key in standard base64.

What is signed (RFC 9421 section 2.5, the signature base), always these
components in this order::

    "@method": POST
    "@authority": hub.example:8000
    "@path": /v1/contracts
    "@query": ?dataset=so101
    "content-digest": sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:
    "@signature-params": ("@method" "@authority" "@path" "@query" "content-digest");\
                         created=1764082800;nonce="...";keyid="...";alg="ed25519"   (one line)

sent as ``Signature-Input: sig1=(...);created=...;nonce=...;keyid=...;alg="ed25519"``,
``Signature: sig1=:BASE64:`` and ``Content-Digest: sha-256=:BASE64:`` (RFC 9530
section 2, the digest of the body as sent; the empty body has one too, so a
body cannot be added to a signed GET). ``@query`` is ``?`` for no query
(RFC 9421 section 2.2.7). ``@authority`` (section 2.2.3) is the ``Host`` the request
is sent to, lower case, without the scheme's default port: it binds the request to the
one service the client meant, so a service that received it cannot replay it to
another (each service accepts only its own names, :func:`verify_request`'s
``authorities``).

A verifier (:func:`verify_request`) checks, in this order: the headers parse;
the covered components are exactly the ones above (so nothing security
relevant can be left out; a signature of the older profile, without
``@authority``, is :class:`UnboundSignatureError`); the ``Host`` is one of the
service's own names (:class:`MisdirectedRequestError`); ``alg`` is ed25519; the
key id is a 32-byte key;
``created`` lies within ``window_s`` of the verifier's clock (section 7.2.2);
the digest matches the body received; the signature verifies; and only then
that the (key, nonce) pair was never seen within the window (section 7.2.2,
replay), so an attacker cannot burn someone else's nonces with forged
requests. Each failure is its own error class with the value at fault.

This is a profile of RFC 9421, not all of it: one signature label (``sig1``),
one algorithm, a fixed component list. Structured-field parsing (RFC 8941) is
done strictly for exactly the forms this profile produces.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import secrets
import time
from collections.abc import Collection, Generator, Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dataspace.errors import DataspaceError
from dataspace.site.identity import public_bytes

LABEL = "sig1"
COMPONENTS = ("@method", "@authority", "@path", "@query", "content-digest")
#: what clients signed before requests were bound to their service (issue 20)
UNBOUND_COMPONENTS = ("@method", "@path", "@query", "content-digest")
ALG = "ed25519"
#: how far ``created`` may lie from the verifier's clock, either way (seconds)
WINDOW_S = 300
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


class SignatureError(DataspaceError):
    """A request whose signature is missing, malformed, stale, replayed or wrong (HTTP 401)."""

    http_status = 401
    code = "bad_signature"


class MissingSignatureError(SignatureError):
    code = "missing_signature"


class MalformedSignatureError(SignatureError):
    code = "malformed_signature"


class StaleRequestError(SignatureError):
    code = "stale_request"


class DigestMismatchError(SignatureError):
    code = "digest_mismatch"


class ReplayedRequestError(SignatureError):
    code = "replayed_request"


class UnboundSignatureError(MalformedSignatureError):
    """A signature that does not cover ``@authority``: from a client that predates
    requests bound to one service (it must be updated)."""

    code = "unbound_signature"


class MisdirectedRequestError(SignatureError):
    """A request signed for (or sent with the ``Host`` of) another service."""

    code = "misdirected_request"


class NonceStore(Protocol):
    def check_and_add(self, key_id: str, nonce: str, expires: float, now: float) -> bool:
        """Record (key_id, nonce) until ``expires``; False if it was already there."""
        ...


@dataclass(frozen=True)
class VerifiedRequest:
    """What a verifier learned: who signed, when, with which nonce."""

    key_id: str  # base64 of the raw public key: the caller's identity
    public_key: bytes
    created: int
    nonce: str


# --- building blocks ------------------------------------------------------------


def content_digest(body: bytes) -> str:
    """RFC 9530 ``Content-Digest`` field value with sha-256."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def signature_params(created: int, nonce: str, key_id: str) -> str:
    """The ``@signature-params`` value (RFC 9421 section 2.3), also the Signature-Input member."""
    comps = " ".join(f'"{c}"' for c in COMPONENTS)
    return f'({comps});created={created};nonce="{nonce}";keyid="{key_id}";alg="{ALG}"'


def normalize_authority(host: str, scheme: str = "http") -> str:
    """``@authority`` (RFC 9421 section 2.2.3): the Host in lower case, without the
    scheme's default port (``hub.example:80`` over http is ``hub.example``)."""
    value = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme.lower())
    if default and value.endswith(default):
        value = value[: -len(default)]
    return value


_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def signature_base(
    method: str, authority: str, path: str, query: str, digest: str, params: str
) -> bytes:
    """The signature base (RFC 9421 section 2.5); ``query`` without its leading ``?``,
    ``authority`` normalised (:func:`normalize_authority`)."""
    lines = [
        f'"@method": {method.upper()}',
        f'"@authority": {authority}',
        f'"@path": {path or "/"}',
        f'"@query": ?{query}',
        f'"content-digest": {digest}',
        f'"@signature-params": {params}',
    ]
    return "\n".join(lines).encode()


def key_id_of(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    return base64.b64encode(public_bytes(key)).decode()


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def sign_request(
    key: Ed25519PrivateKey,
    method: str,
    path: str,
    query: str,
    body: bytes,
    *,
    authority: str,
    scheme: str = "http",
    created: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The three headers that sign one request (any HTTP client can send them).

    ``path`` and ``query`` exactly as they go on the wire (percent-encoded,
    query without ``?``); ``authority``: the ``Host`` the request goes to (the
    service it is meant for), e.g. ``127.0.0.1:8000``.
    """
    created = int(time.time()) if created is None else created
    nonce = nonce or new_nonce()
    digest = content_digest(body)
    params = signature_params(created, nonce, key_id_of(key))
    target = normalize_authority(authority, scheme)
    sig = key.sign(signature_base(method, target, path, query, digest, params))
    return {
        "Content-Digest": digest,
        "Signature-Input": f"{LABEL}={params}",
        "Signature": f"{LABEL}=:{base64.b64encode(sig).decode()}:",
    }


def sign_url_request(
    key: Ed25519PrivateKey, method: str, url: str, body: bytes = b""
) -> dict[str, str]:
    """:func:`sign_request` for a full URL (e.g. from a ``requests`` or schemathesis hook):
    signed for the URL's host and port, which the client must send as its ``Host``."""
    u = httpx.URL(url)
    path = u.raw_path.split(b"?")[0].decode()
    return sign_request(
        key, method, path, u.query.decode(), body, authority=_netloc(u), scheme=u.scheme
    )


def _netloc(u: httpx.URL) -> str:
    """The URL's host[:port] as httpx sends it in ``Host``."""
    return u.netloc.decode("ascii")


class HttpSigAuth(httpx.Auth):
    """``httpx`` authentication: signs every request with an identity key.

    >>> client = httpx.Client(base_url=hub, auth=HttpSigAuth(load_private_key(path)))
    """

    requires_request_body = True

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        path = request.url.raw_path.split(b"?")[0].decode()
        # signed for the Host it is sent to: the one service this request is meant for
        host = request.headers.get("host") or _netloc(request.url)
        headers = sign_request(
            self.key,
            request.method,
            path,
            request.url.query.decode(),
            request.content,
            authority=host,
            scheme=request.url.scheme,
        )
        request.headers.update(headers)
        yield request


# --- parsing (RFC 8941, strictly the forms of this profile) ---------------------

_INPUT_RE = re.compile(
    r"^(?P<label>[a-z*][a-z0-9_.*-]*)=\((?P<comps>[^)]*)\)(?P<params>(;[^;]+)*)$"
)
_PARAM_RE = re.compile(r'^(?P<name>[a-z*][a-z0-9_.*-]*)=(?P<value>"[^"\\]*"|-?[0-9]{1,15})$')
_SIG_RE = re.compile(r"^(?P<label>[a-z*][a-z0-9_.*-]*)=:(?P<sig>[A-Za-z0-9+/=]*):$")


def parse_signature_input(value: str) -> tuple[str, tuple[str, ...], dict[str, str | int]]:
    """Parse one ``Signature-Input`` member into (label, components, parameters)."""
    m = _INPUT_RE.match(value.strip())
    if not m:
        raise MalformedSignatureError(
            f"Signature-Input {value[:200]!r} is not label=(components);params"
        )
    comps_raw = m["comps"].split()
    comps = []
    for c in comps_raw:
        if len(c) < 2 or c[0] != '"' or c[-1] != '"':
            raise MalformedSignatureError(f"component {c!r} is not a quoted string")
        comps.append(c[1:-1])
    params: dict[str, str | int] = {}
    for p in m["params"].split(";")[1:]:
        pm = _PARAM_RE.match(p)
        if not pm:
            raise MalformedSignatureError(f"signature parameter {p!r} is malformed")
        if pm["name"] in params:
            raise MalformedSignatureError(f"signature parameter {pm['name']!r} given twice")
        v = pm["value"]
        params[pm["name"]] = v[1:-1] if v.startswith('"') else int(v)
    return m["label"], tuple(comps), params


def parse_signature(value: str) -> tuple[str, bytes]:
    m = _SIG_RE.match(value.strip())
    if not m:
        raise MalformedSignatureError(f"Signature {value[:200]!r} is not label=:base64:")
    try:
        return m["label"], base64.b64decode(m["sig"], validate=True)
    except ValueError as e:
        raise MalformedSignatureError(f"Signature is not valid base64: {e}") from e


# --- verification ---------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise MissingSignatureError(
            f"request has no {name} header; sign it with RFC 9421 "
            f"(components {' '.join(COMPONENTS)}, created, nonce, keyid, alg=ed25519)"
        )
    return value


@functools.lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    nonces: NonceStore,
    *,
    authorities: Collection[str],
    scheme: str = "http",
    now: float | None = None,
    window_s: int = WINDOW_S,
) -> VerifiedRequest:
    """Check one received request; raise a :class:`SignatureError` subclass naming what failed.

    ``headers`` must be case-insensitive (Starlette's and httpx's are) and hold the
    ``Host`` the request was sent to; ``authorities``: this service's own names
    (normalised ``host[:port]``), the only ``@authority`` it accepts.
    """
    now = time.time() if now is None else now
    label, comps, params = parse_signature_input(_header(headers, "signature-input"))
    sig_label, sig = parse_signature(_header(headers, "signature"))
    if label != LABEL or sig_label != LABEL:
        raise MalformedSignatureError(
            f"signature label is {label!r}/{sig_label!r}; this service reads {LABEL!r} only"
        )
    if comps == UNBOUND_COMPONENTS:
        raise UnboundSignatureError(
            f"signature covers {list(comps)} but not @authority: it is not bound to this "
            f"service; sign {list(COMPONENTS)} (update the client: dataspace.auth.httpsig)"
        )
    if comps != COMPONENTS:
        raise MalformedSignatureError(
            f"signature covers {list(comps)}; it must cover exactly {list(COMPONENTS)}"
        )
    authority = _authority(headers, scheme, authorities)
    if set(params) != {"created", "nonce", "keyid", "alg"}:
        raise MalformedSignatureError(
            f"signature parameters are {sorted(params)}; expected alg, created, keyid, nonce"
        )
    if params["alg"] != ALG:
        raise MalformedSignatureError(f"alg {params['alg']!r} is not supported; use {ALG!r}")
    created, nonce, key_id = params["created"], params["nonce"], params["keyid"]
    if not isinstance(created, int) or not isinstance(nonce, str) or not isinstance(key_id, str):
        raise MalformedSignatureError("created must be an integer, nonce and keyid strings")
    if not _NONCE_RE.match(nonce):
        raise MalformedSignatureError(
            f"nonce {nonce[:40]!r} must be 16-128 characters of base64url"
        )
    try:
        raw_key = base64.b64decode(key_id, validate=True)
    except ValueError as e:
        raise MalformedSignatureError(f"keyid {key_id[:60]!r} is not base64: {e}") from e
    if len(raw_key) != 32:
        raise MalformedSignatureError(
            f"keyid decodes to {len(raw_key)} bytes; an Ed25519 key has 32"
        )
    if abs(created - now) > window_s:
        raise StaleRequestError(
            f"signature created at {created} is {created - now:+.0f} s from the server's "
            f"clock ({int(now)}); the window is ±{window_s} s"
        )
    digest = _header(headers, "content-digest")
    expected = content_digest(body)
    if digest.strip() != expected:
        raise DigestMismatchError(
            f"Content-Digest {digest[:80]!r} does not match the body received "
            f"({len(body)} bytes, {expected})"
        )
    try:
        _public_key(raw_key).verify(
            sig,
            signature_base(
                method,
                authority,
                path,
                query,
                digest.strip(),
                signature_params(created, nonce, key_id),
            ),
        )
    except (InvalidSignature, ValueError) as e:
        raise SignatureError(
            f"signature does not verify for key {key_id} over {method.upper()} {authority}{path}"
        ) from e
    if not nonces.check_and_add(key_id, nonce, created + window_s + 1, now):
        raise ReplayedRequestError(
            f"nonce {nonce!r} of key {key_id} was already used; the request is a replay"
        )
    return VerifiedRequest(key_id=key_id, public_key=raw_key, created=created, nonce=nonce)


def _authority(headers: Mapping[str, str], scheme: str, authorities: Collection[str]) -> str:
    """The request's ``@authority``, if it names this service (one of ``authorities``)."""
    host = headers.get("host")
    if not host:
        raise MalformedSignatureError("request has no Host header; @authority is signed")
    authority = normalize_authority(host, scheme)
    if authority not in authorities:
        # its own names are not listed: they may be internal addresses
        raise MisdirectedRequestError(
            f"request is for {authority[:200]!r}, which is not a name of this service: a "
            "signed request is valid only at the service it was signed for (a service "
            "behind another name lists it with `dataspace serve ... --authority`)"
        )
    return authority
