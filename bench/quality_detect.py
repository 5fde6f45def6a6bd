"""Precision, recall and clean-data false alarms of the per-episode quality flags, per source.

Issues 6 and 18. Start from clean episodes of each source, run the full quality
check on them (false alarms: every episode a *statistical* check flags on clean
data), inject each corruption type (dataspace.quality.inject) into known
episodes at a known rate (RATE of the episodes, at least 2 per type), run the
check again, and compare each type's check flags with the truth.

Sources, and whether the statistical thresholds were chosen on them:

* **tuned**: the real so101 (4 episodes, replicated x10 with fresh noise),
  unitree-g1 and bimanual recordings of /work/shared/data (their thresholds'
  floors and fractions were chosen there; a source missing there is skipped)
  and the old generated sine trajectories ("sine");
* **held-out**: simulated robots with scripted experts that no threshold was
  chosen on (dataspace.quality.synthetic: ``planar_arm``, ``mobile_base``,
  ``gantry``, ``teleop_arm``, ``pan_tilt``, ``quadruped_leg``; idle phases,
  slow motions, saturated and on/off commands, jitter). No constant was chosen
  on them, but the *rules* were designed while looking at the first five
  (``rules_designed_on``: ``pan_tilt`` was written after session 5's rules and
  run once, then its hard stop, laser chatter and pixel error shaped rules of
  sessions 5 and 7); ``quadruped_leg`` was written in session 7 before any of
  that session's changes, run once before them and once after, and used to
  choose nothing.

A planned corruption that changes nothing (inject.frozen_joint on an episode in
which the robot holds still from 15 % on: no live joint moves more than 2 % of
its range after it) is no defect and is counted as ``not_applied``.

On the tuned (real) recordings, episodes a statistical check already flags on
the clean data are real outliers, not false alarms of the injection: they are
left out of that type's evaluation (``preexisting``) and reported as the
clean-data flag rate. Held-out data are clean by construction: every flag on
them is a false alarm.

Targets (held-out sources): at most 1 % of clean episodes flagged by any
statistical check, recall >= 0.95 per corruption type.

Environment: ``SEEDS`` (held-out seeds, default 3), ``EPISODES`` (held-out
episodes per seed, default 200), ``SOURCES`` (comma-separated names, default all),
``DECLARED`` (0: leave out the declared feature ranges some held-out sources state,
e.g. pan_tilt's image size, so that only the robust fences judge out_of_range).

Last stdout line: {"sources": {name: {"split": "tuned"|"held-out", "false_alarm":
{check: rate, "any": rate}, "per_type": {type: {"precision", "recall", ...}}}},
"held_out": {...pooled...}, "targets_met": bool, ...}.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from dataspace.connectors.enroll import enroll
from dataspace.quality import inject, synthetic
from dataspace.quality.check import run_checks
from dataspace.quality.suite import CHECKS, HARD_CHECKS
from dataspace.schema import Episode
from dataspace.site import Site, create_site

DATA = Path("/work/shared/data")
RATE = 0.03
TUNED_SEEDS = (0, 1)
HELD_OUT_SEEDS = tuple(range(int(os.environ.get("SEEDS", "3"))))
HELD_OUT_EPISODES = int(os.environ.get("EPISODES", "200"))
#: DECLARED=0: ignore the held-out sources' declared ranges (fences only)
DECLARED = os.environ.get("DECLARED", "1") != "0"
#: checks whose thresholds are fitted or chosen (the others are deterministic)
STATISTICAL = tuple(c for c in CHECKS if c not in HARD_CHECKS)
REAL = {
    "so101": "so101-record-test-lerobot-v3",
    "unitree": "unitree-g1-lerobot-v2.1",
    "bimanual": "bimanual-open50-lerobot-v3",
}
MAX_FALSE_ALARM = 0.01
MIN_RECALL = 0.95
#: held-out sources the rules (not the constants) were designed while looking at
DESIGNED_ON = frozenset({"planar_arm", "mobile_base", "gantry", "teleop_arm", "pan_tilt"})


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 %) of a rate k / n: how well n episodes pin it down."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)


def sine(n_eps: int, seed: int, dims: int = 8, fps: float = 30.0) -> list[Episode]:
    """The old generated source: smooth sines, the action the next frame's state."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_eps):
        n = int(rng.integers(250, 450))
        t = np.arange(n) / fps
        phase = rng.uniform(0, 2 * np.pi, dims)
        freq = rng.uniform(0.1, 0.5, dims)
        state = np.sin(2 * np.pi * freq * t[:, None] + phase).astype(np.float32)
        state += rng.normal(0, 0.003, state.shape).astype(np.float32)
        action = np.roll(state, -1, axis=0)
        action[-1] = state[-1]
        out.append(Episode(np.rint(t * 1e6).astype(np.int64), state, action.astype(np.float32)))
    return out


def replicated(eps: list[Episode], seed: int) -> list[Episode]:
    """A tiny recording (so101: 4 episodes) as 40, each copy with fresh state noise."""
    rng = np.random.default_rng(seed)
    eps = [inject.near_duplicate(e, rng) if i else e for i in range(10) for e in eps]
    return [
        inject._copy(e, state=e.state + rng.normal(0, 0.5, e.state.shape).astype(np.float32))
        for e in eps
    ]


def plan_for(n: int, seed: int) -> dict[int, str]:
    """RATE of the episodes (at least 2) per corruption type, disjoint, seeded."""
    rng = np.random.default_rng(seed)
    per = max(2, int(RATE * n))
    order = [int(i) for i in rng.permutation(n)]
    plan, k = {}, 0
    for kind in inject.KINDS:
        for _ in range(per):
            if k < len(order):
                plan[order[k]] = kind
                k += 1
    return plan


def evaluate(
    site: Site,
    name: str,
    eps: list[Episode],
    fps: float,
    seed: int,
    acc: dict,
    declared: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
) -> None:
    """Check clean and corrupted copies of ``eps``; add the counts to ``acc``.

    ``declared``: the source's declared feature ranges (synthetic.Source.declared),
    stored with both datasets as a holder would."""
    clean_id = inject.write_dataset(
        site, f"{name}-clean-{seed}", eps, fps=fps, declared_ranges=declared
    )
    clean = run_checks(site, clean_id, publish=False)
    acc["episodes"] += len(eps)
    any_flag: set[int] = set()
    for check in STATISTICAL:
        flagged = clean.suite.flagged_by(check)
        acc["clean_flags"][check] += len(flagged)
        any_flag |= flagged
    acc["clean_flags"]["any"] += len(any_flag)
    plan = plan_for(len(eps), seed)
    bad, truth, sources = inject.corrupt_dataset(eps, plan, seed=seed)
    did = inject.write_dataset(site, f"{name}-bad-{seed}", bad, fps=fps, declared_ranges=declared)
    out = run_checks(site, did, publish=False)
    for kind in inject.KINDS:
        check = inject.CHECK_FOR[kind]
        pre = clean.suite.flagged_by(check)
        pre |= {copy for copy, src in sources.items() if src in pre}
        want = {e for e, kk in truth.items() if kk == kind} - pre
        # corruptions that rightly trip this check too (noisy actions also jump) are
        # neither hits nor false alarms of it (inject.ALSO_FLAGGED_BY)
        also = {e for e, kk in truth.items() if check in inject.ALSO_FLAGGED_BY.get(kk, ())}
        got = out.suite.flagged_by(check) - pre - also
        t = acc["per_type"].setdefault(
            kind, {"tp": 0, "fp": 0, "fn": 0, "preexisting": 0, "not_applied": 0}
        )
        # planned but changing nothing (a joint frozen while the robot holds still)
        t["not_applied"] += sum(k == kind for k in plan.values()) - sum(
            k == kind for k in truth.values()
        )
        t["tp"] += len(got & want)
        t["fp"] += len(got - want)
        t["fn"] += len(want - got)
        t["preexisting"] += len(pre)
    print(f"{name} seed {seed}: {len(eps)} clean, {len(any_flag)} flagged", file=sys.stderr)


def summary(acc: dict, split: str) -> dict:
    n = max(acc["episodes"], 1)
    per_type = {}
    for kind, t in acc["per_type"].items():
        p = t["tp"] / (t["tp"] + t["fp"]) if t["tp"] + t["fp"] else 1.0
        r = t["tp"] / (t["tp"] + t["fn"]) if t["tp"] + t["fn"] else 1.0
        per_type[kind] = {"precision": round(p, 3), "recall": round(r, 3)} | t
    return {
        "split": split,
        "episodes_clean": acc["episodes"],
        "false_alarm": {c: round(k / n, 4) for c, k in acc["clean_flags"].items()},
        "false_alarm_any_ci95": wilson(acc["clean_flags"]["any"], acc["episodes"]),
        "per_type": per_type,
    }


def new_acc() -> dict:
    return {"episodes": 0, "clean_flags": dict.fromkeys([*STATISTICAL, "any"], 0), "per_type": {}}


def sources(site: Site, wanted: set[str] | None) -> list[tuple[str, str, Callable[[int], tuple]]]:
    """(name, split, make(seed) -> (episodes, fps)) for every source to run."""
    out: list[tuple[str, str, Callable[[int], tuple]]] = []
    for name, folder in REAL.items():
        if (wanted and name not in wanted) or not (DATA / folder).is_dir():
            continue
        eps = list(inject.read_episodes(site, enroll(site, DATA / folder).dataset_id))

        def make(seed: int, eps: list[Episode] = eps) -> tuple:
            return (replicated(eps, seed) if len(eps) < 20 else eps), 30.0

        out.append((name, "tuned", make))
    if not wanted or "sine" in wanted:
        out.append(("sine", "tuned", lambda seed: (sine(150, seed), 30.0)))
    for name, src in synthetic.SOURCES.items():
        if wanted and name not in wanted:
            continue

        def make_held(seed: int, name: str = name, src: synthetic.Source = src) -> tuple:
            fps, declared = src.fps, (src.declared if DECLARED else None)
            return synthetic.episodes(name, HELD_OUT_EPISODES, seed), fps, declared

        out.append((name, "held-out", make_held))
    return out


def flagged_count(r: dict) -> int:
    return round(r["false_alarm"]["any"] * r["episodes_clean"])


def pooled(result: dict) -> dict:
    """Held-out sources together: false alarms and per-type recall."""
    held = [r for r in result.values() if r["split"] == "held-out"]
    n = sum(r["episodes_clean"] for r in held)
    fa = {
        c: round(sum(r["false_alarm"][c] * r["episodes_clean"] for r in held) / max(n, 1), 4)
        for c in [*STATISTICAL, "any"]
    }
    recall = {}
    for kind in inject.KINDS:
        tp = sum(r["per_type"].get(kind, {}).get("tp", 0) for r in held)
        fn = sum(r["per_type"].get(kind, {}).get("fn", 0) for r in held)
        recall[kind] = round(tp / (tp + fn), 3) if tp + fn else 1.0
    k = sum(flagged_count(r) for r in held)
    return {
        "episodes_clean": n,
        "false_alarm": fa,
        "false_alarm_any_ci95": wilson(k, n),
        "recall": recall,
    }


def main() -> None:
    t0 = time.perf_counter()
    wanted = set(filter(None, os.environ.get("SOURCES", "").split(","))) or None
    result: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        site = create_site(Path(tmp) / "site", org="bench")
        for name, split, make in sources(site, wanted):
            acc = new_acc()
            for seed in TUNED_SEEDS if split == "tuned" else HELD_OUT_SEEDS:
                eps, fps, *declared = make(seed)
                evaluate(site, name, eps, fps, seed, acc, *declared)
            result[name] = summary(acc, split)
            if split == "held-out":
                result[name]["rules_designed_on"] = name in DESIGNED_ON
    held = pooled(result)
    ok = held["episodes_clean"] > 0 and all(
        r["false_alarm"]["any"] <= MAX_FALSE_ALARM
        and all(t["recall"] >= MIN_RECALL for t in r["per_type"].values())
        for r in result.values()
        if r["split"] == "held-out"
    )
    print(
        json.dumps(
            {
                "sources": result,
                "held_out": held,
                "targets": {"max_false_alarm_any": MAX_FALSE_ALARM, "min_recall": MIN_RECALL},
                "targets_met": ok,
                "rate": RATE,
                "seeds": {"tuned": list(TUNED_SEEDS), "held-out": list(HELD_OUT_SEEDS)},
                "held_out_episodes_per_seed": HELD_OUT_EPISODES,
                "declared_ranges": DECLARED,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
