"""Attacks through Flower's deployment engine (SuperLink, SuperNodes, site workers, TLS).

The consumer chooses the run config its ServerApp reads; a hostile one replays a
run id that already trained (so the server sends round 1 again to every site) and
asks for another mechanism (more local epochs). Through the real engine, the
sites refuse both, the run stops naming the refusal, and nothing is charged: the
ledgers hold the honest run's charges only, each refusal is in the site's log.
"""

from __future__ import annotations

import json

import pytest

from dataspace.federated.deploy import Deployment, write_app
from tests.hostile.harness import events, federation, ledger

pytestmark = pytest.mark.slow


def _config(fed, out, run_id: str, **over) -> dict:
    cfg = {
        "run-id": run_id,
        "contracts": ",".join(fed.contract_ids),
        "template": "bc-mlp",
        "num-rounds": 1,
        "out-dir": str(out),
        "min-nodes": 2,
        "expected-nodes": 2,
        "round-timeout": 120.0,
        "fold-evaluate": True,
        "pack-arrays": True,
    }
    return cfg | over


def _history(out) -> dict:
    return json.loads((out / "history.json").read_text())


def test_replayed_run_and_changed_mechanism_through_the_deployment_engine(tmp_path):
    fed = federation(tmp_path / "fed", n_sites=2, epsilon=4.0, rounds=2)
    app = write_app(tmp_path / "app")
    with Deployment(tmp_path / "deploy", [s.root for s in fed.sites]) as d:
        honest = tmp_path / "honest"
        d.run(app, _config(fed, honest, "run-1"), timeout=400)
        assert _history(honest)["status"] == "finished", _history(honest).get("error")
        paid = [ledger(s) for s in fed.sites]
        assert all([r[:3] for r in rows] == [("run-1", 0, "stats"), ("run-1", 1, "round")]
                   for rows in paid)  # fmt: skip
        # the same run id again, from scratch: statistics are sent again (free), round 1 is
        # a replay at every site
        replay = tmp_path / "replay"
        d.run(app, _config(fed, replay, "run-1"), timeout=400)
        h = _history(replay)
        assert h["status"] == "stopped" and "ReplayError" in h["error"], h.get("error")
        # another mechanism: 5 local epochs where the sites train 1
        more = tmp_path / "more"
        d.run(app, _config(fed, more, "run-2", **{"local-epochs": 5}), timeout=400)
        h = _history(more)
        assert h["status"] == "stopped" and "MechanismError" in h["error"], h.get("error")
    for site, before in zip(fed.sites, paid, strict=True):
        after = ledger(site)
        # run-2's statistics are the contract's, sent again: nothing new is charged
        assert after == before
        kinds = [e.fields.get("refusal") for e in events(site, "access.refused")]
        assert "ReplayError" in kinds and "MechanismError" in kinds
        assert len(events(site, "round.finished")) == 2  # statistics and round 1, once each
