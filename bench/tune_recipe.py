"""Grid search of the federated DP recipe on ONE simulated task (issue 17).

How the defaults of :mod:`dataspace.federated.dp` (``LOCAL_STEPS``, ``DEFAULT_LR``,
the optimizer, the schedule) were chosen: on ``--task reacher`` only, then checked,
untouched, on ``reacher-long`` and the Unitree G1 sample (bench/closed_loop.py,
bench/fl_utility.py). This replays the ClientApp's mechanism in one process
(the same :func:`dataspace.federated.dp.make_plan`, :func:`~dataspace.federated.dp.train_dp`
with its secret-noise source, FedAvg weighted by frames) without Flower, contracts
or ledgers, so that a grid point costs seconds; the statistics are exact here (the
data space's DP statistics cost 5 % of epsilon and move the result little). Scored
by closed-loop success over ``--rollouts`` rollouts of targets over the whole
workspace (seeded apart from the demonstrations and from closed_loop.py's test
targets). Last stdout line: JSON, one entry per grid point.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sim_reacher as sr

from dataspace.federated import dp, normalize
from dataspace.federated.noise import NoiseSource
from dataspace.federated.templates import get_template

torch.set_num_threads(1)


def site_data(task: sr.Task, demos: int, seed: int):
    sim = sr.Sim(task)
    out = []
    for k in range(3):
        goals = sr.sector_goals(task, demos, k, 3, np.random.default_rng(seed * 1000 + k + 7))
        eps = sr.record(sim, goals, seed=seed * 100_000 + k * 10_000 + 5)
        train = eps[: int(0.8 * len(eps))]  # as the sites' held-out split keeps ~20 %
        s = torch.from_numpy(np.concatenate([e[0] for e in train]))
        a = torch.from_numpy(np.concatenate([e[1] for e in train]))
        out.append((s, a))
    return out


def federated(data, eps, rounds, steps, batch, clip, optimizer, lr, schedule, seed=0, private=True):
    tmpl = get_template("bc-mlp")
    s_all = torch.cat([s for s, _ in data])
    a_all = torch.cat([a for _, a in data])
    stats = normalize.exact_stats(s_all, a_all)
    glob = tmpl.build(s_all.shape[1], a_all.shape[1], seed=seed)
    normalize.apply_stats(glob, stats)
    settings = dp.TrainingSettings(batch_size=batch, clip_norm=clip, local_steps=steps)
    for r in range(1, rounds + 1):
        states, weights = [], []
        for k, (s, a) in enumerate(data):
            plan = dp.make_plan(eps, 1e-5, rounds, s.shape[0], settings)
            pol = copy.deepcopy(glob)
            xs, ys = normalize.normalised(pol, s, a)
            recipe = dp.Recipe(optimizer, lr, schedule, 0.05, rounds * plan.steps_per_round,
                               (r - 1) * plan.steps_per_round)  # fmt: skip
            rng = NoiseSource.seeded(seed * 100 + r * 10 + k)
            # private=False: the same FedAvg and optimizer without clipping or noise
            kw = {} if private else {"noise_multiplier": 0.0}
            if not private:
                plan = dataclasses.replace(plan, clip_norm=1e9)
            dp.train_dp(pol.net, xs, ys, plan, lr=lr, rng=rng, recipe=recipe, **kw)
            states.append(pol.state_dict())
            weights.append(s.shape[0])
        total = sum(weights)
        avg = {
            k: sum(w * st[k] for w, st in zip(weights, states, strict=True)) / total
            for k in states[0]
        }
        glob.load_state_dict(avg)
    return glob


def act_of(p):
    def act(obs):
        with torch.no_grad():
            x = (torch.from_numpy(obs) - p.state_mean) / p.state_std
            return (p(x[None])[0] * p.action_std + p.action_mean).numpy()

    return act


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="reacher", choices=sorted(sr.TASKS))
    ap.add_argument("--demos", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--rollouts", type=int, default=50)
    ap.add_argument("--no-dp", action="store_true", help="FedAvg without clipping or noise")
    ap.add_argument("--grid", default="steps=100;lr=1e-3;opt=adam;sched=cosine;batch=256;clip=1.0",
                    help="key=v1,v2;... over steps, lr, opt, sched, batch, clip")  # fmt: skip
    a = ap.parse_args()
    grid = {k: v.split(",") for k, v in (p.split("=") for p in a.grid.split(";"))}
    task = sr.TASKS[a.task]
    data = site_data(task, a.demos, seed=1)
    sim = sr.Sim(task)
    goals = sr.sector_goals(task, a.rollouts, None, 3, np.random.default_rng(555))
    results = []
    keys = ["steps", "lr", "opt", "sched", "batch", "clip"]
    for combo in itertools.product(*(grid[k] for k in keys)):
        c = dict(zip(keys, combo, strict=True))
        t = time.perf_counter()
        pol = federated(
            data, a.epsilon, a.rounds, int(c["steps"]), int(c["batch"]), float(c["clip"]),
            c["opt"], float(c["lr"]), c["sched"], private=not a.no_dp,
        )  # fmt: skip
        k, d = sr.success_rate(sim, act_of(pol), goals, 777_000)
        res = {**c, "success": k / len(goals), "median_distance": round(float(np.median(d)), 4),
               "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
        print(json.dumps(res), file=sys.stderr, flush=True)
        results.append(res)
    print(
        json.dumps(
            {
                "task": a.task,
                "epsilon": None if a.no_dp else a.epsilon,
                "rounds": a.rounds,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
