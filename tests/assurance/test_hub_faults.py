"""Faults: kill -9 the hub while holders publish (each publication is a log append), restart.

Afterwards every publication the hub acknowledged (HTTP 200) is in its log, the
log's signed checkpoint covers all of its entries, the restarted hub serves the
same catalog and accepts new publications.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from dataspace.audit.checkpoint import parse_checkpoint
from dataspace.audit.events import parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.merkle import root_hash
from dataspace.audit.note import parse_note
from dataspace.auth.httpsig import HttpSigAuth
from tests.services.conftest import Service, free_port, make_party

pytestmark = pytest.mark.slow


def _entry(n: int) -> dict:
    return {
        "dataset_id": f"ds-{n:05d}",
        "fingerprint": f"{n:064x}",
        "dcat": {"@context": {"dcat": "http://www.w3.org/ns/dcat#"}, "@type": "dcat:Dataset"},
        "title": f"dataset {n}",
        "robot_type": "so101_follower",
        "fps": 30.0,
        "tasks": ["pick"],
        "episodes": 4,
        "frames": 1492,
    }


def test_kill_9_hub_during_log_appends(tmp_path: Path) -> None:
    holder = make_party(tmp_path, "site-a", "holder")
    port = free_port()
    args = ["hub", "--data", str(tmp_path / "hub"), "--trust", str(holder.key_path) + ".pub"]
    hub = Service(args, port, tmp_path / "hub.log")
    acked: list[str] = []
    stop = threading.Event()

    def publish() -> None:
        with httpx.Client(base_url=hub.url, auth=HttpSigAuth(holder.key), timeout=30) as c:
            n = 0
            while not stop.is_set():
                try:
                    r = c.post("/v1/catalog", json=_entry(n))
                except httpx.TransportError:
                    return  # the hub died under us
                if r.status_code == 200:
                    acked.append(_entry(n)["dataset_id"])
                n += 1

    try:
        hub.wait_ready()
        t = threading.Thread(target=publish)
        t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        hub.proc.send_signal(signal.SIGKILL)
        hub.proc.wait(30)
        stop.set()
        t.join(60)
        assert len(acked) >= 5
        # the log on disk: every acknowledged publication, and a checkpoint over all entries
        with TransparencyLog.open(tmp_path / "hub" / "log") as log:
            entries = list(log.entries(0, log.size))
            cp = parse_checkpoint(parse_note(log.checkpoint()).text)
        logged = [parse_event(e).fields.get("dataset_id") for e in entries]
        assert set(acked) <= set(logged)
        assert cp.size == len(entries) and cp.root == root_hash(entries)
        # restart on the same data: same catalog, and it takes new publications
        hub = Service(args, port, tmp_path / "hub2.log")
        hub.wait_ready()
        with httpx.Client(base_url=hub.url, auth=HttpSigAuth(holder.key), timeout=30) as c:
            listed = {d["dataset_id"] for d in c.get("/v1/catalog?limit=1000").json()["entries"]}
            assert set(acked) <= listed
            assert c.post("/v1/catalog", json=_entry(99_999)).status_code == 200
    finally:
        stop.set()
        hub.stop()
