"""Issue 20 against real processes on loopback: a hub and two connectors (``dataspace serve``).

* a request signed for one service is refused by every other one (attack 3);
* half-open requests cannot hold a service (attack 4): headers must arrive within the
  header deadline and bodies within the body deadline, and at the connection limit the
  connection that has waited longest for its headers makes room, so a legitimate signed
  request still succeeds while hundreds of half-sent ones are held open against it.

The hub runs under a file limit of 256 (its connection limit follows: 128), so that a
few hundred sockets would exhaust it if connections were not bounded.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dataspace.auth.httpsig import HttpSigAuth, sign_url_request
from dataspace.net import free_port
from tests.services.conftest import PYTHON, Service, make_party, run_cli

pytestmark = pytest.mark.slow

#: the hub's file limit in this test, and how many half-open sockets it is sent
FILE_LIMIT = 256
HALF_OPEN = 400
#: the deadlines the hub runs with here (seconds; the defaults are 10 and 30)
HEADER_S = 2
BODY_S = 2


class LimitedService(Service):
    """A ``dataspace serve`` process with a soft file limit of :data:`FILE_LIMIT`."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.port, self.url, self.log = port, f"http://127.0.0.1:{port}", log

        def limit() -> None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, hard))

        self.proc = subprocess.Popen(
            [PYTHON, "-m", "dataspace", "serve", *args, "--port", str(port)],
            stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit,
        )


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("bounded")
    keys = tmp / "keys"
    keys.mkdir()
    auditor = make_party(keys, "auditor", "auditor")
    alice = make_party(keys, "alice", "consumer")
    sites = []
    for name in ("site-a", "site-b"):
        run_cli("connector", "init", str(tmp / name), "--org", f"Org {name}", "--name", name)
        sites.append(tmp / name)
    args = ["hub", "--data", str(tmp / "hub"), "--trust", str(auditor.key_path) + ".pub"]
    args += [x for s in sites for x in ("--trust", str(s / "site.key.pub"))]
    args += ["--header-timeout", str(HEADER_S), "--body-timeout", str(BODY_S)]
    started: list[Service] = []
    try:
        hub = LimitedService(args, free_port(), tmp / "hub.log")
        started.append(hub)
        hub.wait_ready()
        for s in sites:
            trust = ["--trust", str(auditor.key_path) + ".pub"]
            c = Service(["connector", str(s), "--hub", hub.url, *trust], free_port(), s / "log.txt")
            started.append(c)
        for c in started[1:]:
            c.wait_ready(until=lambda h: h["published"])
        yield {"hub": hub, "a": started[1], "b": started[2], "auditor": auditor, "alice": alice}
    finally:
        for s in started:
            s.stop()


def test_a_request_signed_for_one_service_is_refused_by_the_others(space):
    hub, a, b, auditor = space["hub"], space["a"], space["b"], space["auditor"]
    a_host = {"Host": a.url.removeprefix("http://")}
    # an auditor reads connector A's log; A replays the headers to B and to the hub, with
    # A's Host (not theirs) or with theirs (then the signature, over A's, does not verify)
    for target in (b, hub):
        for host, error in ((a_host, "misdirected_request"), ({}, "bad_signature")):
            h = sign_url_request(auditor.key, "GET", a.url + "/v1/log/entries")
            r = httpx.get(target.url + "/v1/log/entries", headers=h | host, timeout=30)
            assert (r.status_code, r.json()["error"]) == (401, error), r.text
    h = sign_url_request(auditor.key, "GET", a.url + "/v1/log/entries")
    r = httpx.get(a.url + "/v1/log/entries", headers=h, timeout=30)  # where it was meant
    assert r.status_code == 200, r.text
    # a consumer's request to the hub, replayed by the hub to a connector
    h = sign_url_request(space["alice"].key, "GET", hub.url + "/v1/contracts")
    hub_host = {"Host": hub.url.removeprefix("http://")}
    r = httpx.get(a.url + "/v1/contracts", headers=h | hub_host, timeout=30)
    assert (r.status_code, r.json()["error"]) == (401, "misdirected_request"), r.text
    # the same service under its other loopback name is still itself
    local = hub.url.replace("127.0.0.1", "localhost")
    r = httpx.get(local + "/v1/whoami", auth=HttpSigAuth(auditor.key), timeout=30)
    assert r.status_code == 200 and r.json()["role"] == "auditor", r.text


def _half_open(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that each send the start of a request and never finish it."""
    out = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /v1/hub HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: %d\r\n" % i)
        out.append(s)
    return out


def _closed_by_server(s: socket.socket) -> bool:
    """True once the server closed ``s`` (EOF, a reset, or a 408 answer before EOF)."""
    s.settimeout(0.05)
    try:
        data = s.recv(65536)
    except TimeoutError:
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 408")


def test_half_open_requests_cannot_hold_the_service(space):
    hub, auditor = space["hub"], space["auditor"]
    socks = _half_open(hub.port, HALF_OPEN)
    try:
        started = time.monotonic()
        # a signed request from a legitimate client still succeeds, and so does /healthz
        with httpx.Client(base_url=hub.url, auth=HttpSigAuth(auditor.key), timeout=10) as c:
            r = c.get("/v1/whoami")
            assert r.status_code == 200 and r.json()["role"] == "auditor", r.text
        assert httpx.get(hub.url + "/healthz", timeout=10).status_code == 200
        assert time.monotonic() - started < HEADER_S, "served only once the deadline freed it"
        # every half-sent request is closed by the header deadline (or made room earlier)
        deadline = time.monotonic() + HEADER_S + 5
        open_ = list(socks)
        while open_ and time.monotonic() < deadline:
            open_ = [s for s in open_ if not _closed_by_server(s)]
            time.sleep(0.2)
        assert not open_, f"{len(open_)} of {HALF_OPEN} half-open requests still held"
    finally:
        for s in socks:
            s.close()


def test_a_body_that_never_arrives_is_answered_408(space):
    hub = space["hub"]
    with contextlib.closing(socket.create_connection(("127.0.0.1", hub.port), timeout=10)) as s:
        s.sendall(
            b"POST /v1/catalog HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"dataset'
        )
        s.settimeout(BODY_S + 10)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"error":"request_timeout"' in answer.replace(b" ", b"")


def test_headers_larger_than_the_limit_are_refused(space):
    hub = space["hub"]
    with contextlib.closing(socket.create_connection(("127.0.0.1", hub.port), timeout=10)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(OSError):  # the server may close while this still writes
            for i in range(100):
                s.sendall(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000))
        s.settimeout(10)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


@pytest.mark.parametrize("impl", ["h11", "httptools"])
def test_either_http_protocol_is_bounded(impl):
    """The bound holds over both of uvicorn's HTTP implementations (h11 where httptools is
    not installed), in process: a trivial app, a limit of 8 connections, a 1 s deadline."""
    import threading

    import uvicorn

    from dataspace.auth.connections import server_config
    from dataspace.auth.limits import ConnectionLimits

    if impl == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    else:
        base = pytest.importorskip("uvicorn.protocols.http.httptools_impl").HttpToolsProtocol

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = ConnectionLimits(header_timeout_s=1.0, max_connections=8)
    port = free_port()
    server = uvicorn.Server(server_config(app, limits, base=base, host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        socks = _half_open(port, 20)
        r = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert (r.status_code, r.text) == (200, "ok")
        time.sleep(limits.header_timeout_s + 1)
        assert all(_closed_by_server(s) for s in socks)
        for s in socks:
            s.close()
    finally:
        server.should_exit = True
        thread.join(10)
