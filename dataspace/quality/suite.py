"""Run the robot-episode expectation suites with Great Expectations on DuckDB.

Three suites, one per table of the check's workspace (quality/profile.py):

``frames`` (GE built-ins over the per-joint view of the canonical Parquet)
    schema (ordered column list), dtypes, row count equal to the declared
    frame count (nulls are counted per episode, in the profile): table
    metadata and one count, no per-value scan.
``episodes`` (custom expectations, quality/expectations.py, over
``episode_profile``)
    NaN/inf, strictly increasing timestamps, contiguous frame_index, frame
    interval vs declared fps, episode length, joint limits, frozen joints,
    action jumps, missing task labels, near-duplicates.
``hashes`` (custom, over ``episode_hashes``)
    duplicate episodes (same content hash).

GE connects through its SQL data source (``duckdb:///PATH``, duckdb-engine) to
the workspace file, which :func:`build_workspace` created and closed first, so
GE is its only user and the site's own database is never held open.

Thresholds that are not declared are *robust*: Tukey's far-out fences
(Q1 - 3 IQR, Q3 + 3 IQR) over per-episode statistics, with floors so that a
dataset whose episodes all agree (IQR = 0) does not flag every small wobble.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from dataspace.errors import DataspaceError
from dataspace.quality import expectations as ex
from dataspace.quality.profile import Layout, build_workspace

#: LeRobot v2 timestamp tolerance (check_timestamps_sync), seconds
JITTER_TOLERANCE_S = 1e-4
#: Tukey far-out fence multiplier for robust limits
FENCE_K = 3.0
#: fence multiplier for joint limits: wider than Tukey's 3, since a joint's physical
#: range exceeds what any one dataset visits; only gross violations should fail
RANGE_K = 5.0
#: a joint is "live" when its frozen fraction has a median below this
LIVE_MEDIAN = 0.2
#: an episode fails frozen_joint when one live joint is constant this share of its motion
FROZEN_FRACTION = 0.6
#: an episode fails action_noise above this action roughness (about 1 - lag-1
#: autocorrelation of the typical joint): recorded actions are at most 0.03 on every
#: shared dataset, white noise or shuffled actions about 1 (profile.action_roughness_sql)
MAX_ACTION_ROUGHNESS = 0.25
#: near-duplicate tolerance, in units of each signature component's spread
NEAR_DUP_TOLERANCE = 1e-3

#: checks in report order; the dimension each feeds is on the expectation class
EPISODE_CHECKS: tuple[type[ex.EpisodeRowsExpectation], ...] = (
    ex.ExpectEpisodeValuesFinite,
    ex.ExpectEpisodeTimestampsStrictlyIncreasing,
    ex.ExpectEpisodeFrameIndexContiguous,
    ex.ExpectEpisodeFrameIntervalRegular,
    ex.ExpectEpisodeLengthBetween,
    ex.ExpectEpisodeJointsWithinLimits,
    ex.ExpectEpisodeNoFrozenJoint,
    ex.ExpectEpisodeNoActionJump,
    ex.ExpectEpisodeActionsNotNoise,
    ex.ExpectEpisodeTaskLabelled,
    ex.ExpectEpisodeHashUnique,
    ex.ExpectEpisodeNotNearDuplicate,
)
CHECKS: dict[str, str] = {c.check: c.dimension for c in EPISODE_CHECKS}
#: dataset-level (frames suite) checks and their dimensions
FRAME_CHECKS: dict[str, str] = {
    "schema": "conformity",
    "dtypes": "conformity",
    "row_count": "consistency",
}
#: deterministic checks: any flag on clean data is a real defect, never noise
HARD_CHECKS = frozenset(
    {
        "nonfinite",
        "timestamps_increasing",
        "frame_index",
        "frame_interval",
        "missing_task",
        "duplicate",
    }
)

log = logging.getLogger(__name__)


class QualityError(DataspaceError):
    """A quality check that could not run (unreadable data, GE failure)."""


@dataclass(frozen=True)
class Flag:
    """One failing (episode, check) pair, kept on site in ``episode_flags``."""

    episode_index: int
    check: str
    detail: str


@dataclass
class CheckResult:
    """The outcome of one expectation."""

    check: str
    dimension: str
    expectation: str
    success: bool
    observed: Any = None
    flagged: int = 0
    description: str = ""


@dataclass
class SuiteResult:
    """Everything a run of the suites produced (on-site; report.py filters it)."""

    checks: list[CheckResult]
    flags: list[Flag]
    thresholds: dict[str, Any]
    profile: dict[str, np.ndarray]  # per-episode columns of episode_profile
    episodes: int
    frames: int
    skipped: list[str] = field(default_factory=list)

    def flagged_by(self, check: str) -> set[int]:
        return {f.episode_index for f in self.flags if f.check == check}


# --- thresholds -----------------------------------------------------------------


def _fence(values: np.ndarray, floor: float) -> tuple[float, float, float]:
    """(Q1, Q3, spread) with spread = max(IQR, floor)."""
    q1, q3 = (float(x) for x in np.quantile(values, [0.25, 0.75]))
    return q1, q3, max(q3 - q1, floor)


def robust_limits(
    profile: Mapping[str, np.ndarray], cols: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """Joint limits from quantiles of the per-episode minima and maxima.

    hi = Q3(max) + 5 s, lo = Q1(min) - 5 s with s = max(IQR(max), IQR(min),
    half the joint's usual range Q3(max) - Q1(min)): a single episode reaching far beyond
    where the others end is out of range, ordinary variation is not.
    """
    out: dict[str, tuple[float, float]] = {}
    for c in cols:
        mx = _finite(profile.get(f"max_{c}"))
        mn = _finite(profile.get(f"min_{c}"))
        if mx.size == 0 or mn.size == 0:
            continue
        # the joint's usual range over the dataset (Q1 of minima to Q3 of maxima)
        span = float(np.quantile(mx, 0.75) - np.quantile(mn, 0.25))
        floor = max(0.5 * span, 1e-6 * max(1.0, float(np.max(np.abs(mx)))), 1e-9)
        _, q3, s_hi = _fence(mx, floor)
        q1, _, s_lo = _fence(mn, floor)
        s = max(s_hi, s_lo)
        out[c] = (q1 - RANGE_K * s, q3 + RANGE_K * s)
    return out


def jump_thresholds(
    profile: Mapping[str, np.ndarray],
    cols: Sequence[str],
    limits: Mapping[str, tuple[float, float]],
) -> dict[str, float]:
    """Outlier threshold of the largest per-episode frame-to-frame action change.

    Far-out fence over the episodes' largest changes, at least three times
    their median and at least 25 % of the joint's typical span (so that a
    smooth joint with tiny changes is not flagged for noise).
    """
    out: dict[str, float] = {}
    for c in cols:
        j = _finite(profile.get(f"jump_{c}"))
        if j.size == 0:
            continue
        mx = _finite(profile.get(f"max_{c}"))
        mn = _finite(profile.get(f"min_{c}"))
        span = float(np.median(mx) - np.median(mn)) if mx.size and mn.size else 0.0
        _, q3, s = _fence(j, 0.0)
        thr = max(q3 + FENCE_K * s, 3.0 * float(np.median(j)), 0.25 * span, 1e-9)
        out[c] = thr
    return out


def live_joints(profile: Mapping[str, np.ndarray], cols: Sequence[str]) -> list[str]:
    """State joints that move in most episodes (median frozen fraction below 20 %)."""
    moving = np.asarray(profile.get("n_moving", np.zeros(0)), dtype=float)
    out = []
    for c in cols:
        fr = np.asarray(profile.get(f"frozen_{c}", np.zeros(0)), dtype=float)
        ok = moving > 0
        if ok.sum() == 0:
            continue
        if float(np.median(fr[ok] / moving[ok])) < LIVE_MEDIAN:
            out.append(c)
    return out


def length_bounds(n_frames: np.ndarray) -> tuple[float, float]:
    """Far-out fences on log length (spread at least 0.1, i.e. ~10 %); never below 2."""
    if n_frames.size == 0:
        return 2.0, float(2**62)
    lg = np.log(np.maximum(n_frames.astype(float), 1.0))
    q1, q3, s = _fence(lg, 0.1)
    return max(2.0, math.floor(math.exp(q1 - FENCE_K * s))), math.ceil(math.exp(q3 + FENCE_K * s))


def signature_scales(profile: Mapping[str, np.ndarray], cols: Sequence[str]) -> dict[str, float]:
    """Spread (std across episodes) of each near-duplicate signature component."""
    out = {}
    for c in cols:
        for kind in ("mean", "std"):
            v = _finite(profile.get(f"{kind}_{c}"))
            if v.size >= 2:
                out[f"{kind}_{c}"] = max(float(np.std(v)), 1e-9)
    return out


def _finite(v: Any) -> np.ndarray:
    if v is None:
        return np.zeros(0)
    a = np.asarray(v, dtype=float)
    return a[np.isfinite(a)]


# --- running ----------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_ge() -> Iterator[None]:
    """GE prints a tqdm bar per validation and chatty logs: keep stdout clean."""
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    gx_log = logging.getLogger("great_expectations")
    level = gx_log.level
    gx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        gx_log.setLevel(level)
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def _read_profile(path: Path) -> dict[str, np.ndarray]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        tbl = con.sql("SELECT * FROM episode_profile ORDER BY episode_index").to_arrow_table()
    finally:
        con.close()
    out = {}
    for name in tbl.column_names:
        col = tbl.column(name)
        out[name] = (
            col.to_numpy(zero_copy_only=False).astype(float)
            if col.null_count
            else (col.to_numpy(zero_copy_only=False))
        )
    return out


def run_suites(
    workdir: Path,
    layout: Layout,
    hashes: Sequence[tuple[int, str | None, int | None, int | None]],
    *,
    declared_frames: int | None = None,
    declared_limits: Mapping[str, tuple[float, float]] | None = None,
    exclude: Sequence[str] = (),
    keep_workspace: bool = False,
) -> SuiteResult:
    """Build the workspace under ``workdir``, run the three suites, collect flags."""
    import great_expectations as gx
    from great_expectations import expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"check-{secrets.token_hex(6)}.duckdb"
    try:
        build_workspace(path, layout, hashes)
        profile = _read_profile(path)
        n_eps = len(profile.get("episode_index", []))
        n_frames = int(np.sum(profile["n_frames"])) if n_eps else 0

        limits = robust_limits(profile, layout.joint_cols)
        limits.update(declared_limits or {})
        thresholds: dict[str, Any] = {
            "fps": layout.fps,
            "jitter_tolerance_s": JITTER_TOLERANCE_S,
            "limits": {k: [lo, hi] for k, (lo, hi) in limits.items()},
            "limits_source": "declared+robust" if declared_limits else "robust",
        }
        lo_len, hi_len = length_bounds(np.asarray(profile.get("n_frames", []), dtype=float))
        thresholds["episode_length"] = [lo_len, hi_len]
        jumps = jump_thresholds(profile, layout.action_cols, limits)
        thresholds["action_jump"] = jumps
        live = live_joints(profile, layout.state_cols)
        thresholds["live_joints"] = live
        thresholds["frozen_fraction"] = FROZEN_FRACTION
        thresholds["max_action_roughness"] = MAX_ACTION_ROUGHNESS
        scales = signature_scales(profile, layout.state_cols)
        thresholds["near_duplicate_tolerance"] = NEAR_DUP_TOLERANCE
        min_moving = max(10, int(2 * (layout.fps or 5)))

        builders: dict[str, Any] = {
            "nonfinite": lambda: ex.ExpectEpisodeValuesFinite.build(),
            "timestamps_increasing": lambda: ex.ExpectEpisodeTimestampsStrictlyIncreasing.build(),
            "frame_index": lambda: ex.ExpectEpisodeFrameIndexContiguous.build(),
            "frame_interval": lambda: ex.ExpectEpisodeFrameIntervalRegular.build(
                JITTER_TOLERANCE_S
            ),
            "episode_length": lambda: ex.ExpectEpisodeLengthBetween.build(lo_len, hi_len),
            "out_of_range": lambda: ex.ExpectEpisodeJointsWithinLimits.build(limits),
            "frozen_joint": lambda: ex.ExpectEpisodeNoFrozenJoint.build(
                live, FROZEN_FRACTION, min_moving
            ),
            "action_jump": lambda: ex.ExpectEpisodeNoActionJump.build(jumps),
            "action_noise": lambda: ex.ExpectEpisodeActionsNotNoise.build(MAX_ACTION_ROUGHNESS),
            "missing_task": lambda: ex.ExpectEpisodeTaskLabelled.build(),
            "near_duplicate": lambda: ex.ExpectEpisodeNotNearDuplicate.build(
                scales, NEAR_DUP_TOLERANCE
            ),
        }
        skipped = [c for c in exclude if c in CHECKS or c in FRAME_CHECKS]
        if layout.fps is None:
            skipped.append("frame_interval")

        with _quiet_ge():
            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            ds = ctx.data_sources.add_sql(name="site", connection_string=f"duckdb:///{path}")
            conn = _persist_connection(ds)
            batches = {}
            for table in ("frames", "episode_profile", "episode_hashes"):
                asset = ds.add_table_asset(name=table, table_name=table)
                batches[table] = asset.add_batch_definition_whole_table(table).get_batch()

            checks: list[CheckResult] = []
            flags: list[Flag] = []

            # frames suite: GE built-ins, bundled column/table metrics
            frame_exps: list[tuple[str, Any]] = []
            if "schema" not in skipped:
                cols = ["episode_index", "frame_index", "timestamp", "task_index", "index"]
                frame_exps.append(
                    (
                        "schema",
                        gxe.ExpectTableColumnsToMatchOrderedList(
                            column_list=cols + layout.joint_cols
                        ),
                    )
                )
            if "dtypes" not in skipped:
                types = {"episode_index": "BIGINT", "frame_index": "BIGINT"}
                types |= {"timestamp": "DOUBLE", "task_index": "BIGINT", "index": "BIGINT"}
                types |= {c: "FLOAT" for c in layout.joint_cols}
                frame_exps.append(("dtypes", ex.ExpectFrameColumnTypes.build("frames", types)))
            # Nulls are counted per episode in the profile (check "nonfinite"): a GE
            # not-null expectation per column would rescan 10^7 frames twice each.
            if declared_frames is not None and "row_count" not in skipped:
                frame_exps.append(
                    ("row_count", gxe.ExpectTableRowCountToEqual(value=int(declared_frames)))
                )
            checks += _validate(ctx, batches["frames"], "frames", frame_exps, FRAME_CHECKS)

            ep_exps = [(name, build()) for name, build in builders.items() if name not in skipped]
            res, fl = _validate_episodes(ctx, batches["episode_profile"], "episodes", ep_exps)
            checks += res
            flags += fl
            if "duplicate" not in skipped:
                res, fl = _validate_episodes(
                    ctx,
                    batches["episode_hashes"],
                    "hashes",
                    [("duplicate", ex.ExpectEpisodeHashUnique.build())],
                )
                checks += res
                flags += fl
            conn.close()
            ds.get_execution_engine().engine.dispose()
        return SuiteResult(
            checks=checks,
            flags=sorted(set(flags), key=lambda f: (f.episode_index, f.check)),
            thresholds=thresholds,
            profile=profile,
            episodes=n_eps,
            frames=n_frames,
            skipped=sorted(set(skipped)),
        )
    except DataspaceError:
        raise
    except (duckdb.Error, OSError) as e:
        raise QualityError(f"quality check on {layout.parquet_glob}: {e}") from e
    finally:
        if not keep_workspace:
            for p in (path, path.with_suffix(".duckdb.wal")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()


def _persist_connection(ds: Any) -> Any:
    """Give GE's engine one persistent connection to the workspace.

    GE 1.24 opens a connection per query for dialects not in its
    ``_PERSISTED_CONNECTION_DIALECTS`` and returns the cursor *after* closing
    the connection; duckdb-engine then yields no rows, which surfaces as
    ``IndexError: list index out of range`` in the metric bundle (the error
    reported in GE #10738 / #11579) or ``'NoneType' object is not subscriptable``
    in query row counts. One connection kept open for the validation fixes it,
    and saves reopening the DuckDB file for each of ~40 queries.
    """
    ee = ds.get_execution_engine()
    conn = ee.engine.connect()

    @contextlib.contextmanager
    def persisted() -> Iterator[Any]:
        yield conn

    ee.get_connection = persisted
    return conn


def _suite(ctx: Any, name: str, exps: Sequence[tuple[str, Any]]) -> Any:
    import great_expectations as gx

    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for _, e in exps:
        suite.add_expectation(e)
    return suite


def _validate(
    ctx: Any, batch: Any, name: str, exps: Sequence[tuple[str, Any]], dims: Mapping[str, str]
) -> list[CheckResult]:
    if not exps:
        return []
    suite = _suite(ctx, name, exps)
    result = batch.validate(suite, result_format="BASIC")
    out = []
    for (check, e), r in _pair(exps, result.results):
        _raise_on_exception(r, check)
        observed = r.result.get("observed_value", r.result.get("unexpected_count"))
        out.append(
            CheckResult(
                check=check,
                dimension=dims[check],
                expectation=e.expectation_type,
                success=bool(r.success),
                observed=_plain(observed),
                description=_describe(e),
            )
        )
    return out


def _validate_episodes(
    ctx: Any, batch: Any, name: str, exps: Sequence[tuple[str, ex.EpisodeRowsExpectation]]
) -> tuple[list[CheckResult], list[Flag]]:
    if not exps:
        return [], []
    suite = _suite(ctx, name, exps)
    result = batch.validate(suite, result_format="COMPLETE")
    out, flags = [], []
    for (check, e), r in _pair(exps, result.results):
        _raise_on_exception(r, check)
        rows = r.result.get("details", {}).get("unexpected_rows", [])
        eps = set()
        for row in rows:
            ep = int(row["episode_index"])
            eps.add(ep)
            flags.append(Flag(ep, check, str(row.get("detail") or check)))
        out.append(
            CheckResult(
                check=check,
                dimension=type(e).dimension,
                expectation=e.expectation_type,
                success=bool(r.success),
                observed=len(eps),
                flagged=len(eps),
                description=(type(e).__doc__ or "").strip().splitlines()[0],
            )
        )
    return out, flags


def _pair(exps: Sequence[tuple[str, Any]], results: Sequence[Any]) -> list[tuple[Any, Any]]:
    """Match results to expectations by id: GE does not keep the suite's order."""
    by_id = {r.expectation_config.id: r for r in results}
    return [((check, e), by_id[e.id]) for check, e in exps]


def _raise_on_exception(r: Any, check: str) -> None:
    info = getattr(r, "exception_info", None) or {}
    if info.get("raised_exception"):
        raise QualityError(
            f"expectation for check {check!r} failed to run: {info.get('exception_message')}"
        )


def _describe(e: Any) -> str:
    kw = {k: v for k, v in e.configuration.kwargs.items() if k not in ("batch_id",)}
    return f"{e.expectation_type}({', '.join(f'{k}={v!r}' for k, v in kw.items())})"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v
