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

Options beyond the recipe (issue 17, session 7):

* ``width`` in the grid: the MLP's hidden sizes (``256x256`` is ``bc-mlp``);
* ``--stats``: ``exact`` (pooled, not private: isolates the training recipe), ``dp``
  (each site's DP statistics at the plan's ``stats_noise``, per-coordinate bounds,
  :mod:`dataspace.federated.normalize`, what the sites release), or ``public`` (exact
  statistics of the consumer's own ``--consumer-demos`` episodes, as
  ``dataspace train --stats-from`` sends);
* ``--warm N``: a public warm start: the consumer trains on its own N episodes
  centrally (:func:`baseline.tuned_central`: lr and epochs on a validation split of
  those episodes), the federation fine-tunes from that model with the consumer's
  statistics; the warm start alone is scored too (``warm_success``).

Session 7, part 2:

* ``srv`` and ``slr`` in the grid: a server optimizer on FedAvg's pseudo-gradient
  (:class:`ServerOpt`: ``fedavg``, ``fedavgm`` with momentum 0.9, ``fedadam``; Reddi et
  al. 2021), post-processing at the server; ``slr`` its learning rate;
* ``--stats-file F``: normalise with the statistics in F (a JSON object of lists, or a
  run's ``stats.json``, whose ``pooled`` is read), e.g. a real run's pooled DP ones.
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
from dataspace.federated.templates import REGISTRY, get_template

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


def consumer_data(task: sr.Task, demos: int, seed: int = 0):
    """The consumer's own expert episodes (targets over the whole workspace), as in
    closed_loop.consumer_stats, with each frame's episode index."""
    sim = sr.Sim(task)
    goals = sr.sector_goals(task, demos, None, 3, np.random.default_rng(50_000 + seed))
    eps = sr.record(sim, goals, seed=700_000 + seed)
    s = torch.from_numpy(np.concatenate([e[0] for e in eps]))
    a = torch.from_numpy(np.concatenate([e[1] for e in eps]))
    ep = torch.cat([torch.full((len(e[0]),), i, dtype=torch.long) for i, e in enumerate(eps)])
    return s, a, ep


def template_of(width: str):
    """bc-mlp with hidden sizes ``width`` ("128x128")."""
    hidden = tuple(int(w) for w in width.split("x"))
    return dataclasses.replace(get_template("bc-mlp"), hidden=hidden)


def dp_stats(data, eps: float, rounds: int, settings: dp.TrainingSettings, seed: int):
    """The sites' DP statistics, as their ClientApps release them (per-coordinate bounds):
    (pooled, each site's own)."""
    parts = []
    for k, (s, a) in enumerate(data):
        plan = dp.make_plan(eps, 1e-5, rounds, s.shape[0], settings)
        rng = NoiseSource.seeded(f"stats/{seed}/{k}")
        bound = normalize.dp_bound(s, a, plan.stats_noise, rng)
        parts.append(normalize.dp_sums(s, a, bound, plan.stats_noise, rng))
    dim = data[0][0].shape[1]
    return normalize.combine(parts, dim), [normalize.combine([p], dim) for p in parts]


class ServerOpt:
    """A server optimizer on FedAvg's pseudo-gradient ``delta = avg - global`` (Reddi et
    al. 2021, "Adaptive Federated Optimization"): ``fedavg`` (x += delta), ``fedavgm``
    (m = beta m + delta; x += lr m), ``fedadam`` (m = b1 m + (1-b1) delta,
    v = b2 v + (1-b2) delta^2, x += lr m / (sqrt(v) + tau); no bias correction).
    Post-processing of the sites' DP updates: no privacy cost. The normalisation buffers
    are left out (the server keeps round 0's)."""

    def __init__(self, kind: str, lr: float = 1.0, momentum: float = 0.9, b2: float = 0.99,
                 tau: float = 1e-3):  # fmt: skip
        self.kind, self.lr, self.momentum, self.b2, self.tau = kind, lr, momentum, b2, tau
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def step(self, glob: dict, avg: dict) -> dict:
        if self.kind == "fedavg":
            return avg
        out = dict(avg)
        for k, x in glob.items():
            if k in normalize_fields or not torch.is_floating_point(x):
                continue
            d = avg[k] - x
            if self.kind == "fedavgm":
                self.m[k] = self.momentum * self.m.get(k, torch.zeros_like(d)) + d
                out[k] = x + self.lr * self.m[k]
            elif self.kind == "fedadam":
                self.m[k] = (
                    self.momentum * self.m.get(k, torch.zeros_like(d)) + (1 - self.momentum) * d
                )
                self.v[k] = self.b2 * self.v.get(k, torch.zeros_like(d)) + (1 - self.b2) * d * d
                out[k] = x + self.lr * self.m[k] / (self.v[k].sqrt() + self.tau)
            else:
                raise ValueError(f"unknown server optimizer {self.kind!r}")
        return out


normalize_fields = ("state_mean", "state_std", "action_mean", "action_std")


def federated(data, eps, rounds, steps, batch, clip, optimizer, lr, schedule, seed=0,
              private=True, width="256x256", stats=None, init=None, own=None,
              server=None, stats_share=dp.STATS_SHARE):  # fmt: skip
    tmpl = template_of(width)
    s_all = torch.cat([s for s, _ in data])
    a_all = torch.cat([a for _, a in data])
    stats = normalize.exact_stats(s_all, a_all) if stats is None else stats
    glob = tmpl.build(s_all.shape[1], a_all.shape[1], seed=seed)
    if init is not None:  # a warm start: its weights (its buffers are replaced below)
        glob.load_state_dict(init.state_dict())
    normalize.apply_stats(glob, stats)
    settings = dp.TrainingSettings(batch_size=batch, clip_norm=clip, local_steps=steps,
                                   stats_share=stats_share)  # fmt: skip
    server = server or ServerOpt("fedavg")
    for r in range(1, rounds + 1):
        states, weights = [], []
        for k, (s, a) in enumerate(data):
            plan = dp.make_plan(eps, 1e-5, rounds, s.shape[0], settings)
            pol = copy.deepcopy(glob)
            if own is not None:  # the site trains in its own statistics' units
                normalize.apply_stats(pol, own[k])
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
        glob.load_state_dict(server.step(glob.state_dict(), avg))
        normalize.apply_stats(glob, stats)  # the server keeps round 0's buffers
    return glob


def act_of(p):
    def act(obs):
        with torch.no_grad():
            x = (torch.from_numpy(obs) - p.state_mean) / p.state_std
            return (p(x[None])[0] * p.action_std + p.action_mean).numpy()

    return act


def warm_start(task: sr.Task, demos: int, width: str, seed: int = 0):
    """The consumer's central policy on its own episodes, and their exact statistics."""
    import baseline

    from dataspace.federated import data as fdata

    s, a, ep = consumer_data(task, demos, seed)
    # tuned_central takes a template name: register this width under a bench-only name
    name = f"tune-{width}"
    REGISTRY.setdefault(name, dataclasses.replace(template_of(width), name=name))
    tuned = baseline.tuned_central(fdata.Frames(s, a, ep), template=name, seed=seed)
    p = tuned.policy  # the statistics it was trained with (its train split's, exact)
    fields = ("state_mean", "state_std", "action_mean", "action_std")
    stats = normalize.Stats(*(getattr(p, f).numpy().copy() for f in fields))
    return tuned, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="reacher", choices=sorted(sr.TASKS))
    ap.add_argument("--demos", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--rollouts", type=int, default=50)
    ap.add_argument("--no-dp", action="store_true", help="FedAvg without clipping or noise")
    ap.add_argument("--stats", default="exact",
                    choices=["exact", "dp", "dp-own", "public"],
                    help="dp-own: each site trains with its own DP statistics (the ClientApp "
                    "today), the global model carries the pooled ones")  # fmt: skip
    ap.add_argument("--stats-file", type=Path,
                    help="normalise with these statistics (a JSON object of lists, e.g. a "
                    "run's stats.json 'pooled'), overriding --stats")  # fmt: skip
    ap.add_argument("--stats-share", type=float, default=dp.STATS_SHARE,
                    help="epsilon share of the DP statistics (site.toml stats_share)")  # fmt: skip
    ap.add_argument("--consumer-demos", type=int, default=20)
    ap.add_argument("--warm", action="store_true", help="start from the consumer's own policy")
    ap.add_argument("--seed", type=int, default=0, help="the model's initialisation and noise")
    ap.add_argument("--grid", default="steps=100;lr=1e-3;opt=adam;sched=cosine;batch=256;clip=1.0",
                    help="key=v1,v2;... over steps lr opt sched batch clip width srv slr "
                    "(srv: fedavg, fedavgm, fedadam; slr: the server's lr)")  # fmt: skip
    a = ap.parse_args()
    grid = {k: v.split(",") for k, v in (p.split("=") for p in a.grid.split(";"))}
    grid.setdefault("width", ["256x256"])
    grid.setdefault("srv", ["fedavg"])
    grid.setdefault("slr", ["1.0"])
    task = sr.TASKS[a.task]
    data = site_data(task, a.demos, seed=1)
    sim = sr.Sim(task)
    goals = sr.sector_goals(task, a.rollouts, None, 3, np.random.default_rng(555))
    results = []
    keys = ["steps", "lr", "opt", "sched", "batch", "clip", "width", "srv", "slr"]
    warm: dict[str, tuple] = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        c = dict(zip(keys, combo, strict=True))
        t = time.perf_counter()
        settings = dp.TrainingSettings(batch_size=int(c["batch"]), clip_norm=float(c["clip"]),
                                       local_steps=int(c["steps"]),
                                       stats_share=a.stats_share)  # fmt: skip
        init, extra = None, {}
        if a.warm:
            if c["width"] not in warm:
                tuned, st = warm_start(task, a.consumer_demos, c["width"], a.seed)
                k0, _ = sr.success_rate(sim, act_of(tuned.policy), goals, 777_000)
                warm[c["width"]] = (tuned, st, k0 / len(goals), tuned.lr, tuned.epochs)
            init, stats, w_succ, w_lr, w_ep = warm[c["width"]]
            init = init.policy
            extra = {"warm_success": w_succ, "warm_lr": w_lr, "warm_epochs": w_ep}
        elif a.stats in ("dp", "dp-own"):
            stats, own_stats = dp_stats(data, a.epsilon, a.rounds, settings, a.seed)
            extra = {"own": own_stats} if a.stats == "dp-own" else {}
        elif a.stats == "public":
            s_c, a_c, _ = consumer_data(task, a.consumer_demos, a.seed)
            stats = normalize.exact_stats(s_c, a_c)
        else:
            stats = None
        if a.stats_file is not None:
            from dataspace.federated import public_stats

            doc = json.loads(a.stats_file.read_text())
            stats = public_stats.check_stats(doc.get("pooled", doc))
        pol = federated(
            data, a.epsilon, a.rounds, int(c["steps"]), int(c["batch"]), float(c["clip"]),
            c["opt"], float(c["lr"]), c["sched"], seed=a.seed, private=not a.no_dp,
            width=c["width"], stats=stats, init=init, own=extra.pop("own", None),
            server=ServerOpt(c["srv"], float(c["slr"])), stats_share=a.stats_share,
        )  # fmt: skip
        k, d = sr.success_rate(sim, act_of(pol), goals, 777_000)
        res = {**c, "success": k / len(goals), "median_distance": round(float(np.median(d)), 4),
               **extra, "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip
        print(json.dumps(res), file=sys.stderr, flush=True)
        results.append(res)
    print(
        json.dumps(
            {
                "task": a.task,
                "epsilon": None if a.no_dp else a.epsilon,
                "rounds": a.rounds,
                "stats": str(a.stats_file) if a.stats_file else "warm" if a.warm else a.stats,
                "seed": a.seed,
                "rollouts": a.rollouts,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
