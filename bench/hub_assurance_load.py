"""Load (issue 8): the hub under 100 concurrent clients while log appends run.

    .venv/bin/python bench/hub_assurance_load.py [--clients 100] [--publishers 10] [--seconds 20]

Starts ``dataspace serve hub`` on 127.0.0.1 (a subprocess). ``clients -
publishers`` consumers query the catalog in a loop; ``publishers`` holder
clients publish new catalog entries in a loop, each a ``catalog.published``
append to the hub's log. Afterwards the hub is stopped and its log read from
disk: every acknowledged (HTTP 200) publication must be in the log exactly
once (no lost, no duplicated entry) and the log's checkpoint must cover it.

Last stdout line: JSON with ``clients``, ``requests``, ``rps``, ``p50_ms``,
``p99_ms`` (and per kind, ``p99_read_ms``, ``p99_publish_ms``), ``appends_acked``,
``appends_logged``, ``lost``, ``duplicated`` and ``ratio`` (logged over acknowledged
appends; 1.0 when nothing is lost); ``hub_cpu_s`` and ``client_cpu_s``, the CPU time
the hub process and this one (the 100 clients) used while the load ran.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from dataspace.audit.events import parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.auth.httpsig import HttpSigAuth
from dataspace.net import free_port
from dataspace.site.identity import load_private_key, new_identity


def entry(pub: int, n: int) -> dict:
    ds = f"ds-{pub:03d}-{n:06d}"
    return {
        "dataset_id": ds,
        "fingerprint": f"{pub * 1_000_000 + n:064x}",
        "dcat": {"@context": {"dcat": "http://www.w3.org/ns/dcat#"}, "@type": "dcat:Dataset"},
        "title": f"{ds} demonstrations",
        "robot_type": "so101_follower",
        "fps": 30.0,
        "tasks": ["pick"],
        "episodes": 4,
        "frames": 1492,
        "quality_score": 80.0,
    }


async def reader(c: httpx.AsyncClient, stop: float, lat: list[tuple[str, float]]) -> None:
    while time.monotonic() < stop:
        t = time.perf_counter()
        r = await c.get("/v1/catalog?robot_type=so101_follower")
        lat.append(("read", time.perf_counter() - t))
        if r.status_code >= 500:
            raise RuntimeError(f"hub answered {r.status_code}: {r.text}")


async def publisher(
    c: httpx.AsyncClient, pub: int, stop: float, lat: list[tuple[str, float]], acked: list
) -> None:
    n = 0
    while time.monotonic() < stop:
        e = entry(pub, n)
        t = time.perf_counter()
        r = await c.post("/v1/catalog", json=e)
        lat.append(("publish", time.perf_counter() - t))
        if r.status_code == 200:
            acked.append(e["dataset_id"])
        elif r.status_code >= 500:
            raise RuntimeError(f"hub answered {r.status_code}: {r.text}")
        n += 1


async def drive(url: str, holder, consumer, clients: int, publishers: int, seconds: float):
    lat: list[tuple[str, float]] = []
    acked: list[str] = []
    # every client is made before the clock starts, sharing one TLS context: httpx builds
    # one per client (~35 ms of CPU loading CA certificates, even for http://), and 100 of
    # them built while the first requests are in flight block this event loop for seconds,
    # which the first run of this benchmark (p99 4.3 s) measured as hub latency
    tls = ssl.create_default_context()
    hs = [httpx.AsyncClient(base_url=url, auth=HttpSigAuth(holder), timeout=60, verify=tls)
          for _ in range(publishers)]  # fmt: skip
    cs = [httpx.AsyncClient(base_url=url, auth=HttpSigAuth(consumer), timeout=60, verify=tls)
          for _ in range(clients - publishers)]  # fmt: skip
    stop = time.monotonic() + seconds
    tasks = [publisher(c, p, stop, lat, acked) for p, c in enumerate(hs)]
    tasks += [reader(c, stop, lat) for c in cs]
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*tasks)
    finally:
        for c in hs + cs:
            await c.aclose()
    return lat, acked, time.perf_counter() - t0


def p99(ms: np.ndarray) -> float | None:
    return round(float(np.percentile(ms, 99)), 1) if len(ms) else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--publishers", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        new_identity(tmp / "holder.key", name="site-a", role="holder")
        new_identity(tmp / "alice.key", name="alice", role="consumer")
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dataspace", "serve", "hub", "--data", str(tmp / "hub"),
             "--port", str(port), "--trust", str(tmp / "holder.key.pub")],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "hub.log", "wb"),  # noqa: SIM115
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 240
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((tmp / "hub.log").read_text())
                time.sleep(0.2)
            print(f"hub ready; {args.clients} clients for {args.seconds}s", file=sys.stderr)
            hub_ps, me = psutil.Process(proc.pid), psutil.Process()
            cpu0 = (sum(hub_ps.cpu_times()[:2]), sum(me.cpu_times()[:2]))
            lat, acked, wall = asyncio.run(
                drive(url, load_private_key(tmp / "holder.key"),
                      load_private_key(tmp / "alice.key"), args.clients, args.publishers,
                      args.seconds)
            )  # fmt: skip
            hub_cpu = sum(hub_ps.cpu_times()[:2]) - cpu0[0]
            client_cpu = sum(me.cpu_times()[:2]) - cpu0[1]
        finally:
            proc.terminate()
            proc.wait(30)
        with TransparencyLog.open(tmp / "hub" / "log") as log:
            kinds = [parse_event(e) for e in log.entries(0, log.size)]
        logged = collections.Counter(
            e.fields.get("dataset_id") for e in kinds if e.kind == "catalog.published"
        )
    acked_set = set(acked)
    lost = sorted(acked_set - set(logged))
    dup = sorted(k for k, v in logged.items() if v > 1)
    ms = np.asarray([t for _, t in lat]) * 1000
    by_kind = {k: np.asarray([t for kk, t in lat if kk == k]) * 1000 for k in ("read", "publish")}
    out = {
        "clients": args.clients,
        "publishers": args.publishers,
        "seconds": args.seconds,
        "requests": len(lat),
        "rps": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "p99_read_ms": p99(by_kind["read"]),
        "p99_publish_ms": p99(by_kind["publish"]),
        "appends_acked": len(acked),
        "appends_logged": sum(logged[k] for k in acked_set),
        "lost": len(lost),
        "duplicated": len(dup),
        "ratio": round(sum(1 for k in acked_set if k in logged) / max(1, len(acked_set)), 4),
        "hub_cpu_s": round(hub_cpu, 1),
        "client_cpu_s": round(client_cpu, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
