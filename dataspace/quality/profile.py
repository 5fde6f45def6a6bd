"""The per-check DuckDB workspace: a frame view and the per-episode profile.

Great Expectations runs against this workspace, not against ``site.duckdb``:
the site database has one writer at a time and is shared by the CLI, the
connector service and the ClientApp, whereas a check needs a file GE can keep
open for the whole validation. So every check builds a small DuckDB file of its
own under ``SITE/quality/work/`` holding

* ``frames``: a view over the dataset's canonical Parquet that unpacks the
  fixed-size lists ``observation.state`` and ``action`` into one column per
  joint (``s_0 .. s_{S-1}``, ``a_0 .. a_{A-1}``), so GE sees plain columns;
* ``episode_profile``: one row per episode, computed in **one** scan of the
  frames with window functions (interval, monotonicity, per-joint extremes,
  frame-to-frame action change and roughness, frozen-joint counts, signatures);
* ``episode_hashes``: the episode hashes copied from the site's ``episodes``
  table (a few bytes per episode);

then closes its connection before GE connects (DuckDB allows one writer per
file). The profile follows Deequ's execution model: one pass for ungrouped
statistics plus one pass per grouping (here: the episode); the expectations
then run on the small profile table, not on 10^7 frames again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

#: a frame whose interval exceeds this many nominal periods means dropped frames
DROP_FACTOR = 1.5


@dataclass(frozen=True)
class Layout:
    """What the SQL needs to know about a dataset's frames."""

    parquet_glob: str | None  # None: the dataset has no frames
    state_dim: int
    action_dim: int
    fps: float | None
    valid_tasks: tuple[int, ...]

    @property
    def state_cols(self) -> list[str]:
        return [f"s_{i}" for i in range(self.state_dim)]

    @property
    def action_cols(self) -> list[str]:
        return [f"a_{i}" for i in range(self.action_dim)]

    @property
    def joint_cols(self) -> list[str]:
        return self.state_cols + self.action_cols


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _count(cond: str) -> str:
    # CASE inside the aggregate, not FILTER: DuckDB runs ~50 FILTER clauses
    # noticeably slower than the same number of plain aggregates
    return f"count(CASE WHEN {cond} THEN 1 END)"


def _finite(col: str) -> str:
    # DuckDB orders NaN above every number, so NaN/inf must not reach min/max
    return f"CASE WHEN isfinite({col}) THEN {col} END"


def frames_view_sql(layout: Layout) -> str:
    """``CREATE VIEW frames``: one column per joint, over the canonical Parquet."""
    joints = [f'"observation.state"[{i + 1}] AS s_{i}' for i in range(layout.state_dim)]
    joints += [f"action[{i + 1}] AS a_{i}" for i in range(layout.action_dim)]
    cols = ", ".join(
        ["episode_index", "frame_index", '"timestamp"', "task_index", '"index"', *joints]
    )
    if layout.parquet_glob is None:
        # an empty dataset still gets a typed, empty view, so the suite can run
        typed = ["NULL::BIGINT AS episode_index", "NULL::BIGINT AS frame_index"]
        typed += ['NULL::DOUBLE AS "timestamp"', "NULL::BIGINT AS task_index"]
        typed += ['NULL::BIGINT AS "index"']
        typed += [f"NULL::FLOAT AS {c}" for c in layout.joint_cols]
        return f"CREATE OR REPLACE VIEW frames AS SELECT {', '.join(typed)} WHERE false"
    src = f"read_parquet({_q(layout.parquet_glob)})"
    return f"CREATE OR REPLACE VIEW frames AS SELECT {cols} FROM {src}"


def profile_select_sql(layout: Layout, source: str = "frames", streaming: bool = True) -> str:
    """The per-episode profile as one SELECT over ``source``: one window stage, one grouping.

    Stage ``d``: frame-to-frame differences with ``LAG`` (interval, frame_index
    step, per-joint change flags, absolute action change), then one GROUP BY
    episode_index with every aggregate the checks read. ``frozen_s_j`` counts
    the *moving* frames (some state joint changed) in which joint j did not.

    ``streaming=True`` uses windows over the input order (``OVER ()``), which
    DuckDB evaluates in a streaming operator without sorting; that is valid
    because canonical Parquet is sorted by (episode_index, frame_index) (brief,
    DESIGN.md), and the profile counts rows that break that order
    (``n_unordered``) so the caller can recompute with ``streaming=False``
    (``PARTITION BY episode_index ORDER BY frame_index``, which sorts).
    """
    fps = layout.fps or 0.0
    period = 1.0 / fps if fps > 0 else None
    s, a = layout.state_cols, layout.action_cols
    joints = s + a
    if streaming:
        w = "OVER ()"
        new_ep = "(episode_index IS DISTINCT FROM lag(episode_index) OVER ())"
        wdef = ""
    else:
        w = "OVER w"
        new_ep = "(lag(episode_index) OVER w IS NULL)"
        wdef = " WINDOW w AS (PARTITION BY episode_index ORDER BY frame_index)"

    def diff(expr: str) -> str:
        return f"CASE WHEN {new_ep} THEN NULL ELSE {expr} - lag({expr}) {w} END"

    d_cols = ["episode_index", "frame_index", '"timestamp" AS ts', "task_index"]
    d_cols.append(f"{diff(chr(34) + 'timestamp' + chr(34))} AS dt")
    d_cols.append(f"{diff('frame_index')} AS dfi")
    d_cols.append(f"({new_ep} AND episode_index < lag(episode_index) {w}) AS unordered_ep")
    d_cols += joints
    d_cols += [f"({new_ep} OR {c} IS DISTINCT FROM lag({c}) {w}) AS c_{c}" for c in s]
    d_cols += [f"abs({diff(c)}) AS d_{c}" for c in a]
    any_null = " OR ".join(
        [f"{c} IS NULL" for c in ["frame_index", '"timestamp"', "task_index", *joints]]
    )
    any_bad = " OR ".join(f"NOT isfinite({c})" for c in joints) or "false"
    d_cols.append(f"({any_null}) AS has_null")
    d_cols.append(f"coalesce({any_bad}, false) AS has_nonfinite")
    moving = " OR ".join(f"c_{c}" for c in s) or "false"
    d_cols.append(f"(dfi IS NOT NULL AND ({moving})) AS moving")
    stage_d = f"SELECT {', '.join(d_cols)} FROM {source}{wdef}"

    valid = ", ".join(str(t) for t in layout.valid_tasks) or "NULL"
    agg = [
        "episode_index",
        "count(*) AS n_frames",
        f"{_count('has_null')} AS n_null",
        f"{_count('has_nonfinite')} AS n_nonfinite",
        f"{_count('dt <= 0')} AS n_nonincreasing",
        f"{_count('dfi <> 1')} AS n_index_gaps",
        f"{_count('dfi <= 0 OR unordered_ep')} AS n_unordered",
        f"{_count(f'task_index IS NULL OR task_index NOT IN ({valid})')} AS n_task_missing",
        "min(ts) AS ts_first",
        "max(ts) - min(ts) AS duration_s",
        f"{_count('moving')} AS n_moving",
    ]
    if period is not None:
        drop = DROP_FACTOR * period
        regular = f"dt > 0 AND dt <= {drop!r}"
        agg += [
            f"{_count(f'dt > {drop!r}')} AS n_dropped",
            # jitter: deviation of the regular intervals only (drops are counted apart)
            f"max(CASE WHEN {regular} THEN abs(dt - {period!r}) END) AS max_jitter_s",
            f"stddev_samp(CASE WHEN {regular} THEN dt END) AS std_dt_s",
        ]
    else:
        agg += ["0 AS n_dropped", "NULL::DOUBLE AS max_jitter_s", "NULL::DOUBLE AS std_dt_s"]
    for c in joints:
        agg.append(f"min({_finite(c)}) AS min_{c}")
        agg.append(f"max({_finite(c)}) AS max_{c}")
    for c in s:
        agg.append(f"avg({_finite(c)}) AS mean_{c}")
        agg.append(f"stddev_pop({_finite(c)}) AS std_{c}")
        agg.append(f"{_count(f'moving AND NOT c_{c}')} AS frozen_{c}")
    for c in a:
        agg.append(f"max({_finite('d_' + c)}) AS jump_{c}")
    agg.append(f"{action_roughness_sql(a)} AS action_roughness")
    return f"WITH d AS ({stage_d}) SELECT {', '.join(agg)} FROM d GROUP BY episode_index"


def action_roughness_sql(action_cols: Sequence[str]) -> str:
    """The episode's action roughness: the median over action joints of
    ``mean((a_t - a_{t-1})^2) / (2 var(a))``.

    For a joint this is about ``1 - r1``, with ``r1`` the lag-1 autocorrelation: a
    commanded trajectory sampled at the robot's rate moves little from frame to
    frame compared with its range (0.001-0.03 on every shared recording), while
    white noise, or actions shuffled across frames, give about 1. The median
    over joints keeps one noisy sensor channel from deciding. Joints that never
    change (variance 0) are left out; none left gives NULL.
    """
    if not action_cols:
        return "NULL::DOUBLE"
    terms = [
        f"CASE WHEN var_pop({_finite(c)}) > 0 "
        f"THEN avg({_finite('d_' + c)} * {_finite('d_' + c)}) / (2 * var_pop({_finite(c)})) END"
        for c in action_cols
    ]
    # list_median skips NULLs, as the median aggregate does
    return f"list_median([{', '.join(terms)}])"


def build_workspace(
    path: Path,
    layout: Layout,
    hashes: Sequence[tuple[int, str | None, int | None, int | None]],
    threads: int | None = None,
) -> None:
    """Create the workspace file at ``path`` (views, profile, hashes) and close it."""
    con = duckdb.connect(str(path))
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.execute(frames_view_sql(layout))
        con.execute(
            f"CREATE OR REPLACE TABLE episode_profile AS {profile_select_sql(layout)} "
            "ORDER BY episode_index"
        )
        (unordered,) = con.execute(
            "SELECT coalesce(sum(n_unordered), 0) FROM episode_profile"
        ).fetchall()[0]
        if unordered:
            # Parquet not in canonical order: sort per episode instead (slower, exact)
            con.execute(
                "CREATE OR REPLACE TABLE episode_profile AS "
                f"{profile_select_sql(layout, streaming=False)} ORDER BY episode_index"
            )
        # one Arrow insert: executemany of 10^4 rows into DuckDB takes seconds
        cols = list(zip(*hashes, strict=True)) if hashes else [[], [], [], []]
        tbl = pa.table(
            {
                "episode_index": pa.array(cols[0], pa.int64()),
                "hash": pa.array(cols[1], pa.string()),
                "frames": pa.array(cols[2], pa.int64()),
                "task_index": pa.array(cols[3], pa.int64()),
            }
        )
        con.register("new_hashes", tbl)
        con.execute("CREATE OR REPLACE TABLE episode_hashes AS SELECT * FROM new_hashes")
        con.unregister("new_hashes")
    finally:
        con.close()
