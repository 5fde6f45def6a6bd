"""Held-out action MSE: federated DP policy / central non-private policy (issue 5).

Three sites hold contiguous thirds of the Unitree G1 recording (100 episodes:
different sessions and operators, non-IID). Each site's held-out episodes are
chosen by episode hash (dataspace.federated.data.split_episodes). Models:

* central: pooled train episodes of all sites, exact normalisation, no DP, Adam,
  tuned as a practitioner would (bench/baseline.py: learning rate from a grid and
  epochs by early stopping, both on a validation split of the *training* episodes,
  never the held-out ones) -- the baseline;
* federated: the real apps in the one-process engine with the data space's default
  recipe (DP-Adam, ``LOCAL_STEPS`` steps a round, cosine schedule: no site.toml
  [training], no RunSpec options), epsilon 8 (also 2 and 1), delta 1e-5, FedAvg over
  ROUNDS rounds;
* alone: each site trains by itself with the same DP budget.

MSE is over all sites' held-out frames, in raw action units. Last stdout line:
``{"ratio": fed(eps=8) / central, ...}``.

``--privacy-unit episode`` makes every holder protect whole episodes
(``site.toml [training] privacy_unit = "episode"``, user-level DP-SGD, see
dataspace.federated.dp) instead of frames (the default); ``--epsilons`` and
``--no-alone`` shorten a run; ``--lr`` sets the learning rate (default: the recipe's);
``--legacy`` runs the recipe of before issue 17 (DP-SGD, lr 2.0, batch 1024, 4 epochs
a round) for comparison. The output adds
``mean_action_mse`` (held-out MSE of always predicting the mean train action, a
reference), ``privacy_unit``, ``frames_per_episode``, ``plan_site0`` (site 0's noise multiplier,
sample rate, expected batch and steps per round, per epsilon) and ``federated_seconds``.

``--public-stats`` gives the sites public normalisation statistics instead of
their DP ones (``RunSpec(public_stats=...)``, dataspace.federated.public_stats):
the consumer's, here the exact means and scales of the **central training pool**
(the pooled train episodes of all three sites, the data the central baseline
trains on; never the held-out episodes that measure MSE). Assumption: the
benchmark's consumer knows these as public information (in practice it would
compute them from its own episodes of the same robot, ``dataspace train
--stats-from``). The sites then release no statistics and spend the whole
epsilon on DP-SGD and evaluation. Output: ``stats`` ("dp" or "public").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline

from dataspace.demo.federation import make_federation
from dataspace.federated import RunSpec, normalize, public_stats, train
from dataspace.federated import data as fdata
from dataspace.federated.report import load_policy
from dataspace.federated.templates import Policy, get_template

torch.set_num_threads(1)
#: the real G1 recording committed with the tests (the same files as ../shared/data's)
UNITREE = Path(__file__).resolve().parents[1] / "tests" / "data" / "unitree-g1-lerobot-v2.1"
ROUNDS = 10
#: the recipe of before issue 17 (``--legacy``): the holders' settings (site.toml
#: [training]) of large Poisson batches and 4 local epochs a round, DP-SGD at lr 2.0
LEGACY_TRAINING = {"batch_size": 1024, "max_epochs": 4, "local_steps": 0}
LEGACY_SPEC = {"optimizer": "sgd", "lr": 2.0, "lr_schedule": "constant", "warmup": 0.0}


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def frames(fed, which: str) -> fdata.Frames:
    parts = []
    for site, dsid in zip(fed.sites, fed.dataset_ids, strict=True):
        ref = fdata.dataset_ref(site, dsid)
        split = fdata.split_episodes(site, dsid)
        fr = fdata.load_frames(site, ref, getattr(split, which))
        # keep episodes distinct across sites
        parts.append((fr, len(parts) * 10_000))
    return fdata.Frames(
        state=torch.cat([p.state for p, _ in parts]),
        action=torch.cat([p.action for p, _ in parts]),
        episode=torch.cat([p.episode + off for p, off in parts]),
    )


def mse(policy: Policy, fr: fdata.Frames) -> float:
    tmpl = get_template("bc-mlp")
    xs, ys = normalize.normalised(policy, fr.state, fr.action)
    x, _ = tmpl.pairs(xs, ys, fr.episode)
    with torch.no_grad():
        pred = policy(x) * policy.action_std + policy.action_mean
    return float(((pred - fr.action) ** 2).mean())


def central(train: fdata.Frames) -> baseline.Tuned:
    """The practitioner's tuned baseline (bench/baseline.py)."""
    return baseline.tuned_central(train, max_epochs=100, patience=8, log=log)


def _toml(v: object) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


def federated(
    root: Path,
    eps: float,
    sites: list[int] | None = None,
    training: dict | None = None,
    spec_kw: dict | None = None,
    public: normalize.Stats | None = None,
) -> tuple[Policy, float, dict]:
    training = training or {}
    fed = make_federation(root, UNITREE, epsilon=eps, rounds=ROUNDS)
    for site in fed.sites if training else []:  # the defaults: no [training] section
        with open(site.config_path, "a") as f:
            f.write("\n[training]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in training.items()))
    idx = sites if sites is not None else [0, 1, 2]
    t = time.perf_counter()
    h = train(
        RunSpec(
            contracts=[fed.contract_ids[i] for i in idx],
            template="bc-mlp",
            rounds=ROUNDS,
            out_dir=root / "run",
            seed=0,
            min_nodes=1,
            public_stats=public,
            **(spec_kw or {}),
        ),
        [fed.sites[i] for i in idx],
        "simulation",
    )
    return load_policy(root / "run"), time.perf_counter() - t, h


def _noise(root: Path, eps: float, public: bool = False) -> dict:
    """Site 0's privacy plan, as its ClientApp computes it (settings + metadata only)."""
    from dataspace.federated import dp
    from dataspace.site.folder import Site

    site = Site.open(root / "site-0")
    with site.db(read_only=True) as con:
        (dsid,) = con.execute("SELECT dataset_id FROM datasets").fetchone()
    split = fdata.split_episodes(site, dsid)
    settings = dp.TrainingSettings.from_config(site.config)
    make = public_stats.plan_without_stats if public else dp.make_plan
    plan = make(eps, 1e-5, ROUNDS, split.train_frames, settings, len(split.train))
    return {
        "noise_multiplier": round(plan.noise_multiplier, 4),
        "sample_rate": round(plan.sample_rate, 4),
        "expected_batch": round(plan.sample_rate * plan.units, 1),
        "steps_per_round": plan.steps_per_round,
        "units": plan.units,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--privacy-unit", choices=("frame", "episode"), default="frame")
    ap.add_argument("--frames-per-episode", type=int, default=32, help="episode unit: m")
    ap.add_argument(
        "--episodes-per-batch", type=int, default=0, help="episode unit: b (0: batch / m)"
    )
    ap.add_argument("--epsilons", default="8,2,1", help="comma-separated; 8 gives `ratio`")
    ap.add_argument("--no-alone", action="store_true", help="skip the sites-alone runs")
    ap.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    ap.add_argument("--legacy", action="store_true", help="the recipe of before issue 17")
    ap.add_argument(
        "--public-stats",
        action="store_true",
        help="normalise with the central training pool's exact statistics (public), not DP ones",
    )
    args = ap.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",") if e]
    training = dict(LEGACY_TRAINING) if args.legacy else {}
    spec_kw = dict(LEGACY_SPEC) if args.legacy else {}
    if args.lr is not None:
        spec_kw["lr"] = args.lr
    if args.privacy_unit != "frame":  # the default run writes exactly the old settings
        training.update(privacy_unit=args.privacy_unit, frames_per_episode=args.frames_per_episode)
        if args.episodes_per_batch:
            training.update(episodes_per_batch=args.episodes_per_batch)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref = make_federation(tmp / "ref", UNITREE, epsilon=1.0, rounds=1)
        train, held = frames(ref, "train"), frames(ref, "heldout")
        log(f"train frames {len(train)}, held-out frames {len(held)}")
        tuned = central(train)
        base = mse(tuned.policy, held)
        log(f"central non-private (lr {tuned.lr:g}, {tuned.epochs} epochs): {base:.5f}")
        out: dict = {"central_mse": base, "federated_mse": {}, "alone_mse": {}}
        # a reference point: always predicting the pooled train episodes' mean action
        mean_mse = float(((held.action - train.action.mean(0)) ** 2).mean())
        log(f"mean action predictor: {mean_mse:.5f}")
        public = None
        if args.public_stats:  # the consumer's public information (module docstring)
            public = public_stats.check_stats(normalize.exact_stats(train.state, train.action))
            log("public statistics: exact, of the central training pool")
        noise: dict = {}
        seconds: dict = {}
        for eps in epsilons:
            pol, secs, hist = federated(
                tmp / f"fed{eps}", eps, training=training, spec_kw=spec_kw, public=public
            )
            out.setdefault("heldout_mse_per_round", {})[str(eps)] = [
                r.get("eval_mse") for r in hist.get("rounds", [])
            ]
            out["federated_mse"][str(eps)] = mse(pol, held)
            noise[str(eps)] = _noise(tmp / f"fed{eps}", eps, public is not None)
            seconds[str(eps)] = round(secs, 1)
            log(
                f"federated eps {eps} ({args.privacy_unit}): "
                f"{out['federated_mse'][str(eps)]:.5f} ({secs:.0f}s, site-0 plan {noise[str(eps)]})"
            )
        for i in range(0 if args.no_alone else 3):
            pol, _, _ = federated(
                tmp / f"alone{i}", 8.0, [i], training=training, spec_kw=spec_kw, public=public
            )
            out["alone_mse"][f"site-{i}"] = mse(pol, held)
            log(f"site {i} alone eps 8: {out['alone_mse'][f'site-{i}']:.5f}")
        for key, eps in (("ratio", "8.0"), ("ratio_eps2", "2.0"), ("ratio_eps1", "1.0")):
            if eps in out["federated_mse"]:
                out[key] = round(out["federated_mse"][eps] / base, 3)
        out["ratio_alone"] = {k: round(v / base, 3) for k, v in out["alone_mse"].items()}
        out.update(
            rounds=ROUNDS,
            recipe="legacy" if args.legacy else "default",
            spec=spec_kw,
            central_tuning={"lr": tuned.lr, "epochs": tuned.epochs, "grid": tuned.grid},
            delta=1e-5,
            sites=3,
            training=training,
            dataset="unitree-g1 (100 episodes in 3 ranges)",
            mean_action_mse=mean_mse,
            privacy_unit=args.privacy_unit,
            frames_per_episode=args.frames_per_episode if args.privacy_unit == "episode" else None,
            plan_site0=noise,
            stats="public" if public is not None else "dp",
            federated_seconds=seconds,
        )
        print(json.dumps(out))


if __name__ == "__main__":
    main()
