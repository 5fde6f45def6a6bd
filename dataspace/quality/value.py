"""Intrinsic value of a dataset: volume, task diversity, state-space coverage, quality;
and how a federated contribution is credited for the dataset's quality.

All computed on site. Volume and task counts are catalog metadata already;
state-space coverage is computed from a **differentially private** histogram,
so the published coverage number carries no exact per-episode information:

* unit of privacy: one episode (adding or removing a whole episode);
* each episode contributes its *share* of frames per bin, per state joint
  (its per-joint histogram normalised to sum 1), so one episode changes each
  joint's histogram by at most 1 in L1, and the S joints' histograms by S;
* Laplace mechanism: noise Laplace(S / epsilon) on every bin count
  (pure epsilon-DP, Dwork & Roth 2014, Thm 3.6);
* a bin counts as covered when its noisy count exceeds 3 noise scales plus
  0.5 episode-share, i.e. noise alone covers a bin with probability < 2.5 %.

``STATS_EPSILON`` (0.5) is the small statistics budget this release spends.
It is not charged to a contract's training ledger (policy area): it is spent
once per quality report, by the holder, on the holder's own data.

Value that reflects quality (issue 18): a run's contribution (GTG-Shapley,
``dataspace.federated.contribution``) measures how much a dataset's updates
lowered the consumer's validation loss. Zero-mean noise on the actions leaves
that gradient unbiased, so a site with wholly noisy actions can still look
useful there; its harm goes through the pooled normalisation statistics every
site's model shares, which lowers the *other* sites' contributions and which
no per-round attribution charges to anyone (bench/RESULTS.md, value_detect
with noisy actions). The quality report sees it: its checks flag the noisy
episodes. :func:`quality_adjusted` combines the two, with the dataset's
**usable share** u, the share of its motion (frames in which the robot moves,
profile ``n_motion``) that lies in episodes without any quality flag::

    adjusted = u * max(c, 0) + min(c, 0) - (1 - u) * m

with m the run's mean absolute contribution per dataset (what a typical
dataset did to the consumer's loss): a positive contribution is credited only
for the usable share, a negative one stays whole (quality never excuses harm),
and the flagged share is charged as a typical dataset's effect, since the
consumer trained on it. Motion, not episodes, so padding a dataset with idle
clean episodes does not dilute its flags; a dataset without flags (u = 1)
keeps its contribution exactly.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, TypeVar

import duckdb
import numpy as np

STATS_EPSILON = 0.5
BINS = 10

K = TypeVar("K", bound=Hashable)


def volume(episodes: int, frames: int, fps: float | None) -> dict[str, Any]:
    hours = frames / fps / 3600.0 if fps else None
    return {
        "episodes": int(episodes),
        "frames": int(frames),
        "hours": round(hours, 4) if hours is not None else None,
    }


def task_diversity(task_counts: Mapping[int, int], tasks: Sequence[str]) -> dict[str, Any]:
    """Distinct tasks used and the normalised Shannon entropy of episodes over tasks."""
    counts = np.array([c for c in task_counts.values() if c > 0], dtype=float)
    if counts.size == 0:
        return {"tasks_declared": len(tasks), "tasks_used": 0, "task_entropy": 0.0}
    p = counts / counts.sum()
    h = float(-(p * np.log2(p)).sum())
    norm = h / math.log2(counts.size) if counts.size > 1 else 0.0
    return {
        "tasks_declared": len(tasks),
        "tasks_used": int(counts.size),
        "task_entropy_bits": round(h, 3),
        "task_entropy": round(norm, 3),
    }


def episode_histograms(
    con: duckdb.DuckDBPyConnection,
    frames_sql: str,
    cols: Sequence[str],
    limits: Mapping[str, tuple[float, float]],
    bins: int = BINS,
) -> np.ndarray:
    """Per-joint histogram of episode frame-shares, [len(cols), bins], in one DuckDB scan.

    ``frames_sql`` is a relation with ``episode_index`` and the joint columns.
    Values outside the limits are clamped into the edge bins; non-finite ones dropped.
    """
    out = np.zeros((len(cols), bins))
    if not cols:
        return out
    exprs = []
    for c in cols:
        lo, hi = limits.get(c, (0.0, 1.0))
        width = (hi - lo) / bins if hi > lo else 1.0
        exprs.append(
            f"histogram(CASE WHEN isfinite({c}) THEN least({bins - 1}, greatest(0, "
            f"floor(({c} - {lo!r}) / {width!r})))::INT END)"
        )
    rows = con.execute(
        f"SELECT count(*), {', '.join(exprs)} FROM ({frames_sql}) GROUP BY episode_index"
    ).fetchall()
    for row in rows:
        n = row[0]
        for j, h in enumerate(row[1:]):
            for b, k in (h or {}).items():
                out[j, int(b)] += k / n
    return out


def dp_coverage(hist: np.ndarray, epsilon: float = STATS_EPSILON) -> dict[str, Any]:
    """Noisy histogram (Laplace, sensitivity = joints) and the covered share of bins."""
    joints = hist.shape[0]
    if joints == 0 or epsilon <= 0:
        return {"epsilon": epsilon, "mechanism": "laplace", "coverage": None}
    scale = joints / epsilon
    rng = np.random.default_rng(secrets.randbits(128))
    noisy = hist + rng.laplace(0.0, scale, size=hist.shape)
    covered = noisy > (3.0 * scale + 0.5)
    return {
        "epsilon": epsilon,
        "delta": 0.0,
        "mechanism": "laplace",
        "unit": "episode",
        "sensitivity_l1": joints,
        "bins_per_joint": hist.shape[1],
        "coverage": round(float(covered.mean()), 3),
        "noisy_histogram": np.round(noisy, 1).tolist(),
    }


def intrinsic_value(
    *,
    episodes: int,
    frames: int,
    fps: float | None,
    task_counts: Mapping[int, int],
    tasks: Sequence[str],
    hist: np.ndarray,
    quality_score: float | None,
    epsilon: float = STATS_EPSILON,
    usable: float | None = None,
) -> dict[str, Any]:
    """The intrinsic-value block of the quality report (``usable``: :func:`usable_share`)."""
    return {
        "volume": volume(episodes, frames, fps),
        "diversity": task_diversity(task_counts, tasks),
        "coverage": dp_coverage(hist, epsilon),
        "quality_score": quality_score,
        "usable_share": usable,
    }


def usable_share(motion: np.ndarray, flagged: np.ndarray) -> float:
    """Share of the dataset's motion in episodes without a flag (module docstring).

    ``motion[i]``: frames in which the robot moves in episode i; ``flagged[i]``:
    whether episode i has any flag. A dataset without motion falls back to the
    share of unflagged episodes; an empty one is wholly usable. Rounded to 3
    decimals: an aggregate like the flag rates, no per-episode value.
    """
    motion = np.nan_to_num(np.asarray(motion, dtype=float))
    flagged = np.asarray(flagged, dtype=bool)
    if motion.size == 0:
        return 1.0
    weights = motion if motion.sum() > 0 else np.ones_like(motion)
    return round(float(weights[~flagged].sum() / weights.sum()), 3)


def report_usable_share(report: Mapping[str, Any]) -> float:
    """The usable share a (publishable) quality report states; 1.0 when it has none.

    Reports from before issue 18 carry no motion-weighted share: the share of
    unflagged episodes stands in for it.
    """
    value = report.get("value") or {}
    if value.get("usable_share") is not None:
        return float(value["usable_share"])
    episodes = int(report.get("episodes") or 0)
    if episodes <= 0:
        return 1.0
    return 1.0 - min(int(report.get("episodes_flagged") or 0), episodes) / episodes


def quality_adjusted(contribution: Mapping[K, float], usable: Mapping[K, float]) -> dict[K, float]:
    """Each dataset's contribution combined with its usable share (module docstring).

    ``u * max(c, 0) + min(c, 0) - (1 - u) * m``; ``u`` is clipped to [0, 1] and
    taken as 1 for a dataset with no quality report, so a missing report never
    lowers anyone's value; ``m`` is the mean of ``|c|`` over the run's datasets.
    """
    values = [abs(float(c)) for c in contribution.values()]
    m = sum(values) / len(values) if values else 0.0
    out: dict[K, float] = {}
    for k, c in contribution.items():
        u = min(max(float(usable.get(k, 1.0)), 0.0), 1.0)
        out[k] = u * max(float(c), 0.0) + min(float(c), 0.0) - (1.0 - u) * m
    return out
