"""Hub under load: signed catalog queries and contract requests from 50 concurrent clients.

Usage: ``.venv/bin/python bench/hub_load.py [--clients 50] [--duration 20]``

1. Starts ``dataspace serve hub`` on 127.0.0.1 (a subprocess), registers a
   holder, publishes 40 catalog entries and one contract per consumer.
2. Drives it for ``--duration`` seconds from ``--clients`` concurrent asyncio
   clients (one keep-alive HTTP/1.1 connection each, see RawClient), every request
   signed (RFC 9421) by the
   client's own consumer key: 80% catalog searches (random robot type, task,
   minimum quality or text), 20% contract requests to the registry (the
   consumer's own contract list, or one contract by id).
3. Runs the same load, unsigned, against a bare FastAPI app (uvicorn, same
   settings, separate process) whose routes return the very JSON the hub
   answered for each of those requests (captured in step 1).

Hub and bare are measured in alternating slices (``--slices``, default 4, of
``--duration / slices`` seconds each) so both see the same machine load. Each
target is measured twice: closed loop (every client sends its next
request when the last is answered: the saturation throughput, where latency
is only queueing, about clients / rps) and paced (the 50 clients together
offer ``--paced-rps`` requests per second on a fixed schedule: the latency a
user sees below saturation).

Last stdout line: JSON with ``rps`` (hub, saturated), ``ratio`` = hub rps /
bare rps (both saturated), ``p50_ms``, ``p99_ms`` (hub, paced), the bare
numbers and the saturated latencies. Targets: p99 < 100 ms, ratio >= 0.5.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataspace.auth.httpsig import HttpSigAuth, sign_request  # noqa: E402
from dataspace.net import free_port  # noqa: E402
from dataspace.site.identity import load_identity, load_private_key, new_identity  # noqa: E402

ROBOTS = ["so101_follower", "unitree_g1", "franka", "aloha", "ur5e"]
TASKS = ["pick", "place", "open", "pour", "wave", "fold", "stack", "wipe"]

BARE_APP = """
import json, os
from fastapi import FastAPI, Request
from fastapi.responses import Response
answers = json.load(open(os.environ["BARE_ANSWERS"]))
app = FastAPI()

@app.get("/{path:path}")
async def bare(path: str, request: Request) -> Response:
    key = "/" + path + ("?" + request.url.query if request.url.query else "")
    return Response(answers[key], media_type="application/json")
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code in (200, 404):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def entry(i: int) -> dict:
    robot = ROBOTS[i % len(ROBOTS)]
    tasks = [f"{TASKS[(i + k) % len(TASKS)]} the object {k}" for k in range(3)]
    return {
        "dataset_id": f"ds-{i:03d}",
        "fingerprint": f"{i:064x}",
        "dcat": {
            "@context": {"dcat": "http://www.w3.org/ns/dcat#", "dct": "http://purl.org/dc/terms/"},
            "@type": "dcat:Dataset",
            "dct:title": f"dataset {i}",
            "dct:description": f"{50 + i} episodes of {robot} robot data",
        },
        "title": f"dataset {i} of {robot}",
        "robot_type": robot,
        "fps": [30.0, 50.0, 15.0][i % 3],
        "tasks": tasks,
        "episodes": 50 + i,
        "frames": 20_000 + 100 * i,
        "state_dim": 6 + i % 30,
        "action_dim": 6 + i % 30,
        "license": "CC-BY-4.0",
        "quality_score": round(40 + (i * 37) % 60, 1),
        "connector_url": f"http://127.0.0.1:{9000 + i}",
    }


def request_mix(rng: random.Random, contract_ids: list[str]) -> str:
    """One request path (with query) of the workload."""
    x = rng.random()
    if x < 0.2:
        return "/v1/catalog?robot_type=" + rng.choice(ROBOTS)
    if x < 0.4:
        return "/v1/catalog?task=" + rng.choice(TASKS)
    if x < 0.6:
        return f"/v1/catalog?min_quality={rng.choice([50, 70, 90])}"
    if x < 0.8:
        return "/v1/catalog?q=" + rng.choice([*ROBOTS, "dataset 1"]).replace(" ", "+")
    if x < 0.9:
        return "/v1/contracts"
    return "/v1/contracts/" + contract_ids[0]


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx costs about a millisecond of client CPU per request, which on a
    2-core machine shared with the server would measure the client more than
    the server; this one costs a few tens of microseconds (plus signing).
    """

    def __init__(self, host: str, port: int, key) -> None:
        self.host, self.port, self.key = host, port, key

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, target: str) -> tuple[int, bytes]:
        path, _, query = target.partition("?")
        host = f"{self.host}:{self.port}"
        headers: dict[str, str] = {}
        if self.key:  # signed for this hub: the Host below
            headers = sign_request(self.key, "GET", path, query, b"", authority=host)
        head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode())
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return status, body

    def close(self) -> None:
        self.writer.close()


async def drive(
    base: str,
    keys: list,
    contract_ids: list[list[str]],
    duration: float,
    rate: float | None = None,
):
    """``len(keys)`` clients, each in a loop for ``duration`` s; latencies in ms.

    ``rate=None``: closed loop, each client sends its next request as soon as
    the last is answered (saturation: throughput, and latency = queueing).
    ``rate=R``: each client sends R requests per second on a fixed schedule
    (an offered load below saturation: the latency a user sees).

    Connections are opened and warmed up (one request each) before the clock starts.
    """
    lat: list[float] = []
    errors = 0
    u = httpx.URL(base)
    clients = [RawClient(u.host, u.port, k) for k in keys]
    for c in clients:
        await c.open()
    await asyncio.gather(*(c.get("/v1/contracts") for c in clients))
    stop = time.monotonic() + duration

    async def one(i: int) -> None:
        nonlocal errors
        rng = random.Random(i)
        c = clients[i]
        next_t = time.monotonic() + (rng.random() / rate if rate else 0.0)
        while time.monotonic() < stop:
            if rate:
                await asyncio.sleep(max(0.0, next_t - time.monotonic()))
                next_t += 1.0 / rate
            path = request_mix(rng, contract_ids[i])
            t = time.perf_counter()
            status, _ = await c.get(path)
            lat.append((time.perf_counter() - t) * 1000)
            if status != 200:
                errors += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(len(keys))))
    wall = time.monotonic() - t0
    for c in clients:
        c.close()
    return {"lat": lat, "errors": errors, "wall": wall}


def summary(runs: list[dict]) -> dict:
    """Several slices of one workload as one: requests, errors, rps, p50, p99."""
    lat = sorted(x for r in runs for x in r["lat"])
    n = len(lat)
    return {
        "requests": n,
        "errors": sum(r["errors"] for r in runs),
        "rps": round(n / sum(r["wall"] for r in runs), 1),
        "p50_ms": round(lat[n // 2], 2),
        "p99_ms": round(lat[min(n - 1, int(n * 0.99))], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--entries", type=int, default=40)
    ap.add_argument("--slices", type=int, default=4, help="alternating slices per phase")
    ap.add_argument(
        "--paced-rps", type=float, default=100.0, help="offered load of the latency phase"
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="hub-load-"))
    holder_path = tmp / "holder.key"
    new_identity(holder_path, "site-a", "holder")
    holder = load_private_key(holder_path)
    consumers = []
    for i in range(args.clients):
        p = tmp / f"c{i}.key"
        new_identity(p, f"consumer-{i}", "consumer")
        consumers.append((load_private_key(p), load_identity(p).key_b64))

    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dataspace",
            "serve",
            "hub",
            "--data",
            str(tmp / "hub"),
            "--port",
            str(port),
            "--trust",
            str(holder_path) + ".pub",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bare = None
    try:
        wait_ready(hub_url, hub)
        log(f"hub at {hub_url}; publishing {args.entries} entries, {args.clients} contracts")
        contract_ids: list[list[str]] = []
        with httpx.Client(base_url=hub_url, auth=HttpSigAuth(holder), timeout=30) as c:
            for i in range(args.entries):
                c.post("/v1/catalog", json=entry(i)).raise_for_status()
            for i, (_, key_id) in enumerate(consumers):
                cid = f"contract-{i:03d}"
                c.post(
                    "/v1/contracts",
                    json={
                        "contract_id": cid,
                        "dataset_id": f"ds-{i % args.entries:03d}",
                        "fingerprint": f"{i % args.entries:064x}",
                        "consumer": key_id,
                        "purpose": "research",
                        "template": "mlp",
                        "epsilon": 1.0,
                        "delta": 1e-6,
                        "rounds": 10,
                        "until": "2027-01-01T00:00:00Z",
                        "state": "agreed",
                    },
                ).raise_for_status()
                contract_ids.append([cid])

        # the bare endpoint answers exactly what the hub answered for each request
        answers: dict[str, str] = {}
        rng = random.Random(0)
        paths = {request_mix(rng, ["contract-000"]) for _ in range(2000)}
        with httpx.Client(base_url=hub_url, auth=HttpSigAuth(consumers[0][0]), timeout=30) as c:
            for p in sorted(paths | {"/v1/contracts/contract-000", "/v1/contracts"}):
                r = c.get(p)
                r.raise_for_status()
                answers[p] = r.text
        sizes = sorted(len(v) for v in answers.values())
        log(f"{len(answers)} distinct answers, {sizes[0]}..{sizes[-1]} bytes")

        keys = [k for k, _ in consumers]
        rate = args.paced_rps / args.clients

        (tmp / "answers.json").write_text(json.dumps(answers | {"/healthz": "{}"}))
        (tmp / "bare.py").write_text(BARE_APP)
        bport = free_port()
        bare_url = f"http://127.0.0.1:{bport}"
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(tmp),
                "bare:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(bport),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env={**env, "BARE_ANSWERS": str(tmp / "answers.json")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(bare_url, bare)
        nobody = [None] * args.clients
        bare_ids = [["contract-000"]] * args.clients

        # Alternate slices of hub and bare, so that both see the same machine load
        # (this machine is shared; its load changes within a minute).
        slice_s = args.duration / args.slices
        runs: dict[str, list[dict]] = {k: [] for k in ("hub", "bare", "hub_p", "bare_p")}
        for k in range(args.slices):
            log(f"slice {k + 1}/{args.slices}: closed loop, {slice_s:.1f} s each")
            runs["hub"].append(asyncio.run(drive(hub_url, keys, contract_ids, slice_s)))
            runs["bare"].append(asyncio.run(drive(bare_url, nobody, bare_ids, slice_s)))
        for k in range(args.slices):
            log(f"slice {k + 1}/{args.slices}: paced at {args.paced_rps:g} req/s")
            runs["hub_p"].append(asyncio.run(drive(hub_url, keys, contract_ids, slice_s, rate)))
            runs["bare_p"].append(asyncio.run(drive(bare_url, nobody, bare_ids, slice_s, rate)))
        hub_sat, bare_sat = summary(runs["hub"]), summary(runs["bare"])
        hub_paced, bare_paced = summary(runs["hub_p"]), summary(runs["bare_p"])
        for name, r in (
            ("hub", hub_sat),
            ("bare", bare_sat),
            ("hub paced", hub_paced),
            ("bare paced", bare_paced),
        ):
            log(f"{name}: {r}")
    finally:
        for p in (hub, bare):
            if p is not None:
                p.terminate()
                p.wait(10)

    out = {
        "clients": args.clients,
        "duration_s": args.duration,
        "requests": hub_sat["requests"] + hub_paced["requests"],
        "errors": hub_sat["errors"] + hub_paced["errors"],
        # throughput: closed loop (saturation)
        "rps": hub_sat["rps"],
        "bare_rps": bare_sat["rps"],
        "ratio": round(hub_sat["rps"] / bare_sat["rps"], 3),
        # latency at the paced offered load
        "offered_rps": args.paced_rps,
        "p50_ms": hub_paced["p50_ms"],
        "p99_ms": hub_paced["p99_ms"],
        "bare_p50_ms": bare_paced["p50_ms"],
        "bare_p99_ms": bare_paced["p99_ms"],
        # latency at saturation (queueing: about clients / rps)
        "saturated_p50_ms": hub_sat["p50_ms"],
        "saturated_p99_ms": hub_sat["p99_ms"],
        "bare_saturated_p50_ms": bare_sat["p50_ms"],
        "bare_saturated_p99_ms": bare_sat["p99_ms"],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
