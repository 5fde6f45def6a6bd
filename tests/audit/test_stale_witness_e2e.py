"""A witness that is gone does not freeze the witnessed checkpoint, with real processes.

A hub and two connectors (``dataspace serve``, the real SO-101 dataset enrolled
at each site) with ``DATASPACE_WITNESS_STALE_S=4``. Site-b's connector (a
witness of the hub's log and of site-a's) stops. For four seconds it still
holds the witnessed checkpoints back; then it is stale: the hub serves its
latest checkpoint cosigned by site-a alone, site-a's log its latest cosigned by
the hub, and ``GET /v1/log/witnesses``, ``dataspace audit verify`` and
``dataspace audit witness --json`` name site-b as stale since the size it
cosigned last. Site-b's connector comes back (on another port, which the hub
learns from its catalog) and cosigns again; the witnessed checkpoints never
moved back.
"""

from __future__ import annotations

import json

import httpx
import pytest

from dataspace.audit.log import TransparencyLog
from dataspace.auth.httpsig import HttpSigAuth
from dataspace.net import free_port
from dataspace.site.log import record
from tests.audit.space import (
    SITES,
    cli,
    hub_checkpoint,
    running_space,
    size_of,
    wait_for,
    witnesses_of,
)
from tests.services.conftest import Service

pytestmark = pytest.mark.slow

STALE_S = 4


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory):
    env = {"DATASPACE_WITNESS_STALE_S": str(STALE_S)}
    with running_space(tmp_path_factory.mktemp("stale-witness-e2e"), env) as s:
        yield s


def test_a_dead_witness_goes_stale_and_stops_holding_the_checkpoint_back(space, capsys) -> None:
    hub, hub_name = space["hub"], space["hub_name"]
    site_a, _site_b = space["sites"]
    auditor = space["auditor"]
    served: list[int] = []  # every witnessed size the hub served, in order

    def witnessed() -> bytes:
        note = hub_checkpoint(hub.url)
        served.append(size_of(note))
        return note

    def hub_status() -> dict:
        r = httpx.get(hub.url + "/v1/log/witnesses", auth=HttpSigAuth(auditor.key), timeout=30)
        r.raise_for_status()
        return r.json()

    wait_for(
        lambda: (
            witnesses_of(witnessed(), hub_name) == set(SITES)
            and served[-1] == size_of(hub_checkpoint(hub.url, witnessed=False))
        ),
        "both connectors to cosign the hub's log",
    )
    n0 = served[-1]
    site_a_log = TransparencyLog.open(site_a.log_dir)
    wait_for(
        lambda: (
            witnesses_of(site_a_log.witnessed_checkpoint(), site_a.name) == {hub_name, "site-b"}
        ),
        "the hub and site-b to cosign site-a's log",
    )
    a0 = size_of(site_a_log.witnessed_checkpoint())

    # --- site-b's connector is gone; the hub's log and site-a's grow
    space["connectors"][1].stop()
    with httpx.Client(base_url=hub.url, auth=HttpSigAuth(auditor.key)) as c:
        assert c.post("/v1/catalog", json={"dataset_id": "x"}).status_code >= 400
    record(site_a, "quality.reported", dataset_id="so101", score=88.0, report_sha256="ef" * 32)
    wait_for(
        lambda: (
            witnesses_of(witnessed(), hub_name) == {"site-a"}
            and served[-1] == size_of(hub_checkpoint(hub.url, witnessed=False)) > n0
        ),
        "the hub to serve its latest checkpoint, cosigned by site-a alone",
    )
    assert served == sorted(served)
    st = hub_status()
    assert st["stale"] == ["site-b"] and st["witnessed_size"] == served[-1]
    b = next(w for w in st["witnesses"] if w["witness"] == "site-b")
    assert b["stale_since_size"] == n0 and b["error"] and b["failing_since"] is not None
    # the hub's dashboard says so too
    token = (space["tmp"] / "hub" / "dashboard.token").read_text().strip()
    with httpx.Client(base_url=hub.url, follow_redirects=True, timeout=30) as c:
        page = c.get("/dashboard", params={"token": token}).text
    assert 'id="log-stale-witnesses"' in page and f"site-b (since size {n0})" in page
    # site-a's log: its latest, cosigned by the hub alone
    wait_for(
        lambda: (
            witnesses_of(site_a_log.witnessed_checkpoint(), site_a.name) == {hub_name}
            and size_of(site_a_log.witnessed_checkpoint()) == site_a_log.size > a0
        ),
        "site-a's log to be served cosigned by the hub alone",
    )

    # --- the auditor sees who is stale, since which size
    trusted, key = str(space["trusted"]), str(auditor.key_path)
    code, out, err = cli(
        capsys, "audit", "verify", hub.url, "--trusted-keys", trusted, "--key", key, "--json"
    )
    rep = json.loads(out)
    assert code == 0 and rep["size"] == served[-1] and rep["latest_size"] >= rep["size"], err
    assert [(w["witness"], w["since_size"]) for w in rep["stale_witnesses"]] == [("site-b", n0)]
    code, out, err = cli(
        capsys, "audit", "verify", hub.url, "--trusted-keys", trusted, "--key", key,
        "--witness-quorum", "2",
    )  # fmt: skip
    assert code == 4 and f"site-b (stale since size {n0}" in err, err
    code, out, err = cli(
        capsys, "audit", "verify", str(site_a.root), "--trusted-keys", trusted, "--json"
    )
    rep = json.loads(out)
    assert code == 0 and rep["witnesses"] == [hub_name], err
    assert [(w["witness"], w["since_size"]) for w in rep["stale_witnesses"]] == [("site-b", a0)]
    # `audit witness --json`: the witness that did not answer, and up to which size it cosigned
    code, out, err = cli(
        capsys, "audit", "witness", str(site_a.root), "--witness", b["url"],
        "--witness-key", str(space["sites"][1].root / "site.key.pub"), "--timeout", "5", "--json",
    )  # fmt: skip
    res = json.loads(out)
    assert code == 5 and not res["ok"]
    (e,) = res["errors"]
    assert e["witness"] == "site-b" and e["since_size"] == a0 and e["status"] is None, e
    assert [(w["witness"], w["since_size"]) for w in res["stale"]] == [("site-b", a0)]

    # --- site-b's connector comes back (another port: the hub learns it from its catalog)
    back = Service(
        ["connector", str(space["sites"][1].root), "--hub", hub.url],
        free_port(),
        space["tmp"] / "site-b-again.log",
    )
    try:
        back.wait_ready(until=lambda h: h["published"])
        with httpx.Client(base_url=hub.url, auth=HttpSigAuth(auditor.key)) as c:
            assert c.post("/v1/catalog", json={"dataset_id": "y"}).status_code >= 400
        wait_for(
            lambda: (
                witnesses_of(witnessed(), hub_name) == set(SITES)
                and served[-1] == size_of(hub_checkpoint(hub.url, witnessed=False))
                and hub_status()["stale"] == []
            ),
            "site-b to cosign the hub's log again",
        )
    finally:
        back.stop()
    assert served == sorted(served), served  # never moved back
