"""Precision and recall of the per-episode quality flags, per corruption type (issue 6).

Start from clean episodes (the real so101 and unitree-g1 datasets in
/work/shared/data, plus generated smooth random-walk episodes), inject each
corruption type (dataspace.quality.inject) into known episodes at a known rate
(RATE of the episodes, at least 2 per type), run the full quality check, and
compare each type's check flags with the truth. Episodes that the statistical
checks already flag on the *clean* data are real outliers, not false positives
of the injection: they are left out of that type's evaluation (and counted in
``preexisting``).

Last stdout line: {"per_type": {type: {"precision", "recall"}}, ...}.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dataspace.connectors.enroll import enroll
from dataspace.quality import inject
from dataspace.quality.check import run_checks
from dataspace.schema import Episode
from dataspace.site import Site, create_site

DATA = Path("/work/shared/data")
RATE = 0.03
SEEDS = (0, 1)


def generated(n_eps: int, seed: int, dims: int = 8, fps: float = 30.0) -> list[Episode]:
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


def evaluate(site: Site, name: str, eps: list[Episode], fps: float, seed: int, totals: dict):
    clean_id = inject.write_dataset(site, f"{name}-clean-{seed}", eps, fps=fps)
    clean = run_checks(site, clean_id, publish=False)
    rng = np.random.default_rng(seed)
    per = max(2, int(RATE * len(eps)))
    order = [int(i) for i in rng.permutation(len(eps))]
    plan, k = {}, 0
    for kind in inject.KINDS:
        for _ in range(per):
            if k < len(order):
                plan[order[k]] = kind
                k += 1
    bad, truth, sources = inject.corrupt_dataset(eps, plan, seed=seed)
    did = inject.write_dataset(site, f"{name}-bad-{seed}", bad, fps=fps)
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
        t = totals.setdefault(kind, {"tp": 0, "fp": 0, "fn": 0, "preexisting": 0})
        t["tp"] += len(got & want)
        t["fp"] += len(got - want)
        t["fn"] += len(want - got)
        t["preexisting"] += len(pre)
    print(f"{name} seed {seed}: {len(bad)} episodes, {len(truth)} corrupted", file=sys.stderr)


def main() -> None:
    t0 = time.perf_counter()
    totals: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        site = create_site(Path(tmp) / "site", org="bench")
        sources = []
        for folder in ("so101-record-test-lerobot-v3", "unitree-g1-lerobot-v2.1"):
            did = enroll(site, DATA / folder).dataset_id
            sources.append((folder.split("-")[0], list(inject.read_episodes(site, did)), 30.0))
        for seed in SEEDS:
            sources_seed = [*sources, ("generated", generated(150, seed), 30.0)]
            for name, eps, fps in sources_seed:
                if len(eps) < 20:  # so101 has 4 episodes: replicate with new noise
                    rng = np.random.default_rng(seed)
                    eps = [
                        inject.near_duplicate(e, rng) if i else e for i in range(10) for e in eps
                    ]
                    eps = [
                        inject._copy(
                            e, state=e.state + rng.normal(0, 0.5, e.state.shape).astype(np.float32)
                        )
                        for e in eps
                    ]
                evaluate(site, name, eps, fps, seed, totals)
    per_type = {}
    for kind, t in totals.items():
        p = t["tp"] / (t["tp"] + t["fp"]) if t["tp"] + t["fp"] else 1.0
        r = t["tp"] / (t["tp"] + t["fn"]) if t["tp"] + t["fn"] else 1.0
        per_type[kind] = {"precision": round(p, 3), "recall": round(r, 3)} | t
    ok = all(v["recall"] >= 0.95 and v["precision"] >= 0.9 for v in per_type.values())
    print(
        json.dumps(
            {
                "per_type": per_type,
                "rate": RATE,
                "seeds": list(SEEDS),
                "targets_met": ok,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
