"""Make LeRobot exports of dataspace policies and the actions dataspace gives for them.

Run with the project's environment (it imports ``dataspace``)::

    .venv/bin/python plugins/lerobot_policy_dataspace/verify/make_exports.py OUT --train

For each template (``bc-mlp``, ``bc-chunk``): a policy built from the template
(seeded random weights) with real normalisation statistics (exact, from episodes
0-4 of the Unitree G1 recording in ``tests/data``) is exported to
``OUT/<template>/lerobot``; ``OUT/<template>/expected.json`` holds two episodes of
real G1 states and the actions ``dataspace.load_policy`` returns for them. With
``--train``, each template is also trained for one DP round (epsilon 3, two sites of
5 G1 episodes, simulation engine; ``bc-chunk`` with the episode as privacy unit) into
``OUT/train/run-<template>``; with ``--run DIR`` (repeatable), a run directory of yours.
A run's export is copied to ``OUT/run-<template>/lerobot`` and checked the same way.
``check_with_lerobot.py OUT`` (run where LeRobot is installed) compares.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

import dataspace
from dataspace.federated.export import EXPORT_DIR, write_lerobot_export
from dataspace.federated.normalize import apply_stats, exact_stats
from dataspace.federated.templates import REGISTRY, get_template

G1 = Path(__file__).resolve().parents[3] / "tests" / "data" / "unitree-g1-lerobot-v2.1"


def g1_frames(episode: int) -> tuple[np.ndarray, np.ndarray]:
    """One G1 episode's states and actions, float32."""
    t = pq.read_table(G1 / "data" / "chunk-000" / f"episode_{episode:06d}.parquet")
    state = np.asarray(t.column("observation.state").to_pylist(), dtype=np.float32)
    action = np.asarray(t.column("action").to_pylist(), dtype=np.float32)
    return state, action


def expected_actions(run_dir: Path, episodes: list[np.ndarray]) -> dict:
    """What ``dataspace.load_policy(run_dir)`` returns, episode by episode."""
    policy = dataspace.load_policy(run_dir)
    out = []
    for states in episodes:
        policy.reset()
        actions = [policy.select_action({"observation.state": s}) for s in states]
        out.append({"states": states.tolist(), "actions": np.stack(actions).tolist()})
    return {"template": policy.template, "episodes": out}


def train_one_round(root: Path, template: str) -> Path:
    """A real run: one DP round of ``template`` on two sites of G1 episodes."""
    from dataspace.demo.federation import make_federation
    from dataspace.federated import RunSpec, train
    from dataspace.federated.report import write_report

    fed = make_federation(
        root / f"fed-{template}", G1, n_sites=2, epsilon=3.0, rounds=1, template=template,
        episodes_per_site=[range(0, 5), range(40, 45)],
    )  # fmt: skip
    if get_template(template).history > 1 or get_template(template).chunk > 1:
        for site in fed.sites:  # frames from several steps per pair: episode-level DP
            with open(site.config_path, "a") as f:
                f.write('\n[training]\nprivacy_unit = "episode"\nframes_per_episode = 16\n')
    out = root / f"run-{template}"
    spec = RunSpec(contracts=fed.contract_ids, template=template, rounds=1, out_dir=out, seed=1)
    status = train(spec, fed.sites, "simulation")["status"]
    if status != "finished":
        raise SystemExit(f"{template}: the run ended {status!r}")
    write_report(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument(
        "--run", type=Path, action="append", default=[], help="a trained run (train --out)"
    )
    ap.add_argument("--train", action="store_true", help="train each template one round")
    ap.add_argument("--steps", type=int, default=40, help="steps per episode")
    args = ap.parse_args()
    frames = [g1_frames(e) for e in range(5)]
    stats = exact_stats(
        torch.from_numpy(np.concatenate([s for s, _ in frames])),
        torch.from_numpy(np.concatenate([a for _, a in frames])),
    )
    episodes = [g1_frames(5)[0][: args.steps], g1_frames(6)[0][: args.steps // 2]]
    for name, template in REGISTRY.items():
        policy = template.build(episodes[0].shape[1], frames[0][1].shape[1], seed=7)
        apply_stats(policy, stats)
        case = args.out / name
        write_lerobot_export(policy, name, case / EXPORT_DIR)
        (case / "expected.json").write_text(json.dumps(expected_actions(case, episodes)))
        print(f"{case}: {name}")
    if args.train:
        shutil.rmtree(args.out / "train", ignore_errors=True)
        args.run += [train_one_round(args.out / "train", name) for name in REGISTRY]
    for run in args.run:
        template = json.loads((run / EXPORT_DIR / "config.json").read_text())["template"]
        case = args.out / f"run-{template}"
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(run / EXPORT_DIR, case / EXPORT_DIR)
        (case / "expected.json").write_text(json.dumps(expected_actions(case, episodes)))
        print(f"{case}: trained run {run}")


if __name__ == "__main__":
    main()
