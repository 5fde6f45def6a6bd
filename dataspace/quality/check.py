"""The entry point: check one enrolled dataset, store flags and the signed report.

``run_checks(site, dataset_id)`` is what ``dataspace quality check`` and
enrollment call. It runs on site and, in order:

1. reads the dataset's metadata and episode hashes from ``site.duckdb``
   (one short connection);
2. runs the expectation suites (quality/suite.py) on a per-check DuckDB
   workspace under ``SITE/quality/work/``;
3. scores the six dimensions (quality/dimensions.py) and the intrinsic value
   (quality/value.py, DP coverage);
4. replaces the dataset's ``episode_flags`` (quality/flags.py);
5. builds the full (on-site) and publishable reports, signs the publishable
   one with the site key, stores both in ``quality_reports`` and appends
   ``quality.reported`` with the report's SHA-256 to the site log
   (quality/report.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from dataspace.errors import NotFoundError
from dataspace.quality import dimensions as dm
from dataspace.quality import flags as fl
from dataspace.quality import report as rp
from dataspace.quality import value as val
from dataspace.quality.profile import Layout, frames_view_sql
from dataspace.quality.ranges import DECLARED_RANGES_KEY
from dataspace.quality.suite import (
    CHECKS,
    SuiteResult,
    declared_ranges,
    run_suites,
)
from dataspace.site.folder import Site

#: progress(step_done, steps_total, message)
Progress = Callable[[int, int, str], None]
STEPS = 5


@dataclass
class CheckOutcome:
    """What a check produced: both reports, the flags and the log entry index."""

    dataset_id: str
    score: float | None
    full: dict[str, Any]
    public: dict[str, Any]
    report_sha256: str
    flags: int
    log_index: int | None
    suite: SuiteResult


def _dataset(site: Site, dataset_id: str) -> tuple[dict[str, Any], list[tuple]]:
    with site.db() as con:
        has = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'datasets'"
        ).fetchone()[0]
        if not has:
            raise NotFoundError(f"dataset {dataset_id!r} is not enrolled at {site.root}")
        cur = con.execute(
            "SELECT * FROM datasets WHERE dataset_id = ? OR name = ? OR fingerprint = ?",
            [dataset_id, dataset_id, dataset_id],
        )
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
        if not rows:
            raise NotFoundError(f"dataset {dataset_id!r} is not enrolled at {site.root}")
        if len(rows) > 1:
            raise NotFoundError(f"{dataset_id!r} names several datasets; use a dataset id")
        ds = dict(zip(names, rows[0], strict=True))
        for k in ("state_names", "action_names", "tasks", "attachments", "catalog"):
            if isinstance(ds.get(k), str):
                ds[k] = json.loads(ds[k])
        hashes = con.execute(
            "SELECT episode_index, hash, frames, task_index FROM episodes "
            "WHERE dataset_id = ? ORDER BY episode_index",
            [ds["dataset_id"]],
        ).fetchall()
    return ds, hashes


def layout_for(site: Site, ds: dict[str, Any]) -> Layout:
    folder = site.dataset_dir(ds["fingerprint"])
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    tasks = ds.get("tasks") or []
    valid = tuple(i for i, t in enumerate(tasks) if isinstance(t, str) and t.strip())
    return Layout(
        parquet_glob=str(folder / "*.parquet") if files else None,
        state_dim=int(ds.get("state_dim") or 0),
        action_dim=int(ds.get("action_dim") or 0),
        fps=float(ds["fps"]) if ds.get("fps") else None,
        valid_tasks=valid,
    )


def run_checks(
    site: Site,
    dataset_id: str,
    *,
    exclude: Sequence[str] = (),
    progress: Progress | None = None,
    publish: bool = True,
    epsilon: float = val.STATS_EPSILON,
) -> CheckOutcome:
    """Check an enrolled dataset end to end (module docstring). Returns the outcome.

    ``exclude`` names checks to skip (see ``suite.CHECKS``). ``publish=False``
    skips signing, storing and logging (a dry run: flags are still replaced).
    """
    step = _stepper(progress)
    ds, hashes = _dataset(site, dataset_id)
    dataset_id = ds["dataset_id"]
    layout = layout_for(site, ds)
    step("running expectation suites")
    suite = run_suites(
        site.root / "quality" / "work",
        layout,
        hashes,
        declared_frames=ds.get("frames"),
        # a robot's declared feature ranges (catalog), which may only narrow the fences
        declared_limits=declared_ranges(
            (ds.get("catalog") or {}).get(DECLARED_RANGES_KEY),
            ds.get("state_names") or [],
            ds.get("action_names") or [],
        ),
        exclude=exclude,
    )

    step("scoring dimensions")
    scores = [
        dm.CheckScore(c.check, c.dimension, dm.episode_check_score(c.flagged, suite.episodes))
        if c.check in CHECKS
        else dm.CheckScore(c.check, c.dimension, 100.0 if c.success else 0.0)
        for c in suite.checks
    ]
    scores += dm.attachments_score(ds.get("attachments") or [])
    scores += dm.accessibility_scores(
        layout.parquet_glob is not None or int(ds.get("frames") or 0) == 0,
        ds.get("license"),
        ds.get("state_names") or [],
        ds.get("action_names") or [],
    )
    dims, overall = dm.score_dimensions(scores)

    step("estimating intrinsic value")
    task_counts = Counter(int(h[3]) for h in hashes if h[3] is not None)
    flagged = {f.episode_index for f in suite.flags}
    episode_ids = suite.profile.get("episode_index", [])
    hist = _histograms(layout, suite)
    value = val.intrinsic_value(
        episodes=suite.episodes,
        frames=suite.frames,
        fps=layout.fps,
        task_counts=task_counts,
        tasks=ds.get("tasks") or [],
        hist=hist,
        quality_score=overall,
        epsilon=epsilon,
        usable=val.usable_share(
            suite.profile.get("n_motion", []), [int(e) in flagged for e in episode_ids]
        ),
    )

    step("writing flags")
    n_flags = fl.replace_flags(
        site, dataset_id, [(f.episode_index, f.check, f.detail) for f in suite.flags]
    )

    step("signing and storing the report")
    full = rp.full_report(ds, site, suite, dims, overall, value)
    public = rp.publishable_report(full)
    log_index = None
    sha = rp.report_sha256(public)
    if publish:
        public = rp.sign_report(public, site)
        sha = rp.report_sha256(public)
        rp.store_report(site, full, public)
        log_index = rp.log_report(site, public)
    return CheckOutcome(dataset_id, overall, full, public, sha, n_flags, log_index, suite)


def _histograms(layout: Layout, suite: SuiteResult) -> Any:
    import numpy as np

    cols = layout.state_cols
    if layout.parquet_glob is None or not cols:
        return np.zeros((len(cols), val.BINS))
    limits = {k: tuple(v) for k, v in suite.thresholds.get("limits", {}).items()}
    con = duckdb.connect()
    try:
        con.execute(frames_view_sql(layout))
        return val.episode_histograms(con, "SELECT * FROM frames", cols, limits)
    finally:
        con.close()


def _stepper(progress: Progress | None) -> Callable[[str], None]:
    done = [0]

    def step(msg: str) -> None:
        if progress is not None:
            progress(done[0], STEPS, msg)
        done[0] += 1

    return step
