"""The hub tells the sites' truth (issue 16), with the hub and a connector as real processes.

What the holder does on its own machine with the ``dataspace`` CLI (approve or
revoke a contract) and what a training process charges to the site's ledger reach
the hub while the connector service runs, within seconds and without a restart:
the contract in the hub's registry, and the dataset's budget as the site's own
signed report (``GET /v1/budget``), equal to what the site's ledger says.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dataspace.auth.httpsig import HttpSigAuth
from dataspace.connectors.client import request_via_connector
from dataspace.net import free_port
from dataspace.policy.budget_statement import read_budget_statement
from dataspace.policy.ledger import charge_round
from tests.services.conftest import PYTHON, Service, dataset_id, set_policy, until

pytestmark = pytest.mark.slow

#: what "within a few seconds" means here (the connector looks at SITE/log every 0.5 s)
WITHIN_S = 5.0


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WITHIN_S) -> tuple[Any, float]:
    """Poll ``probe`` until it returns something truthy; (that, seconds it took)."""
    t0 = time.monotonic()
    while True:
        got = probe()
        if got:
            return got, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


def cli(*args: str) -> None:
    """``dataspace ...`` in its own process, as the holder types it."""
    out = subprocess.run([PYTHON, "-m", "dataspace", *args], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()


def test_cli_changes_and_charges_reach_the_hub_while_the_connector_runs(
    site, parties, tmp_path
) -> None:
    alice, auditor = parties["alice"], parties["auditor"]
    set_policy(site, consumers=[alice.key_id], manual=True, epsilon=8.0)
    did = dataset_id(site)
    hub = Service(
        ["hub", "--data", str(tmp_path / "hub"), "--trust", str(site.root / "site.key.pub"),
         "--trust", str(auditor.key_path) + ".pub"],
        free_port(), tmp_path / "hub.log",
    )  # fmt: skip
    conn = None
    try:
        hub.wait_ready()
        conn = Service(
            ["connector", str(site.root), "--hub", hub.url], free_port(), tmp_path / "conn.log"
        )
        conn.wait_ready(until=lambda h: h["published"])
        with httpx.Client(base_url=hub.url, auth=HttpSigAuth(auditor.key), timeout=30) as a:

            def budget() -> dict[str, Any] | None:
                reps = a.get("/v1/budget", params={"dataset_id": did}).json()["reports"]
                return reps[0] if reps else None

            def state(cid: str) -> str | None:
                r = a.get(f"/v1/contracts/{cid}")
                return r.json()["state"] if r.status_code == 200 else None

            # at start: the site's report, nothing reserved or spent of its 8
            rep, _ = wait_for("the first budget report", budget)
            assert (rep["budget"], rep["reserved"], rep["spent"]) == (8.0, 0.0, 0.0)

            # a consumer asks over HTTP; the policy wants the holder's approval
            c = request_via_connector(
                conn.url, alice.key, dataset=did, purpose="research", epsilon=1.0, rounds=3,
                until=until(), template="mlp",
            )  # fmt: skip
            cid = c["contract_id"]
            assert c["state"] == "pending" and state(cid) is None

            # the holder approves with the CLI, in its own process, not through the service
            cli("contract", "approve", str(site.root), cid)
            _, took = wait_for("the approved contract at the hub", lambda: state(cid) == "agreed")
            print(f"approved contract at the hub {took:.2f} s after the CLI returned")
            wait_for("the reservation in the budget", lambda: budget()["reserved"] == 1.0)

            # a training process charges a round to the site's ledger
            charged = charge_round(
                site, cid, "run-1", 1, [(10.0, 1.0, 1)], purpose="research", template="mlp"
            )
            rep, _ = wait_for(
                "the charge in the budget",
                lambda: (b := budget()) and b["spent"] > 0 and b,
            )
            assert rep["spent"] == pytest.approx(charged.epsilon)
            assert rep["reserved"] == pytest.approx(1.0 - charged.epsilon)
            assert rep["remaining"] == pytest.approx(7.0)
            assert rep["rounds"] == 1 and rep["live_contracts"] == 1
            # signed by the site: checked with its key alone, and equal to its own ledger
            st = read_budget_statement(rep["statement"], site.identity.key_b64)
            assert st.figures["spent"] == rep["spent"]
            with httpx.Client(base_url=conn.url, auth=HttpSigAuth(site.key)) as s:
                (own,) = s.get("/v1/admin/budget", params={"dataset_id": did}).json()["datasets"]
            assert (own["spent"], own["reserved"]) == (rep["spent"], rep["reserved"])

            # the holder revokes with the CLI: the hub's registry and budget follow
            cli("contract", "revoke", str(site.root), cid)
            wait_for("the revocation at the hub", lambda: state(cid) == "revoked")
            rep, _ = wait_for(
                "the freed reservation", lambda: (b := budget())["reserved"] == 0 and b
            )
            assert rep["spent"] == pytest.approx(charged.epsilon)
            assert rep["remaining"] == pytest.approx(8.0 - charged.epsilon)

            # a new policy (no approval needed, a larger budget), then a contract made
            # entirely with the CLI on the holder's machine (both sides, one process)
            set_policy(site, consumers=[alice.key_id], epsilon=10.0)
            wait_for("the new lifetime budget", lambda: budget()["budget"] == 10.0)
            cli(
                "contract", "request", str(site.root), "--dataset", did, "--key",
                str(alice.key_path), "--purpose", "research", "--epsilon", "2", "--rounds", "2",
                "--template", "mlp", "--until", until(),
            )  # fmt: skip
            with httpx.Client(base_url=conn.url, auth=HttpSigAuth(site.key)) as s:
                made = s.get("/v1/contracts").json()["contracts"]
            (new,) = [x for x in made if x["state"] == "agreed"]
            wait_for("the CLI's contract at the hub", lambda: state(new["contract_id"]) == "agreed")
            wait_for("its reservation", lambda: budget()["reserved"] == 2.0)
    finally:
        for s in (conn, hub):
            if s is not None:
                s.stop()
