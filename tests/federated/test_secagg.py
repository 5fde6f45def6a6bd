"""SecAgg+ in the one-process engine: same aggregate as weighted FedAvg, no update seen."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from dataspace.cli import main
from dataspace.demo.federation import Federation
from dataspace.federated import DeploymentEngine, RunSpec, SimulationEngine, train
from dataspace.federated.client_app import app as client_app
from dataspace.federated.local_grid import LocalGrid
from dataspace.federated.noise import SEED_ENV
from dataspace.federated.secagg import error_bound

pytestmark = pytest.mark.slow

#: the site processes' test seed (dataspace/federated/noise.py): with it a site's noise
#: depends only on the release's label (contract, run, round), so twin sites repeat it
NOISE_SEED = "test-secagg"


def twin_sites(fed: Federation) -> Callable[[], None]:
    """Keep a pristine copy of ``fed``'s folder; the returned call swaps it in.

    The sites' DP noise is secret: with the test seed it repeats only for the same
    contract, run id and round. Two runs over the same contracts, each on fresh
    ledgers, therefore need the same sites twice, at the same paths (the ClientApp
    remembers where it found a contract). Returns ``swap``: after the first run, the
    used folder moves aside and the copy takes its place.
    """
    root = fed.sites[0].root.parent
    spare = shutil.copytree(root, root.with_name(root.name + "-twin"))

    def swap() -> None:
        root.rename(root.with_name(root.name + "-used"))
        Path(spare).rename(root)

    return swap


class RecordingGrid(LocalGrid):
    """Keeps every reply the server receives."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.seen: list[Message] = []

    def pull_messages(self, message_ids):
        got = list(super().pull_messages(message_ids))
        self.seen += got
        return got


def quantisation_gap(plain_dir, sec_dir, sec: dict) -> tuple[float, float]:
    """Largest difference between the plain and the SecAgg+ final models, and the bound
    SecAgg+'s quantisation allows for the round's weights (federated/secagg.py)."""
    counts = [s["num_examples"] for s in sec["rounds"][0]["sites"]]
    bound = error_bound(counts, 1.5 * max(s["count"] for s in sec["stats"]["sites"]))
    with np.load(plain_dir / "final.npz") as zp, np.load(sec_dir / "final.npz") as zs:
        return max(float(np.abs(zp[k] - zs[k]).max()) for k in zp.files), bound


def test_secagg_matches_weighted_fedavg_within_quantization_and_hides_updates(
    federation, tmp_path, monkeypatch
):
    monkeypatch.setenv(SEED_ENV, NOISE_SEED)
    fed = federation(epsilon=4.0, rounds=1)
    swap = twin_sites(fed)
    plain = train(
        RunSpec(
            contracts=fed.contract_ids,
            template="bc-mlp",
            rounds=1,
            out_dir=tmp_path / "plain",
            seed=4,
            run_id="twin",
        ),
        fed.sites,
        "simulation",
    )
    swap()  # the same sites again, fresh ledgers: the same DP training, noise included
    grid = RecordingGrid(client_app, [s.root for s in fed.sites])
    sec = train(
        RunSpec(
            contracts=fed.contract_ids,
            template="bc-mlp",
            rounds=1,
            out_dir=tmp_path / "sec",
            seed=4,
            secagg=True,
            run_id="twin",
        ),
        fed.sites,
        SimulationEngine(grid=grid),
    )
    assert plain["status"] == sec["status"] == "finished", sec.get("error")
    # the sites' DP training is the same (same seed): only the aggregation differs
    assert sec["rounds"][0]["train_loss"] == plain["rounds"][0]["train_loss"]
    assert len({s["num_examples"] for s in sec["rounds"][0]["sites"]}) == 3  # weighting matters
    gap, bound = quantisation_gap(tmp_path / "plain", tmp_path / "sec", sec)
    # an unweighted mean would be off by far more than the quantisation error
    with np.load(tmp_path / "plain" / "final.npz") as zp:
        unweighted = np.mean(
            [
                np.load(p)["net.0.weight"]
                for p in sorted((tmp_path / "plain").glob("rounds/001/updates/*.npz"))
            ],
            axis=0,
        )
        assert float(np.abs(unweighted - zp["net.0.weight"]).max()) > 10 * bound
    assert 0 < gap <= bound  # the aggregate really went through quantisation, within its bound
    # the server never received a tensor from a site, and kept no per-site update
    train_replies = [m for m in grid.seen if m.metadata.message_type == "train"]
    assert len(train_replies) == 4 * 3  # four SecAgg+ stages, three sites
    assert all(len(m.content.array_records) == 0 for m in grid.seen)
    assert not (tmp_path / "sec" / "rounds" / "001" / "updates").exists()
    spec = json.loads((tmp_path / "sec" / "history.json").read_text())["spec"]
    assert spec["secagg"] is True


def test_cli_train_secagg_flag(federation, tmp_path, capsys):
    fed = federation(epsilon=2.0, rounds=1)
    out = tmp_path / "out"
    args = ["train", "--contract", ",".join(fed.contract_ids), "--rounds", "1"]
    args += ["--out", str(out), "--secagg", "--json"]
    for s in fed.sites:
        args += ["--simulate", str(s.root)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["status"] == "finished"
    assert json.loads((out / "history.json").read_text())["spec"]["secagg"] is True
    assert not (out / "rounds" / "001" / "updates").exists()


def test_secagg_on_the_deployment_engine_matches_the_one_process_run(
    federation, tmp_path, monkeypatch
):
    """SecAgg+ through SuperLink + 3 SuperNodes (TLS, node auth): the same sites, seed and
    DP training as a plain one-process run, so the aggregate differs only by quantisation.
    The SuperNodes inherit the test noise seed from this process's environment."""
    from dataspace.federated import RunSpec, train

    monkeypatch.setenv(SEED_ENV, NOISE_SEED)
    b = federation(epsilon=4.0, rounds=1)
    swap = twin_sites(b)
    plain = train(
        RunSpec(
            contracts=b.contract_ids,
            template="bc-mlp",
            rounds=1,
            out_dir=tmp_path / "plain",
            seed=6,
            run_id="twin",
        ),
        b.sites,
        "simulation",
    )
    swap()
    sec = train(
        RunSpec(
            contracts=b.contract_ids,
            template="bc-mlp",
            rounds=1,
            out_dir=tmp_path / "sec",
            seed=6,
            run_id="twin",
            secagg=True,
        ),
        [s.root for s in b.sites],
        DeploymentEngine(timeout=480),
    )
    assert sec["status"] == "finished", sec.get("error")
    assert sec["rounds"][0]["train_loss"] == plain["rounds"][0]["train_loss"]
    gap, bound = quantisation_gap(tmp_path / "plain", tmp_path / "sec", sec)
    assert 0 < gap <= bound
    assert not (tmp_path / "sec" / "rounds" / "001" / "updates").exists()
    assert set(sec["rounds"][0]["epsilon"]) == set(b.dataset_ids)
