"""Does contribution single out a bad site? (issue 6, bench/value_detect.py)

For each of 10 seeds: 4 federated sites each hold 8 episodes of the real
Unitree G1 recording (/work/shared/data); one site (a different one per seed)
has its actions shuffled across frames (inputs and outputs no longer match).
A Flower simulation (dataspace.federated.run.run_simulation, bc-mlp, DP-SGD)
trains for ROUNDS rounds; then dataspace.quality.contribution.contributions
computes GTG-Shapley over the rounds' stored updates, with the server's loss on
held-out clean episodes (not held by any site) as the utility.

Last stdout line: {"last_in": how many seeds ranked the bad site last, "seeds": 10, ...}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dataspace.connectors.enroll import enroll
from dataspace.connectors.site import Site
from dataspace.federated.federation import grant
from dataspace.federated.run import run_simulation
from dataspace.federated.templates import get_template
from dataspace.policy.identity import load_private_key, new_identity
from dataspace.quality import inject
from dataspace.quality.contribution import contributions, revenue_split

DATA = Path("/work/shared/data/unitree-g1-lerobot-v2.1")
SEEDS = range(int(os.environ.get("SEEDS", "10")))
SITES = 4
PER_SITE = 8
ROUNDS = int(os.environ.get("ROUNDS", "8"))


def _flat(npz: Path, keys: list[str]) -> np.ndarray:
    with np.load(npz) as z:
        return np.concatenate([z[k].astype(np.float64).ravel() for k in keys])


def _loss_fn(keys, shapes, state, action, template="bc-mlp"):
    policy = get_template(template).build(state.shape[1], action.shape[1])
    s = torch.from_numpy(state)
    a = torch.from_numpy(action)

    def loss(flat: np.ndarray) -> float:
        sd, pos = {}, 0
        for k, shp in zip(keys, shapes, strict=True):
            n = int(np.prod(shp))
            sd[k] = torch.from_numpy(flat[pos : pos + n].reshape(shp).astype(np.float32))
            pos += n
        policy.load_state_dict(sd)
        with torch.no_grad():
            x = (s - policy.state_mean) / policy.state_std
            y = (a - policy.action_mean) / policy.action_std
            return float(torch.mean((policy(x) - y) ** 2))

    return loss


def one_seed(tmp: Path, source: list, valid: list, seed: int) -> tuple[bool, dict]:
    rng = np.random.default_rng(seed)
    bad = seed % SITES
    order = rng.permutation(len(source))
    key_path = tmp / "consumer.key"
    consumer = new_identity(key_path, name="robotco", role="consumer")
    key = load_private_key(key_path)
    sites, contracts, names = [], [], {}
    for i in range(SITES):
        eps = [source[j] for j in order[i * PER_SITE : (i + 1) * PER_SITE]]
        if i == bad:
            all_a = np.concatenate([e.action for e in eps])
            all_a = all_a[rng.permutation(len(all_a))]
            pos, shuffled = 0, []
            for e in eps:
                shuffled.append(inject._copy(e, action=all_a[pos : pos + e.frames].copy()))
                pos += e.frames
            eps = shuffled
        site = Site.init(tmp / f"site-{i}", f"holder-{i}", name=f"holder-{i}")
        did = inject.write_dataset(site, f"part-{i}", eps, fps=30.0, tasks=["t"])
        contracts.append(grant(site, did, consumer, key, epsilon=8.0, rounds=ROUNDS))
        sites.append(site)
        names[did] = i
    out = tmp / "run"
    run_simulation(contracts, sites, "bc-mlp", ROUNDS, out, seed=seed)
    g0 = out / "rounds" / "000" / "global.npz"
    with np.load(g0) as z:
        keys = list(z.files)
        shapes = [z[k].shape for k in keys]
    rounds, weights = [], []
    prev = _flat(g0, keys)
    init = prev.copy()
    for r in range(1, ROUNDS + 1):
        rdir = out / "rounds" / f"{r:03d}"
        meta = json.loads((rdir / "round.json").read_text())
        ups = {}
        for s in meta["sites"]:
            ups[names[s["dataset-id"]]] = (
                _flat(rdir / "updates" / f"{s['dataset-id']}.npz", keys) - prev
            )
        rounds.append(ups)
        weights.append({names[s["dataset-id"]]: s["num_examples"] for s in meta["sites"]})
        prev = _flat(rdir / "global.npz", keys)
    state = np.concatenate([e.state for e in valid])
    action = np.concatenate([e.action for e in valid])
    c = contributions(rounds, weights, init, _loss_fn(keys, shapes, state, action))
    last = min(c, key=c.get) == bad
    return last, {
        "bad": bad,
        "contributions": {str(k): v for k, v in c.items()},
        "split": {str(k): round(v, 3) for k, v in revenue_split(c).items()},
    }


def main() -> None:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = Site.init(Path(tmp) / "src", org="src")
        did = enroll(base, DATA).dataset_id
        eps = list(inject.read_episodes(base, did))
    valid, source = eps[-10:], eps[:-10]
    hits, runs = 0, []
    for seed in SEEDS:
        with tempfile.TemporaryDirectory() as tmp:
            last, info = one_seed(Path(tmp), source, valid, seed)
        hits += int(last)
        runs.append(info)
        print(
            f"seed {seed}: bad site {info['bad']} last={last} {info['contributions']}",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {
                "last_in": hits,
                "seeds": len(SEEDS),
                "rounds": ROUNDS,
                "sites": SITES,
                "runs": runs,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
