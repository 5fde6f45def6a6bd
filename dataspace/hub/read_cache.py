"""Encoded answers of the hub's reads, served again while the hub's state is unchanged."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dataspace.hub.store import HubStore

#: catalog pages kept encoded (cleared when full or when the catalog changes)
PAGE_CACHE = 4096


class ReadCache:
    """Encoded answers of the hub's reads, valid while the hub's state is unchanged.

    Answers to reads change only when the state does (``HubStore.generation``
    is bumped by every write). A read route stores its encoded answer with
    :meth:`answer` under (generation, the caller's key, path, raw query
    string); the catalog, whose pages are the same for every caller, under an
    empty key. :class:`ReadCacheMiddleware` answers the next identical read
    without routing, validation or encoding. Failed requests are never stored.
    """

    PATHS = ("/v1/catalog", "/v1/contracts", "/v1/runs", "/v1/budget")

    def __init__(self, store: HubStore, size: int = PAGE_CACHE) -> None:
        self.store, self.size = store, size
        self.entries: dict[tuple[int, str, str, bytes], bytes] = {}

    def key(self, scope: Scope) -> tuple[int, str, str, bytes]:
        path = scope["path"]
        who = "" if path == "/v1/catalog" else scope["state"]["caller"].key_id
        return (self.store.generation, who, path, scope.get("query_string", b""))

    def answer(self, request: Request, obj: Any, generation: int) -> Response:
        """``obj`` as the JSON answer to ``request``, kept for the next identical read if
        the state is still at ``generation`` (read before ``obj`` was computed)."""
        body = json.dumps(obj, separators=(",", ":")).encode()
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
