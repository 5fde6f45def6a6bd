"""Does the demo's model get better round by round? (issue 17)

The demo's settings on the bundled sample (dataspace/data/unitree-g1-sample, 16
episodes): 3 sites holding episodes 0-4, 5-9 and 10-14 (``episode_ranges`` after
the consumer keeps the last episode for validation), contracts at epsilon 8,
delta 1e-5, ``--rounds`` rounds (the demo's default: 3), template bc-mlp, seed 0,
through ``dataspace.federated.train`` on the one-process engine. Per round: the
sites' DP held-out MSE (what the demo prints) and the consumer's validation MSE
of that round's global model on episode 15 (exact, its own data). ``--lr`` and
``--optimizer`` override the recipe (the demo passes ``lr=0.5`` today).
Last stdout line: JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch

import dataspace
from dataspace.connectors.shards import shard_to_sites
from dataspace.demo.federation import make_federation
from dataspace.federated import RunSpec, normalize, train
from dataspace.federated import data as fdata
from dataspace.federated.report import load_policy
from dataspace.site import create_site

SAMPLE = Path(dataspace.__file__).parent / "data" / "unitree-g1-sample"


def validation_mse(run: Path, rnd: int, val: fdata.Frames) -> float:
    pol = load_policy(run, f"rounds/{rnd:03d}/global.npz")
    final = load_policy(run)  # the run's normalisation buffers (the round files keep the server's)
    for name in ("state_mean", "state_std", "action_mean", "action_std"):
        getattr(pol, name).copy_(getattr(final, name))
    with torch.no_grad():
        xs, _ = normalize.normalised(pol, val.state, val.action)
        pred = pol(xs) * pol.action_std + pol.action_mean
    return float(((pred - val.action) ** 2).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--optimizer")
    a = ap.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    kw = {k: v for k, v in (("lr", a.lr), ("optimizer", a.optimizer)) if v is not None}
    if kw.get("optimizer") == "sgd":
        kw.update(lr_schedule="constant", warmup=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ranges = [range(0, 5), range(5, 10), range(10, 15)]
        fed = make_federation(root / "fed", SAMPLE, 3, epsilon=8.0, rounds=a.rounds,
                              episodes_per_site=ranges)  # fmt: skip
        consumer = create_site(root / "consumer", "consumer", name="consumer")
        (vid,) = shard_to_sites(SAMPLE, [consumer], [range(15, 16)])
        ref = fdata.dataset_ref(consumer, vid)
        val = fdata.load_frames(consumer, ref, range(ref.episodes))
        run = root / "run"
        h = train(RunSpec(contracts=fed.contract_ids, rounds=a.rounds, out_dir=run, seed=0, **kw),
                  fed.sites, "simulation")  # fmt: skip
        out = {
            "rounds": a.rounds,
            "spec": {k: h["spec"][k] for k in ("optimizer", "lr", "lr_schedule", "warmup")},
            "heldout_mse": [round(r["eval_mse"], 5) for r in h["rounds"]],
            "validation_mse": [
                round(validation_mse(run, r, val), 5) for r in range(0, a.rounds + 1)
            ],
            "epsilon": max(h["rounds"][-1]["epsilon"].values()),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
