"""Faults: kill -9 the hub while holders publish (each publication is a log append), or in
the middle of a contract negotiation (between storing the contract and logging it); restart.

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
from dataspace.net import free_port
from tests.services.conftest import Service, make_party


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


@pytest.mark.slow
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
        # an append returns after its checkpoint is stored, so every acknowledged entry is
        # under the checkpoint; a kill between a batch's commit and its checkpoint leaves
        # an unacknowledged tail past it, which the next writable open signs
        assert cp.size <= len(entries) and cp.root == root_hash(entries[: cp.size])
        assert set(acked) <= set(logged[: cp.size])
        # restart on the same data: same catalog, and it takes new publications
        hub = Service(args, port, tmp_path / "hub2.log")
        hub.wait_ready()
        with httpx.Client(base_url=hub.url, auth=HttpSigAuth(holder.key), timeout=30) as c:
            listed = {d["dataset_id"] for d in c.get("/v1/catalog?limit=1000").json()["entries"]}
            assert set(acked) <= listed
            assert c.post("/v1/catalog", json=_entry(99_999)).status_code == 200
        with TransparencyLog.open(tmp_path / "hub" / "log") as log:  # the tail is signed now
            entries = list(log.entries(0, log.size))
            cp = parse_checkpoint(parse_note(log.checkpoint()).text)
        assert cp.size == len(entries) and cp.root == root_hash(entries)
    finally:
        stop.set()
        hub.stop()


# --- kill -9 the hub in the middle of a contract negotiation ------------------------------


def _hub_trusted(tmp_path: Path) -> Path:
    """A trusted-keys file for ``dataspace audit verify`` of the hub's log (its own key)."""
    path = tmp_path / "hub.trusted"
    path.write_text(f"log {tmp_path / 'hub' / 'hub.key.pub'}\n")
    return path


def _verify_hub_log(tmp_path: Path) -> dict:
    """``dataspace audit verify HUB/log --trusted-keys ... --json``; the report."""
    import json

    from click.testing import CliRunner

    from dataspace.cli import cli

    # self-consistency after the crash is what is tested: no witness runs here
    args = ["audit", "verify", str(tmp_path / "hub" / "log"), "--json", "--allow-unanchored",
            "--trusted-keys", str(_hub_trusted(tmp_path))]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def _registered(tmp_path: Path, contract_id: str) -> list[dict]:
    """The hub log's ``contract.registered`` events for ``contract_id`` (read from disk)."""
    with TransparencyLog.open(tmp_path / "hub" / "log") as log:
        events = [parse_event(e) for e in log.entries(0, log.size)]
    return [
        e.fields
        for e in events
        if e.kind == "contract.registered" and e.fields["contract_id"] == contract_id
    ]


def _site_kinds(site) -> list[str]:
    """Kinds of every entry in the site's log (``audit verify`` reports only up to the
    latest witnessed checkpoint, which lags while the hub, its witness, is down)."""
    with TransparencyLog.open(site.log_dir) as log:
        return [parse_event(e).kind for e in log.entries(0, log.size)]


def _wait_for(pred, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _offer(url: str, key, dataset_id: str):
    """Negotiation step 1 (POST /v1/offers) and the consumer's countersignature."""
    from dataspace.auth.client import call, signed_client
    from dataspace.policy import contracts as pc
    from tests.services.conftest import until

    body = {"dataset_id": dataset_id, "purpose": "research", "epsilon": 2.0, "rounds": 2,
            "until": until(2), "template": "mlp"}  # fmt: skip
    with signed_client(url, key) as c:
        offer = pc.Agreement.from_json(call(c, "POST", "/v1/offers", json=body))
    return pc.countersign(offer, key)


def _countersign(url: str, key, signed) -> dict:
    """Negotiation step 2: send the countersigned offer (idempotent at the site)."""
    from dataspace.auth.client import call, signed_client

    with signed_client(url, key) as c:
        return call(
            c, "POST", f"/v1/contracts/{signed.contract_id}/countersign", json=signed.to_json()
        )


@pytest.mark.slow
def test_kill_9_hub_while_registering_a_contract(
    so101_site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub dies between storing an agreed contract and logging it; restart; retry.

    Window: the connector copies each agreed contract to the hub (POST
    /v1/contracts); the hub stores the row, then appends ``contract.registered``.
    ``DATASPACE_HUB_FAULT_PAUSE_S`` holds the hub between those two writes and
    prints a line, so kill -9 lands in the window every time.
    """
    from dataspace.policy.contracts import load_contract
    from dataspace.policy.ledger import budget_report
    from tests.assurance.conftest import verify_site_log
    from tests.services.conftest import set_policy

    site, ds = so101_site
    alice = make_party(tmp_path, "alice", "consumer")
    set_policy(site, consumers=[alice.key_id])
    port = free_port()
    args = ["hub", "--data", str(tmp_path / "hub"), "--trust", str(site.root / "site.key.pub")]
    monkeypatch.setenv("DATASPACE_HUB_FAULT_PAUSE_S", "120")
    hub = Service(args, port, tmp_path / "hub.log")
    monkeypatch.delenv("DATASPACE_HUB_FAULT_PAUSE_S")
    conn = Service(["connector", str(site.root), "--hub", hub.url], free_port(),
                   tmp_path / "conn.log")  # fmt: skip
    try:
        hub.wait_ready()
        conn.wait_ready(until=lambda h: h["published"])
        signed = _offer(conn.url, alice.key, ds)
        agreed = _countersign(conn.url, alice.key, signed)  # the site agrees ...
        cid = agreed["contract_id"]
        assert agreed["state"] == "agreed"
        # ... and copies it to the hub, which stores it and pauses before its log append
        _wait_for(lambda: f"contract {cid} stored" in hub.log.read_text(), "hub never paused")
        hub.proc.send_signal(signal.SIGKILL)
        hub.proc.wait(30)
        assert hub.proc.returncode == -signal.SIGKILL

        # on disk after the kill: the log verifies and holds no entry for the contract
        # (the stored row is the half the restart must finish or drop)
        _verify_hub_log(tmp_path)
        assert _registered(tmp_path, cid) == []
        # the site is the truth: agreed, its epsilon reserved, contract.agreed in its log
        assert load_contract(site, cid).state == "agreed"
        (row,) = budget_report(site, ds)
        assert row.reserved == pytest.approx(2.0) and row.live_contracts == 1
        verify_site_log(site)
        assert _site_kinds(site).count("contract.agreed") == 1
        # a negotiation while the hub is down completes at the site; the connector keeps
        # trying to register it
        cid_down = _countersign(conn.url, alice.key, _offer(conn.url, alice.key, ds))["contract_id"]

        # restart: the contract is served with exactly one log entry, never without
        hub = Service(args, port, tmp_path / "hub2.log")
        hub.wait_ready()
        _wait_for(lambda: len(_registered(tmp_path, cid_down)) == 1, "not registered after restart")
        with httpx.Client(base_url=hub.url, auth=HttpSigAuth(alice.key), timeout=30) as c:
            seen = {x["contract_id"]: x for x in c.get("/v1/contracts").json()["contracts"]}
        assert cid in seen and seen[cid]["state"] == "agreed"
        (ev,) = _registered(tmp_path, cid)
        assert ev["epsilon"] == 2.0 and ev["consumer"] == alice.key_id
        _verify_hub_log(tmp_path)

        # the negotiation is retried to completion: the same countersignature again
        # (idempotent at the site, re-registered at the hub without a second entry) ...
        again = _countersign(conn.url, alice.key, signed)
        assert again["contract_id"] == cid and again["state"] == "agreed"
        # ... and a new negotiation with the restarted hub goes through end to end
        cid2 = _countersign(conn.url, alice.key, _offer(conn.url, alice.key, ds))["contract_id"]
        _wait_for(lambda: len(_registered(tmp_path, cid2)) == 1, "second contract not logged")
        time.sleep(1.0)  # the retried registration of the first has had time to arrive
        assert len(_registered(tmp_path, cid)) == 1
        assert len(_registered(tmp_path, cid_down)) == 1
        (row,) = budget_report(site, ds)
        assert row.reserved == pytest.approx(6.0) and row.live_contracts == 3
        _verify_hub_log(tmp_path)
        verify_site_log(site)
        assert _site_kinds(site).count("contract.agreed") == 3
    finally:
        conn.stop()
        hub.stop()


def test_recovery_finishes_a_registration_cut_after_its_log_append(tmp_path: Path) -> None:
    """Killed after the log append but before the row was marked: no second entry."""
    from dataspace.hub.state import HubLog, hub_key, recover_contracts
    from dataspace.hub.store import HubStore

    key = hub_key(tmp_path, "hub")
    store, hub_log = HubStore(tmp_path), HubLog(tmp_path / "log", "hub", key)
    rec = {"contract_id": "c-1", "dataset_id": "ds", "fingerprint": "ab" * 32,
           "purpose": "research", "holder": "h", "consumer": "k", "epsilon": 1.0,
           "state": "agreed"}  # fmt: skip
    store.add_contract(rec)
    hub_log.record(
        "contract.registered", **{k: rec[k] for k in rec if k != "dataset_id"}, dataset_id="ds"
    )  # fmt: skip  (the append landed, the mark did not)
    assert [r["contract_id"] for r in store.unlogged_contracts()] == ["c-1"]
    size = hub_log.log.size
    recover_contracts(HubStore(tmp_path), hub_log)
    assert hub_log.log.size == size and HubStore(tmp_path).unlogged_contracts() == []
    # a row stored without its entry gets the entry on recovery
    store.add_contract({**rec, "contract_id": "c-2"})
    recover_contracts(HubStore(tmp_path), hub_log)
    assert hub_log.log.size == size + 1 and HubStore(tmp_path).unlogged_contracts() == []
