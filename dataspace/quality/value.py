"""Intrinsic value of a dataset: volume, task diversity, state-space coverage, quality.

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
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import numpy as np

STATS_EPSILON = 0.5
BINS = 10


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
) -> dict[str, Any]:
    """The intrinsic-value block of the quality report."""
    return {
        "volume": volume(episodes, frames, fps),
        "diversity": task_diversity(task_counts, tasks),
        "coverage": dp_coverage(hist, epsilon),
        "quality_score": quality_score,
    }
