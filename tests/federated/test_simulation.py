"""The apps in the one-process engine, on real Unitree G1 episodes split over 3 sites."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dataspace.errors import RefusedError
from dataspace.federated import RunSpec, SimulationEngine, train
from dataspace.federated import data as fdata
from dataspace.federated.client_app import app as client_app
from dataspace.federated.local_grid import LocalGrid
from dataspace.federated.server_app import RunError

pytestmark = pytest.mark.slow


def _ledger(site):
    with site.db(read_only=True) as con:
        return con.execute(
            "SELECT run_id, round_no, epsilon FROM ledger ORDER BY run_id, round_no"
        ).fetchall()


def _final(path) -> dict[str, np.ndarray]:
    with np.load(path / "final.npz") as z:
        return {k: z[k] for k in z.files}


def test_site_seed_repeats_a_run_else_the_noise_is_fresh(federation, tmp_path, monkeypatch):
    """Only a setting at the site (DATASPACE_NOISE_SEED, no message reaches it) makes two
    runs bit-identical; without it the same messages get fresh, secret noise."""
    monkeypatch.setenv("DATASPACE_NOISE_SEED", "test-seed")
    a, b = federation(epsilon=4.0, rounds=2), federation(epsilon=4.0, rounds=2)
    ha = train(
        RunSpec(
            contracts=a.contract_ids,
            template="bc-mlp",
            rounds=2,
            out_dir=tmp_path / "ra",
            seed=5,
            run_id="r",
        ),
        a.sites,
        "simulation",
    )
    hb = train(
        RunSpec(
            contracts=b.contract_ids,
            template="bc-mlp",
            rounds=2,
            out_dir=tmp_path / "rb",
            seed=5,
            run_id="r",
        ),
        b.sites,
        "simulation",
    )
    assert ha["status"] == hb["status"] == "finished"
    za, zb = _final(tmp_path / "ra"), _final(tmp_path / "rb")
    assert za.keys() == zb.keys()
    for k in za:
        assert np.array_equal(za[k], zb[k]), k
    monkeypatch.delenv("DATASPACE_NOISE_SEED")
    c = federation(epsilon=4.0, rounds=2)
    train(
        RunSpec(
            contracts=c.contract_ids,
            template="bc-mlp",
            rounds=2,
            out_dir=tmp_path / "rc",
            seed=5,
            run_id="r",
        ),
        c.sites,
        "simulation",
    )
    assert not np.array_equal(_final(tmp_path / "rc")["net.0.weight"], za["net.0.weight"])
    # every site charged its statistics and both rounds, summing to the accountant's
    # epsilon <= contract
    for site, dsid in zip(a.sites, a.dataset_ids, strict=True):
        rows = _ledger(site)
        assert [r[1] for r in rows] == [0, 1, 2]
        assert sum(r[2] for r in rows) == pytest.approx(ha["rounds"][-1]["epsilon"][dsid])
        assert sum(r[2] for r in rows) <= 4.0
    # per-site updates kept per round for contribution estimates
    assert len(list((tmp_path / "ra" / "rounds" / "002" / "updates").glob("*.npz"))) == 3
    # the loss went down on held-out episodes of every site
    assert ha["rounds"][-1]["train_loss"] < 1.0


def test_budget_exhausted_refused_before_any_data_is_read(federation, tmp_path, monkeypatch):
    fed = federation(epsilon=4.0, rounds=2)
    train(
        RunSpec(
            contracts=fed.contract_ids, template="bc-mlp", rounds=2, out_dir=tmp_path / "r1", seed=1
        ),
        fed.sites,
        "simulation",
    )
    reads = []
    monkeypatch.setattr(fdata, "load_frames", lambda *a, **k: reads.append(a) or 1 / 0)
    monkeypatch.setattr(
        "dataspace.federated.client_app._FRAMES", {}
    )  # a warm cache must not hide a read
    with pytest.raises(RunError, match=r"BudgetExceededError|ContractError"):
        train(
            RunSpec(
                contracts=fed.contract_ids,
                template="bc-mlp",
                rounds=2,
                out_dir=tmp_path / "r2",
                seed=1,
            ),
            fed.sites,
            "simulation",
        )
    assert reads == []
    hist = json.loads((tmp_path / "r2" / "history.json").read_text())
    assert hist["status"] == "stopped"


def test_wrong_template_refused(federation, tmp_path):
    fed = federation(epsilon=2.0, rounds=1)
    with pytest.raises(RunError, match="template"):
        train(
            RunSpec(
                contracts=fed.contract_ids,
                template="bc-chunk",
                rounds=1,
                out_dir=tmp_path / "r",
                seed=1,
            ),
            fed.sites,
            "simulation",
        )
    assert all(_ledger(s) == [] for s in fed.sites)


def test_dead_site_does_not_hang_and_run_resumes(federation, tmp_path):
    fed = federation(epsilon=4.0, rounds=3)
    grid = LocalGrid(client_app, [s.root for s in fed.sites])
    out = tmp_path / "r"

    # site 3 dies after round 1: with min-nodes 3 the run stops with a clear message
    def stop_after_first(record):
        grid.dead.add(3)

    with pytest.raises(RunError, match=r"sites (replied|connected)"):
        train(
            RunSpec(
                contracts=fed.contract_ids,
                template="bc-mlp",
                rounds=3,
                out_dir=out,
                seed=2,
                run_id="r-1",
            ),
            fed.sites,
            SimulationEngine(grid=grid),
            on_round=stop_after_first,
        )
    assert json.loads((out / "history.json").read_text())["status"] == "stopped"
    # resume with min-nodes 2: rounds 2..3 run on the two live sites (round 2 never went out)
    h = train(
        RunSpec(
            contracts=fed.contract_ids,
            template="bc-mlp",
            rounds=3,
            out_dir=out,
            seed=2,
            run_id="r-1",
            min_nodes=2,
        ),
        fed.sites,
        SimulationEngine(grid=grid),
    )
    assert h["status"] == "finished" and h["resumed_from"] == 1 and "lost_rounds" not in h
    assert [r["round"] for r in h["rounds"]] == [1, 2, 3]
    assert len(h["rounds"][1]["sites"]) == 2
    assert [r[1] for r in _ledger(fed.sites[2])] == [0, 1]  # the dead site paid round 1 only
    assert [r[1] for r in _ledger(fed.sites[0])] == [0, 1, 2, 3]


def test_guard_refuses_unknown_contract(federation):
    from dataspace.federated.guard import authorize_round

    fed = federation(epsilon=2.0, rounds=1)
    with pytest.raises(RefusedError, match="no-such-contract"):
        authorize_round(fed.sites[0], "no-such-contract", "run", 1, [(1.0, 1.0, 1)])


def test_a_site_naming_a_path_as_its_dataset_writes_no_file(federation, tmp_path):
    """A hostile holder's reply whose dataset id is a path ("../../x") is a failed reply:
    the server never makes a file of it (its updates are saved as updates/<dataset>.npz)."""
    fed = federation(epsilon=4.0, rounds=1)

    def hostile(message, context):
        reply = client_app(message, context)
        if context.node_id == 2 and not reply.has_error() and "info" in reply.content:
            reply.content["info"]["dataset-id"] = "../../../escaped"
        return reply

    out = tmp_path / "a" / "b" / "run"
    h = train(
        RunSpec(contracts=fed.contract_ids, rounds=1, out_dir=out, run_id="r-h", min_nodes=2),
        fed.sites,
        SimulationEngine(grid=LocalGrid(hostile, [s.root for s in fed.sites])),
    )
    assert h["status"] == "finished"
    assert not list(tmp_path.rglob("escaped*"))
    assert len(list((out / "rounds" / "001" / "updates").iterdir())) == 2
    for failed in (h["stats"]["failed"], h["rounds"][0]["failed"]):
        assert [f["reason"] for f in failed] == ["malformed dataset id '../../../escaped'"]
