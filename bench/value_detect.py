"""Does contribution single out a bad site? (issue 6, bench/value_detect.py)

For each of 10 seeds: 4 federated sites each hold PER_SITE (20) episodes of the
real Unitree G1 recording (tests/data); one site (a different one per
seed) has its actions shuffled across frames (every frame keeps a real action,
so the action distribution is intact, but actions no longer follow the states).
A Flower simulation (dataspace.federated.train on the simulation engine: bc-mlp, DP-SGD,
epsilon 8 per contract) trains for ROUNDS (5) rounds; then the product's own
code, dataspace.federated.contribution.run_contributions (what ``dataspace train
--validation`` and the demo call), computes GTG-Shapley over the rounds' stored
updates with the consumer's MSE on 10 held-out clean episodes (held by no site)
as the utility.

Each site picks the clip bound of its DP normalisation statistics itself, with
DP (the default, ``dataspace.federated.normalize.dp_bound``: 2.0 here, as the G1
joint positions and hand commands all lie within +-1.36); ``STATS_BOUND=B``
fixes it in every site's ``site.toml [training] stats_bound`` instead. With a
bound of 10 (the old fixed default), the variance floor of the pooled noisy
statistics (4 x ~5,000 frames) sets every action scale to ~1.1-1.7 where the
true ones are 0.03-0.32, the normalised targets are then nearly constant, the
policy learns only the mean action, and a site with shuffled actions teaches
that mean as well as any other (see bench/RESULTS.md, value_detect).
``STATS_BOUND=10`` reproduces that.

``CORRUPTION=noisy`` gives the bad site noisy actions instead: Gaussian noise
of NOISE_SCALE (1.0) times each action coordinate's standard deviation over the
site's frames is added to every action (the states are untouched, the actions
still follow them on average, only with a poor signal-to-noise ratio).

Value that reflects quality (issue 18): after the run each site checks its own
dataset (dataspace.quality.check.run_checks, on site) and the value report
combines contribution with the signed quality reports
(``run_contributions(..., quality=...)``, dataspace.quality.value.quality_adjusted:
a positive contribution is credited only for the dataset's usable share, the
share of its motion in unflagged episodes, and the flagged share is charged at
the run's mean |contribution|). ``identified_in`` counts the seeds in which the
bad site has the lowest quality-adjusted value; ``clean_usable_min`` is the
smallest usable share of any clean site (1.0: clean sites lose nothing).
``SEED0`` shifts the seeds (validation on seeds the combination was not chosen on).

Last stdout line: {"last_in": seeds where the bad site ranked last (contribution
alone), "identified_in": seeds where it ranked last by quality-adjusted value,
"seeds": 10, ...}.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dataspace.connectors.enroll import enroll
from dataspace.demo.federation import grant
from dataspace.federated import RunSpec, train
from dataspace.federated.contribution import run_contributions
from dataspace.quality import inject
from dataspace.quality.check import run_checks
from dataspace.schema import Episode
from dataspace.site import Site, create_site
from dataspace.site.identity import load_private_key, new_identity

#: the real G1 recording committed with the tests (the same files as ../shared/data's)
DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "unitree-g1-lerobot-v2.1"
#: seeds SEED0 .. SEED0 + SEEDS - 1
SEEDS = range(
    int(os.environ.get("SEED0", "0")),
    int(os.environ.get("SEED0", "0")) + int(os.environ.get("SEEDS", "10")),
)
SITES = 4
PER_SITE = int(os.environ.get("PER_SITE", "20"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
EPSILON = 8.0
#: "auto": each site picks its bound with DP (federated/normalize.dp_bound), the default
STATS_BOUND = os.environ.get("STATS_BOUND", "auto")
VALIDATION = 10  # the consumer's own episodes (the recording's last 10)
CORRUPTION = os.environ.get("CORRUPTION", "shuffled")
NOISE_SCALE = float(os.environ.get("NOISE_SCALE", "1.0"))
CORRUPTIONS = {
    "shuffled": "actions shuffled across frames",
    "noisy": f"Gaussian noise of {NOISE_SCALE} x each action coordinate's std added",
}


def shuffled_actions(eps: list[Episode], rng: np.random.Generator) -> list[Episode]:
    """The same episodes with all their actions permuted across frames."""
    all_a = np.concatenate([e.action for e in eps])
    all_a = all_a[rng.permutation(len(all_a))]
    pos, out = 0, []
    for e in eps:
        out.append(inject._copy(e, action=all_a[pos : pos + e.frames].copy()))
        pos += e.frames
    return out


def noisy_actions(eps: list[Episode], rng: np.random.Generator) -> list[Episode]:
    """The same episodes with Gaussian noise of NOISE_SCALE x the per-coordinate std."""
    std = np.concatenate([e.action for e in eps]).std(axis=0)
    return [
        inject._copy(
            e,
            action=(e.action + rng.normal(size=e.action.shape) * NOISE_SCALE * std).astype(
                e.action.dtype
            ),
        )
        for e in eps
    ]


def make_site(root: Path, i: int, eps: list[Episode]) -> tuple[Site, str]:
    site = create_site(root / f"site-{i}", f"holder-{i}", name=f"holder-{i}")
    cfg = site.root / "site.toml"
    if STATS_BOUND != "auto":
        cfg.write_text(cfg.read_text() + f"\n[training]\nstats_bound = {float(STATS_BOUND)}\n")
    return site, inject.write_dataset(site, f"part-{i}", eps, fps=30.0, tasks=["t"])


def one_seed(tmp: Path, source: list[Episode], valid: list[Episode], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    bad = seed % SITES
    order = rng.permutation(len(source))
    key_path = tmp / "consumer.key"
    consumer = new_identity(key_path, name="robotco", role="consumer")
    key = load_private_key(key_path)
    sites, contracts, names, reports = [], [], {}, {}
    for i in range(SITES):
        eps = [source[j] for j in order[i * PER_SITE : (i + 1) * PER_SITE]]
        if i == bad:
            eps = (
                shuffled_actions(eps, rng) if CORRUPTION == "shuffled" else noisy_actions(eps, rng)
            )
        site, did = make_site(tmp, i, eps)
        # each holder checks its own data on site; only the signed report leaves
        reports[did] = run_checks(site, did).public
        contracts.append(grant(site, did, consumer, key, epsilon=EPSILON, rounds=ROUNDS))
        sites.append(site)
        names[did] = i
    out = tmp / "run"
    t0 = time.perf_counter()
    train(
        RunSpec(contracts=contracts, template="bc-mlp", rounds=ROUNDS, out_dir=out, seed=seed),
        sites,
        "simulation",
    )
    t_train = time.perf_counter() - t0
    value = run_contributions(out, "bc-mlp", valid, quality=reports)
    c = {names[d]: v for d, v in value["contribution"].items()}
    adjusted = {names[d]: v for d, v in value["quality_adjusted"].items()}
    usable = {names[d]: v for d, v in value["usable_share"].items()}
    ranked = sorted(c, key=c.get)
    bad_id = next(d for d, i in names.items() if i == bad)
    per_round_last = sum(min(r, key=r.get) == bad_id for r in value["per_round"])
    return {
        "bad": bad,
        "last": ranked[0] == bad,
        "identified": min(adjusted, key=adjusted.get) == bad,
        "contributions": {str(k): round(c[k], 4) for k in sorted(c)},
        "quality_adjusted": {str(k): round(adjusted[k], 4) for k in sorted(adjusted)},
        "usable_share": {str(k): usable[k] for k in sorted(usable)},
        "adjusted_split": {
            str(names[d]): round(v, 3) for d, v in sorted(value["quality_adjusted_split"].items())
        },
        "split": {str(names[d]): round(v, 3) for d, v in sorted(value["split"].items())},
        "rounds_bad_last": int(per_round_last),
        "validation_mse": {k: round(v, 4) for k, v in value["validation_mse"].items()},
        "train_s": round(t_train, 1),
        "value_s": round(time.perf_counter() - t0 - t_train, 1),
    }


def main() -> None:
    if CORRUPTION not in CORRUPTIONS:
        raise SystemExit(f"CORRUPTION={CORRUPTION!r}: expected one of {', '.join(CORRUPTIONS)}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = create_site(Path(tmp) / "src", org="src")
        did = enroll(base, DATA).dataset_id
        eps = list(inject.read_episodes(base, did))
    valid, source = eps[-VALIDATION:], eps[:-VALIDATION]
    assert len(source) >= SITES * PER_SITE, "not enough episodes for disjoint sites"
    runs = []
    for seed in SEEDS:
        with tempfile.TemporaryDirectory() as tmp:
            info = one_seed(Path(tmp), source, valid, seed)
        runs.append(info)
        print(
            f"seed {seed}: bad site {info['bad']} last={info['last']} "
            f"identified={info['identified']} {info['contributions']} "
            f"usable {info['usable_share']} ({info['train_s']}s train, {info['value_s']}s value)",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {
                "last_in": sum(r["last"] for r in runs),
                "identified_in": sum(r["identified"] for r in runs),
                "clean_usable_min": min(
                    (u for r in runs for k, u in r["usable_share"].items() if int(k) != r["bad"]),
                    default=None,
                ),
                "seeds": len(SEEDS),
                "method": "GTG-Shapley per round, consumer validation MSE",
                "corruption": CORRUPTIONS[CORRUPTION],
                "rounds": ROUNDS,
                "sites": SITES,
                "episodes_per_site": PER_SITE,
                "epsilon": EPSILON,
                "stats_bound": STATS_BOUND,
                "runs": runs,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
