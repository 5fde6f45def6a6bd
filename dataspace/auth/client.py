"""Signed HTTP clients for the services, and their errors as typed exceptions.

A service answers errors as ``{"error": CODE, "detail": MESSAGE}``;
:func:`check` turns such an answer into the matching :class:`ServiceError`
subclass (401/403: refused, exit code 3; 404: not found), so the CLI prints
the service's own precise message. A service that cannot be reached is a
:class:`ServiceUnavailableError`. Callers branch on these types, never on text.
"""

from __future__ import annotations

from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.auth.httpsig import HttpSigAuth
from dataspace.errors import DataspaceError, NotFoundError, RefusedError

TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class ServiceError(DataspaceError):
    """A service answered with an error (``status``, ``code``, ``detail``), or could not
    be reached (:class:`ServiceUnavailableError`: no status)."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str = "", detail: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail
        if status is not None:
            self.http_status = status


class ServiceRefusedError(ServiceError, RefusedError):
    """401/403 from a service: the signature, the role or the policy refused."""


class ServiceNotFoundError(ServiceError, NotFoundError):
    """404 from a service."""


class ServiceUnavailableError(ServiceError):
    """The service could not be reached."""


def signed_client(base_url: str, key: Ed25519PrivateKey, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=base_url, auth=HttpSigAuth(key), timeout=TIMEOUT, **kw)


def check(resp: httpx.Response) -> Any:
    """The JSON of a 2xx answer; otherwise raise the typed error it describes."""
    if resp.is_success:
        return resp.json() if resp.content else None
    try:
        body = resp.json()
        code, detail = str(body["error"]), str(body["detail"])
    except (ValueError, KeyError, TypeError):
        code, detail = "http_error", resp.text[:500]
    cls: type[ServiceError] = ServiceError
    if resp.status_code in (401, 403):
        cls = ServiceRefusedError
    elif resp.status_code == 404:
        cls = ServiceNotFoundError
    url, status = resp.request.url, resp.status_code
    raise cls(f"{url}: {status} {code}: {detail}", status=status, code=code, detail=detail)


def call(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    """One request; connection failures become :class:`ServiceUnavailableError`."""
    try:
        resp = client.request(method, path, **kw)
    except httpx.TransportError as e:
        raise ServiceUnavailableError(f"cannot reach {client.base_url}{path}: {e}") from e
    return check(resp)
