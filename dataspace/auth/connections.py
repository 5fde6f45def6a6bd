"""Bounded connections: what uvicorn does not bound by itself (docs/services.md, "Limits").

uvicorn (0.49) closes a connection that idles *between* requests after
``timeout_keep_alive``, but it waits for a request's headers for ever, from the
connection's first byte or from none at all, and it accepts connections until the
process runs out of file descriptors (its ``limit_concurrency`` answers 503 only
once a whole request has arrived). 22,000 half-sent requests took a connector past
its file limit. :func:`bounded_protocol` wraps uvicorn's HTTP protocol class so that:

* a request's headers arrive within ``header_timeout_s`` of the connection (or of
  the first byte after the previous answer), else the connection is closed, with a
  408 if part of a request had come;
* a request's headers are at most ``max_header_bytes`` (431 and closed otherwise);
  h11 has its own bound, httptools none;
* at most ``ConnectionLimits.connections()`` connections are open: at the limit, the
  connection that has waited longest for its headers (a half-sent request, or one
  idle between requests) is closed to make room; one that is serving a request is
  never closed, and a new connection that finds only those is refused with a 503.
  A flood of half-open connections therefore costs the attacker its own
  connections, not the service's legitimate clients, whose headers come at once.

The body deadline is the app's (:class:`dataspace.auth.service.SignedRequests`, 408
in the services' error shape). :func:`serve` runs an app on a bound socket with it;
the values and why: :mod:`dataspace.auth.limits`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from dataspace.auth.limits import ConnectionLimits

log = logging.getLogger("dataspace.service")

#: seconds an idle connection is kept between requests (uvicorn's timeout_keep_alive)
KEEP_ALIVE_S = 30


def _answer(status: int, reason: str, code: str, detail: str) -> bytes:
    """A whole HTTP/1.1 error response in the services' one shape, closing the connection."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Bounded:
    """Mixin over a uvicorn HTTP protocol class (module docstring); ``limits`` is set by
    :func:`bounded_protocol`. It relies on what both of uvicorn's classes share: the
    server's ``connections`` set, ``transport``, ``cycle`` (made once a request's
    headers are parsed) and the ``connection_made``/``data_received``/
    ``on_response_complete``/``connection_lost`` hooks."""

    limits: ConnectionLimits
    connections: set[Any]
    transport: asyncio.Transport
    cycle: Any
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting = True  # waiting for a request's headers (evictable)
        self._header_bytes = 0
        self._since = self.loop.time()
        if not self._make_room():
            busy = "the service is at its connection limit; retry later"
            self._close(_answer(503, "Service Unavailable", "too_many_connections", busy))
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting:
            if self._deadline is None:  # the first byte of the next request on this connection
                self._since = self.loop.time()
                self._arm()
            self._header_bytes += len(data)
        before = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:  # uvicorn parsed a request's headers: it made a cycle
            self._awaiting = False
            self._header_bytes = 0
            self._disarm()
        elif self._awaiting and self._header_bytes > self.limits.max_header_bytes:
            big = f"request headers over {self.limits.max_header_bytes} bytes"
            self._close(_answer(431, "Request Header Fields Too Large", "headers_too_large", big))

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # idle now, unless a pipelined request started (its cycle is not complete)
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._awaiting = True
            self._header_bytes = 0
            self._since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    # --- the header deadline ---------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._late)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if not self._awaiting or self.transport.is_closing():
            return
        if self._header_bytes:  # part of a request came: say why it ends
            late = f"request headers not received within {self.limits.header_timeout_s:g} s"
            self._close(_answer(408, "Request Timeout", "request_timeout", late))
        else:
            self._close(b"")

    def _close(self, answer: bytes) -> None:
        self._awaiting = False
        self._disarm()
        if answer:
            self.transport.write(answer)
        self.transport.close()  # after what was written is sent

    # --- the connection limit ----------------------------------------------------------------
    def _make_room(self) -> bool:
        """Under the limit, or made so by closing the connection that has waited longest
        for its headers; False when every other connection is serving a request."""
        limit = self.limits.connections()
        live = [c for c in self.connections if not c.transport.is_closing()]
        excess = len(live) - limit
        if excess <= 0:
            return True
        idle = sorted(
            (c for c in live if c is not self and getattr(c, "_awaiting", False)),
            key=lambda c: c._since,
        )
        for c in idle[:excess]:
            c._close(b"")
        if len(idle) < excess:
            log.warning("connection limit %d reached, every connection busy: refused", limit)
            return False
        return True


def bounded_protocol(limits: ConnectionLimits, base: type[asyncio.Protocol] | None = None) -> type:
    """uvicorn's HTTP protocol class (httptools if installed, else h11) under ``limits``."""
    if base is None:
        try:  # what uvicorn's "auto" picks
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        except ImportError:
            base = H11Protocol
        else:
            base = HttpToolsProtocol
    return type(f"Bounded{base.__name__}", (_Bounded, base), {"limits": limits})


def server_config(
    app: Any,
    limits: ConnectionLimits,
    log_level: str = "warning",
    base: type[asyncio.Protocol] | None = None,
    **kw: Any,
) -> uvicorn.Config:
    """A uvicorn config for a service app under ``limits`` (keep-alive :data:`KEEP_ALIVE_S`);
    ``base``: uvicorn's HTTP protocol class to bound (default: what uvicorn would pick)."""
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        http=bounded_protocol(limits, base),
        # h11's own bound on a request's headers, the same as ours
        h11_max_incomplete_event_size=limits.max_header_bytes,
        **kw,
    )


def serve(app: Any, sock: socket.socket, limits: ConnectionLimits, log_level: str) -> None:
    """Run ``app`` on the bound ``sock`` until stopped (``dataspace serve hub|connector``)."""
    uvicorn.Server(server_config(app, limits, log_level)).run(sockets=[sock])
