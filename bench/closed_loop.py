"""Closed-loop success of trained policies in a physics simulator (issue 17).

A robot company asks how often the robot succeeds, not what the held-out MSE is.
This benchmark measures it end to end, through the real data space:

1. **demonstrations**: a scripted expert (:mod:`sim_reacher`: inverse kinematics +
   PD, from the observation alone) records ``--demos`` episodes per site in MuJoCo
   (gymnasium's Reacher-v5 model, or the ``reacher-long`` variant built from its XML),
   written as robomimic-style HDF5 files, one per site;
2. **non-IID sites**: site k's targets lie in the k-th third of the circle (by polar
   angle), so no site alone has seen the whole workspace;
3. **holders**: three real sites (``create_site``), each file enrolled with the HDF5
   connector, a usage policy and an agreed contract at ``--epsilon`` (default 8,
   delta 1e-5) for ``--rounds`` rounds (default 100: sites whose data differ need many
   short rounds, and the sites' ``run_steps`` cap makes them 20 DP steps each, at the
   noise of a 20-round run; bench/RESULTS.md, "Session 8");
4. **training** through the data space as a consumer-side developer would:
   ``dataspace.federated.train(RunSpec(...), sites, "simulation")`` (the real
   ServerApp and the connectors' ClientApps in one process), with the recipe's
   DEFAULTS (no site.toml [training], no recipe option) unless an option says
   otherwise, and normalised with the consumer's public statistics: the exact means
   and scales of ``--consumer-demos`` (20) expert episodes of its own robot, what
   ``dataspace train --stats-from`` sends (``--dp-stats``: the sites' DP statistics
   instead); the policy is then loaded the documented way, ``dataspace.load_policy(run)``,
   which reads the run's LeRobot export;
5. **baselines**: central non-private (pooled training episodes, exact statistics,
   Adam, learning rate and epochs chosen on a validation split of the training
   episodes, early stopping: :mod:`baseline`), and each site alone (its own contract,
   the same DP recipe and epsilon);
6. **rollouts**: every policy (and the expert) from the same ``--rollouts`` start
   states, targets uniform over the whole workspace (seeded apart from the
   demonstrations); success = fingertip within ``success_radius`` (2 cm) of the
   target at the last step; Wilson 95 % intervals.

Last stdout line: one JSON object with ``success_federated``, ``success_central``,
``success_alone`` (per site), ``ratio`` (federated / central), each ``*_ci``, the
``task``, ``epsilon`` (contract) and ``epsilon_spent`` (per dataset, what the sites'
ledgers charged), the plan's noise, the recipe, and ``seconds`` per stage.
``--quick``: 20 demonstrations a site, 3 rounds, 30 rollouts (a smoke run).
``--plot FILE``: also draw the success rates with their intervals (PNG, :func:`plot`).
Progress (rich) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline
import sim_reacher as sr

import dataspace
from dataspace.connectors.enroll import enroll
from dataspace.demo.federation import grant
from dataspace.federated import RunSpec, dp, normalize, public_stats, train
from dataspace.federated import data as fdata
from dataspace.federated.report import write_report
from dataspace.federated.templates import Policy
from dataspace.site import Site, create_site
from dataspace.site.identity import load_private_key, new_identity

torch.set_num_threads(1)
SITES = 3
console = Console(stderr=True)


def log(msg: str) -> None:
    console.log(msg)


def _toml(v: object) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


def make_sites(root: Path, task: sr.Task, demos: int, seed: int, log=log) -> list[Path]:
    """One HDF5 file of expert demonstrations per site, targets in the site's sector."""
    sim = sr.Sim(task)
    files = []
    for k in range(SITES):
        rng = np.random.default_rng(seed * 1000 + k)
        goals = sr.sector_goals(task, demos, k, SITES, rng)
        eps = sr.record(sim, goals, seed=seed * 100_000 + k * 10_000)
        files.append(sr.write_hdf5(root / "raw" / f"site-{k}" / "demos.h5", eps))
        log(f"site {k}: {demos} demonstrations, targets at {k * 120}..{(k + 1) * 120} degrees")
    return files


def enroll_sites(root: Path, files: list[Path], epsilon: float, rounds: int, training: dict):
    """Real sites, the files enrolled, a policy and an agreed contract each."""
    root.mkdir(parents=True, exist_ok=True)
    key_path = root / "consumer.key"
    consumer = new_identity(key_path, name="robotco", role="consumer")
    key = load_private_key(key_path)
    sites, dsids, cids = [], [], []
    for k, f in enumerate(files):
        site = create_site(root / f"site-{k}", f"holder-{k}", name=f"holder-{k}")
        if training:  # the holders' own settings; none: the defaults
            with open(site.config_path, "a") as fh:
                fh.write(
                    "\n[training]\n" + "".join(f"{a} = {_toml(v)}\n" for a, v in training.items())
                )
            site = Site.open(site.root)
        res = enroll(site, f, format="hdf5")
        cids.append(grant(site, res.dataset_id, consumer, key, epsilon=epsilon, rounds=rounds))
        sites.append(site)
        dsids.append(res.dataset_id)
    return sites, dsids, cids


def train_frames(sites: list[Site], dsids: list[str]) -> fdata.Frames:
    """The pooled training episodes of every site (the sites' own train split)."""
    parts = []
    for k, (site, dsid) in enumerate(zip(sites, dsids, strict=True)):
        ref = fdata.dataset_ref(site, dsid)
        split = fdata.split_episodes(site, dsid)
        fr = fdata.load_frames(site, ref, split.train)
        parts.append(fdata.Frames(fr.state, fr.action, fr.episode + k * 100_000))
    return fdata.Frames(
        torch.cat([p.state for p in parts]),
        torch.cat([p.action for p in parts]),
        torch.cat([p.episode for p in parts]),
    )


def consumer_stats(task: sr.Task, demos: int, seed: int):
    """The consumer's public normalisation statistics: exact means and scales of its OWN
    expert episodes on its own robot (targets over the whole workspace, seeded apart from
    the holders' and the test targets), as ``dataspace train --stats-from`` would send."""
    sim = sr.Sim(task)
    goals = sr.sector_goals(task, demos, None, SITES, np.random.default_rng(50_000 + seed))
    eps = sr.record(sim, goals, seed=700_000 + seed)
    state = torch.from_numpy(np.concatenate([e[0] for e in eps]))
    action = torch.from_numpy(np.concatenate([e[1] for e in eps]))
    return public_stats.check_stats(normalize.exact_stats(state, action))


def federated(root: Path, name: str, sites, cids, rounds: int, spec_kw: dict, seed: int):
    """The consumer's run through the data space; the policy loaded as documented."""
    out = root / name
    h = train(
        RunSpec(
            contracts=cids, template="bc-mlp", rounds=rounds, out_dir=out, seed=seed, **spec_kw
        ),
        sites,
        "simulation",
    )
    report = write_report(out)
    per_round = [r.get("eval_mse") for r in h.get("rounds", [])]
    return dataspace.load_policy(out), report, per_round


class CentralPolicy:
    """The central baseline as a ``select_action``-style callable on raw observations."""

    def __init__(self, policy: Policy) -> None:
        self.p = policy

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = (torch.from_numpy(obs) - self.p.state_mean) / self.p.state_std
            y = self.p(x[None])[0] * self.p.action_std + self.p.action_mean
        return y.numpy()


def deployed(policy) -> sr.Policy:
    """``dataspace.load_policy``'s object as a callable of the raw observation."""

    def act(obs: np.ndarray) -> np.ndarray:
        return policy.select_action({"observation.state": obs})

    act.reset = policy.reset  # type: ignore[attr-defined]
    return act


def rollouts(sim: sr.Sim, policy: sr.Policy, goals: np.ndarray, seed: int) -> dict:
    k, dists = sr.success_rate(sim, policy, goals, seed)
    lo, hi = sr.wilson(k, len(goals))
    return {
        "success": round(k / len(goals), 4),
        "ci": [round(lo, 4), round(hi, 4)],
        "median_distance": round(float(np.median(dists)), 4),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(sr.TASKS), default="reacher")
    ap.add_argument("--demos", type=int, default=80, help="demonstrations per site")
    ap.add_argument("--rollouts", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-alone", action="store_true", help="skip the sites-alone runs")
    ap.add_argument("--no-central", action="store_true", help="skip the central baseline")
    ap.add_argument("--quick", action="store_true", help="20 demos a site, 3 rounds, 30 rollouts")
    ap.add_argument("--workdir", type=Path, help="keep the sites and runs here")
    ap.add_argument("--plot", type=Path, help="draw the success rates here (PNG)")
    ap.add_argument(
        "--dp-stats",
        action="store_true",
        help="normalise with the sites' DP statistics instead of the consumer's own episodes",
    )
    ap.add_argument("--consumer-demos", type=int, default=20, help="the consumer's own episodes")
    # the recipe (defaults: the data space's own; these override it, for tuning)
    ap.add_argument("--optimizer", choices=dp.OPTIMIZERS)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--lr-schedule", choices=dp.SCHEDULES)
    ap.add_argument("--local-steps", type=int, help="site.toml [training] local_steps")
    ap.add_argument("--batch-size", type=int, help="site.toml [training] batch_size")
    ap.add_argument("--clip-norm", type=float, help="site.toml [training] clip_norm")
    ap.add_argument("--stats-share", type=float, help="site.toml [training] stats_share")
    a = ap.parse_args(argv)
    if a.quick:
        a.demos, a.rounds, a.rollouts = min(a.demos, 20), min(a.rounds, 3), min(a.rollouts, 30)
    return a


def run(a: argparse.Namespace) -> dict:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    task = sr.TASKS[a.task]
    training = {
        k: v
        for k, v in (
            ("local_steps", a.local_steps),
            ("batch_size", a.batch_size),
            ("clip_norm", a.clip_norm),
            ("stats_share", a.stats_share),
        )
        if v is not None
    }
    spec_kw = {
        k: v
        for k, v in (("optimizer", a.optimizer), ("lr", a.lr), ("lr_schedule", a.lr_schedule))
        if v is not None
    }
    seconds: dict[str, float] = {}
    out: dict = {"task": task.name}
    with tempfile.TemporaryDirectory(prefix="closed-loop-") as tmp:
        root = a.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        files = make_sites(root, task, a.demos, a.seed)
        sites, dsids, cids = enroll_sites(root, files, a.epsilon, a.rounds, training)
        seconds["demos_and_enrollment"] = round(time.perf_counter() - t, 1)
        if not a.dp_stats:
            spec_kw["public_stats"] = consumer_stats(task, a.consumer_demos, a.seed)
        out["stats"] = "dp" if a.dp_stats else f"public ({a.consumer_demos} consumer episodes)"
        sim = sr.Sim(task)
        test_goals = sr.sector_goals(
            task, a.rollouts, None, SITES, np.random.default_rng(10_000 + a.seed)
        )
        test_seed = 900_000 + a.seed
        expert = rollouts(sim, sr.expert(task), test_goals, test_seed)
        log(f"expert: {expert}")

        t = time.perf_counter()
        policy, report, per_round = federated(
            root, "federated", sites, cids, a.rounds, spec_kw, a.seed
        )
        seconds["federated"] = round(time.perf_counter() - t, 1)
        fed = rollouts(sim, deployed(policy), test_goals, test_seed)
        log(f"federated DP (eps {a.epsilon}): {fed}; held-out MSE per round {per_round}")
        out["epsilon_spent"] = {k: round(v, 4) for k, v in report["epsilon"].items()}
        out["heldout_mse_per_round"] = per_round

        central = None
        if not a.no_central:
            t = time.perf_counter()
            tuned = baseline.tuned_central(train_frames(sites, dsids), log=log)
            seconds["central"] = round(time.perf_counter() - t, 1)
            central = rollouts(sim, CentralPolicy(tuned.policy), test_goals, test_seed)
            log(f"central non-private (lr {tuned.lr:g}, {tuned.epochs} epochs): {central}")
            out["central_tuning"] = {"lr": tuned.lr, "epochs": tuned.epochs, "grid": tuned.grid}

        alone: dict[str, dict] = {}
        if not a.no_alone:
            t = time.perf_counter()
            for k in range(SITES):
                # its own contract (the federated run spent the first): the same file
                # enrolled at a fresh site, the same epsilon
                own, _, own_cids = enroll_sites(
                    root / f"alone-{k}-site", [files[k]], a.epsilon, a.rounds, training
                )
                pol, _, _ = federated(root, f"alone-{k}", own, own_cids, a.rounds, spec_kw, a.seed)
                alone[f"site-{k}"] = rollouts(sim, deployed(pol), test_goals, test_seed)
                log(f"site {k} alone: {alone[f'site-{k}']}")
            seconds["alone"] = round(time.perf_counter() - t, 1)

        site0 = sites[0]
        split = fdata.split_episodes(site0, dsids[0])
        settings = dp.TrainingSettings.from_config(site0.config)
        plan = dp.make_plan(
            a.epsilon, 1e-5, a.rounds, split.train_frames, settings, len(split.train)
        )
        out.update(
            success_federated=fed["success"],
            success_federated_ci=fed["ci"],
            success_central=central["success"] if central else None,
            success_central_ci=central["ci"] if central else None,
            success_alone={k: v["success"] for k, v in alone.items()},
            success_alone_ci={k: v["ci"] for k, v in alone.items()},
            ratio=round(fed["success"] / central["success"], 3)
            if central and central["success"]
            else None,
            success_expert=expert["success"],
            median_distance={
                "federated": fed["median_distance"],
                **({"central": central["median_distance"]} if central else {}),
                **{k: v["median_distance"] for k, v in alone.items()},
            },
            epsilon=a.epsilon,
            delta=1e-5,
            rounds=a.rounds,
            demos_per_site=a.demos,
            rollouts=a.rollouts,
            recipe={
                "spec": {
                    "optimizer": policy_spec(root / "federated", "optimizer"),
                    "lr": policy_spec(root / "federated", "lr"),
                    "lr_schedule": policy_spec(root / "federated", "lr_schedule"),
                },
                "site": {
                    # what ran a round (the name is older than run_steps' cap; kept for
                    # scripts): min(the site's local_steps, ceil(run_steps / rounds))
                    "local_steps": plan.steps_per_round,
                    "local_steps_setting": settings.local_steps,
                    "run_steps": settings.run_steps,
                    "batch_size": settings.batch_size,
                    "clip_norm": settings.clip_norm,
                },
            },
            plan_site0={
                "noise_multiplier": round(plan.noise_multiplier, 4),
                "sample_rate": round(plan.sample_rate, 4),
                "steps_per_round": plan.steps_per_round,
                "frames": plan.frames,
            },
            seconds=seconds,
            load_average=[round(x, 2) for x in os.getloadavg()],
        )
    return out


def policy_spec(run: Path, key: str):
    return json.loads((run / "history.json").read_text())["spec"].get(key)


def plot(out: dict, path: Path) -> Path:
    """Each policy's success rate with its Wilson 95 % interval (a bar chart, PNG), the
    goal's line at 0.8 x central, from :func:`run`'s result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [("expert", out.get("success_expert"), None)]
    if out.get("success_central") is not None:
        bars.append(("central\nnon-private", out["success_central"], out["success_central_ci"]))
    bars.append((f"federated\nDP eps {out['epsilon']:g}", out["success_federated"],
                 out["success_federated_ci"]))  # fmt: skip
    for k, v in out.get("success_alone", {}).items():
        bars.append((f"{k}\nalone, DP", v, out["success_alone_ci"][k]))
    fig, ax = plt.subplots(figsize=(1.6 * len(bars) + 1, 4))
    xs = range(len(bars))
    ax.bar(xs, [b[1] for b in bars], color=["0.6", "tab:blue", "tab:orange"] + ["0.8"] * 9)
    for x, (_, y, ci) in zip(xs, bars, strict=True):
        if ci:
            ax.errorbar(x, y, yerr=[[y - ci[0]], [ci[1] - y]], color="k", capsize=4)
    if out.get("success_central"):
        goal = 0.8 * out["success_central"]
        ax.axhline(goal, ls="--", color="tab:red", label="goal: 0.8 x central")
        ax.legend(loc="upper right")
    ax.set_xticks(list(xs), [b[0] for b in bars])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"success over {out['rollouts']} rollouts")
    ax.set_title(f"{out['task']}: {out['demos_per_site']} demos a site, {out['rounds']} rounds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    t = time.perf_counter()
    a = parse(argv)
    out = run(a)
    out["seconds"]["total"] = round(time.perf_counter() - t, 1)
    if a.plot is not None:
        log(f"plot: {plot(out, a.plot)}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
