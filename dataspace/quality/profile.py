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
  action spikes and frame-to-frame change, frozen-joint counts, signatures);
* ``episode_hashes``: the episode hashes copied from the site's ``episodes``
  table (a few bytes per episode);

then closes its connection before GE connects (DuckDB allows one writer per
file). The profile follows Deequ's execution model: one pass for ungrouped
statistics plus one pass per grouping (here: the episode); the expectations
then run on the small profile table, not on 10^7 frames again.

Before the profile, :func:`dataset_scales` reads a deterministic sample of whole
episodes (every m-th episode, at most ``SAMPLE_FRAMES`` frames; all of them for
smaller datasets) and measures the dataset's own scales (issue 18): each
joint's usual range (q01..q99 of its frames) and, for each state joint, the
joints it normally moves with (its *partners*). A statistic of one episode is
then compared with those scales, never only with the episode's own spread: an
episode in which the robot holds still has a tiny spread of its own, and any
wobble looks large against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from dataspace.quality.response import ResponseModel, fit_response

#: a frame whose interval exceeds this many nominal periods means dropped frames
DROP_FACTOR = 1.5
#: at most this many frames (whole episodes) are read to measure the dataset's scales
SAMPLE_FRAMES = 200_000
#: a joint's usual range: between these quantiles of its frames
RANGE_QUANTILES = (0.01, 0.99)
#: frozen_joint measures displacement over this window (seconds): a slow joint read by
#: an encoder may keep its count for a few frames, never for a whole second of motion
MOTION_WINDOW_S = 1.0
#: window length in frames when the dataset declares no fps
MOTION_WINDOW_FRAMES = 10
#: a joint *travels* over a window when it moves by more than this share of its usual
#: range: more than sensor noise or encoder flicker, less than any real motion
MOTION_SHARE = 0.02
#: k partners joint j when j changes in at least this share of the windows k travels in
PARTNER_RATE = 0.95
#: the partners kept per joint (those that travel most often)
MAX_PARTNERS = 3
#: the partner "any joint": for a joint that changes whenever any joint travels
ANY_PARTNER = "*"
#: k commands j only if j also rests (keeps exactly its value over a window) in at least
#: this share of the windows in which all of j's commands stay at 0: a drive command,
#: not a position target (chosen a priori: a drive at rest mostly stays put)
REST_RATE = 0.5
#: a state channel's *rest value*: the one value that holds most (more than this share) of
#: the sample's windows in which it kept its value, at least one window's worth: a
#: velocity that reads exactly 0 at rest, a pixel error that reads 0 with nothing in view.
#: A majority, not 95 %: the sample includes the defective episodes, and a few stuck
#: ones (every window kept, at their own value) must not hide it; a wrong rest value
#: costs nothing, since frozen_joint watches the windows off it only if the channel is
#: (almost) never constant there in 90 % of the episodes (suite.frozen_thresholds)
REST_VALUE_RATE = 0.5


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


@dataclass(frozen=True)
class Scales:
    """Dataset-level scales the per-episode statistics are measured against."""

    #: frames over which frozen_joint measures a joint's displacement
    window: int
    #: column -> (q01, q99) of its finite frame values in the sample
    quantiles: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: state column -> the state columns it normally moves with (may be empty)
    partners: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: every how many episodes the sample took one (1: all of them)
    sample_every: int = 1
    #: state column -> the action columns that command it (it changes whenever one of
    #: them is away from 0 at the start of a window), learnt from the data
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: state column -> the one value it rests at (REST_VALUE_RATE); frozen_joint asks
    #: whether it is ever constant elsewhere (profile ``still_off_s_j``, ``n_off_s_j``)
    rest: dict[str, float] = field(default_factory=dict)
    #: the action-to-state response model (quality/response.py): None when too few frames
    response: ResponseModel | None = field(default=None, compare=False)

    def range(self, col: str) -> float:
        """The column's usual range (q99 - q01), 0 when unknown."""
        lo, hi = self.quantiles.get(col, (0.0, 0.0))
        return max(hi - lo, 0.0)

    def travel(self, col: str) -> float:
        """Displacement over the window above which the column *travels*."""
        return MOTION_SHARE * self.range(col)

    def active(self, col: str) -> float:
        """|action| above which the action column *commands* motion (0 when unknown)."""
        return MOTION_SHARE * self.range(col)

    def to_json(self) -> dict[str, object]:
        return {
            "window_frames": self.window,
            "sample_every": self.sample_every,
            "ranges": {c: self.range(c) for c in self.quantiles},
            "partners": {c: list(p) for c, p in self.partners.items()},
            "commands": {c: list(p) for c, p in self.commands.items() if p},
            "rest_values": dict(self.rest),
            "discrete_actions": {
                c: {"levels": list(lv), "observed": self.response.observed(c)}
                for c, lv in (self.response.levels.items() if self.response else ())
            },
        }


def motion_window(fps: float | None) -> int:
    """Frames in ``MOTION_WINDOW_S`` at ``fps`` (``MOTION_WINDOW_FRAMES`` if unknown)."""
    if not fps or fps <= 0:
        return MOTION_WINDOW_FRAMES
    return max(1, round(fps * MOTION_WINDOW_S))


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


def profile_select_sql(
    layout: Layout,
    scales: Scales | None = None,
    source: str = "frames",
    streaming: bool = True,
) -> str:
    """The per-episode profile as one SELECT over ``source``: one window stage, one grouping.

    Stage ``d``: frame-to-frame differences with ``LAG`` (interval, frame_index
    step, action changes and spikes) and each state joint's displacement over
    the motion window (``scales.window`` frames), then one GROUP BY
    episode_index with every aggregate the checks read:

    * ``var_a_j``, ``dsq_a_j``: the action's variance and mean squared
      frame-to-frame change (action_noise divides the latter by the *dataset's*
      variance, suite.py);
    * ``spike_a_j``: the largest out-and-back excursion, min(|a_t - a_{t-1}|,
      |a_{t+1} - a_t|) where the two changes have opposite signs: a glitch of
      one frame scores its height, a step (an on/off or saturated command
      switching) scores 0;
    * ``pmove_s_j``: windows in which one of joint j's partners travels
      (``Scales.partners``, ``Scales.travel``; partner ``*``: any joint),
      ``frozen_s_j``: those of them in which joint j kept exactly the same value;
      ``still_s_j``: windows in which j kept exactly its value, partners or not,
      out of ``n_windows`` (a noisy channel is never still for a whole window);
      ``n_off_s_j``, ``still_off_s_j``: the windows that end off j's rest value
      (``Scales.rest``) and those of them in which j kept its value (0 without one);
    * ``n_motion``: frames in which some state joint travels over the window.

    ``scales=None`` measures against an empty set of scales (no partners: no
    frozen counts); :func:`build_workspace` passes :func:`dataset_scales`.

    ``streaming=True`` uses windows over the input order (``OVER ()``), which
    DuckDB evaluates in a streaming operator without sorting; that is valid
    because canonical Parquet is sorted by (episode_index, frame_index) (brief,
    DESIGN.md), and the profile counts rows that break that order
    (``n_unordered``) so the caller can recompute with ``streaming=False``
    (``PARTITION BY episode_index ORDER BY frame_index``, which sorts).
    """
    scales = scales or Scales(window=motion_window(layout.fps))
    fps = layout.fps or 0.0
    period = 1.0 / fps if fps > 0 else None
    s, a = layout.state_cols, layout.action_cols
    joints = s + a
    win = scales.window
    if streaming:
        w = "OVER ()"
        wdef = ""

        def new_ep(k: int = 1) -> str:
            return f"(episode_index IS DISTINCT FROM lag(episode_index, {k}) OVER ())"

    else:
        w = "OVER w"
        wdef = " WINDOW w AS (PARTITION BY episode_index ORDER BY frame_index)"

        def new_ep(k: int = 1) -> str:
            return f"(lag(episode_index, {k}) OVER w IS NULL)"

    def diff(expr: str) -> str:
        return f"CASE WHEN {new_ep()} THEN NULL ELSE {expr} - lag({expr}) {w} END"

    d_cols = ["episode_index", "frame_index", '"timestamp" AS ts', "task_index"]
    d_cols.append(f"{diff(chr(34) + 'timestamp' + chr(34))} AS dt")
    d_cols.append(f"{diff('frame_index')} AS dfi")
    d_cols.append(f"({new_ep()} AND episode_index < lag(episode_index) {w}) AS unordered_ep")
    d_cols += joints
    for c in a:
        f = _finite(c)
        d_cols.append(f"CASE WHEN {new_ep()} THEN NULL ELSE {f} - lag({f}) {w} END AS d_{c}")
        # the change into the previous frame, for the out-and-back spike
        d_cols.append(
            f"CASE WHEN {new_ep()} OR {new_ep(2)} THEN NULL "
            f"ELSE lag({f}) {w} - lag({f}, 2) {w} END AS d0_{c}"
        )
    for c in s:
        f = _finite(c)
        d_cols.append(
            f"CASE WHEN {new_ep(win)} THEN NULL ELSE abs({f} - lag({f}, {win}) {w}) END AS wd_{c}"
        )
    d_cols.append(f"(NOT {new_ep(win)}) AS win_ok")
    # an action column commands motion over the window: away from 0 at its start
    commanding = sorted({k for p in scales.commands.values() for k in p if k in a})
    for k in commanding:
        d_cols.append(
            f"(NOT {new_ep(win)} AND coalesce(abs(lag({_finite(k)}, {win}) {w}) > "
            f"{scales.active(k)!r}, false)) AS act_{k}"
        )
    any_null = " OR ".join(
        [f"{c} IS NULL" for c in ["frame_index", '"timestamp"', "task_index", *joints]]
    )
    any_bad = " OR ".join(f"NOT isfinite({c})" for c in joints) or "false"
    d_cols.append(f"({any_null}) AS has_null")
    d_cols.append(f"coalesce({any_bad}, false) AS has_nonfinite")
    stage_d = f"SELECT {', '.join(d_cols)} FROM {source}{wdef}"

    def travels(c: str) -> str:
        # a joint with no usable range never counts as travelling; nor does a leap beyond
        # its whole usual range within one window (a glitch, which other checks judge)
        t = scales.travel(c)
        return f"(wd_{c} > {t!r} AND wd_{c} <= {scales.range(c)!r})" if t > 0 else "false"

    valid = ", ".join(str(t) for t in layout.valid_tasks) or "NULL"
    # some state joint travels over the window: the robot moves
    motion = " OR ".join(travels(c) for c in s) or "false"
    watched = [c for c in s if scales.partners.get(c)]
    commanded = [
        c
        for c in s
        if c in scales.quantiles and [k for k in scales.commands.get(c, ()) if k in commanding]
    ]
    m_cols = [f"coalesce({motion}, false) AS motion"]
    for c in watched:
        partners = scales.partners[c]
        moving = motion if partners == (ANY_PARTNER,) else " OR ".join(map(travels, partners))
        m_cols.append(f"coalesce({moving}, false) AS pm_{c}")
    for c in commanded:
        cmd = " OR ".join(f"act_{k}" for k in scales.commands[c] if k in commanding)
        # a joint held at an end of its usual range is at a stop (a tilt at its limit
        # with the controller asking for more), not stuck: such windows do not count
        lo, hi = scales.quantiles.get(c, (-math.inf, math.inf))
        m_cols.append(f"(({cmd}) AND {_finite(c)} > {lo!r} AND {_finite(c)} < {hi!r}) AS cm_{c}")
    stage_m = f"SELECT *, {', '.join(m_cols)} FROM d"
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
        f"{_count('motion')} AS n_motion",
        f"{_count('win_ok')} AS n_windows",
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
        agg.append(f"{_count(f'wd_{c} = 0')} AS still_{c}")
        if c in watched:
            agg.append(f"{_count(f'pm_{c}')} AS pmove_{c}")
            agg.append(f"{_count(f'pm_{c} AND wd_{c} = 0')} AS frozen_{c}")
        else:
            agg += [f"0 AS pmove_{c}", f"0 AS frozen_{c}"]
        if c in scales.rest:
            off = f"{_finite(c)} <> {scales.rest[c]!r}"
            agg.append(f"{_count(f'win_ok AND {off}')} AS n_off_{c}")
            agg.append(f"{_count(f'wd_{c} = 0 AND {off}')} AS still_off_{c}")
        else:
            agg += [f"0 AS n_off_{c}", f"0 AS still_off_{c}"]
        if c in commanded:
            agg.append(f"{_count(f'cm_{c}')} AS cmove_{c}")
            agg.append(f"{_count(f'cm_{c} AND wd_{c} = 0')} AS cfrozen_{c}")
        else:
            agg += [f"0 AS cmove_{c}", f"0 AS cfrozen_{c}"]
    for c in a:
        agg.append(f"var_pop({_finite(c)}) AS var_{c}")
        agg.append(f"avg(d_{c} * d_{c}) AS dsq_{c}")
        agg.append(
            f"max(CASE WHEN d0_{c} * d_{c} < 0 THEN least(abs(d0_{c}), abs(d_{c})) "
            f"ELSE 0 END) AS spike_{c}"
        )
    return (
        f"WITH d AS ({stage_d}), m AS ({stage_m}) "
        f"SELECT {', '.join(agg)} FROM m GROUP BY episode_index"
    )


def action_roughness(
    profile: Mapping[str, np.ndarray], variance: Mapping[str, float]
) -> np.ndarray:
    """Each episode's action roughness in the dataset's units (one value per episode).

    The median over action joints of ``mean((a_t - a_{t-1})^2) / (2 V_j)``, where
    ``V_j`` is the joint's variance *over the dataset* (:func:`pooled_variance`),
    not over the episode: about ``1 - r1`` (lag-1 autocorrelation) for an
    episode that spans the usual range, near 0 for one that holds still with a
    little command jitter, and about ``k^2`` for noise of ``k`` times the
    joint's usual spread. Joints with ``V_j = 0`` are left out; none left gives NaN.
    """
    n = len(profile.get("episode_index", []))
    cols = [c for c, v in variance.items() if v > 0 and f"dsq_{c}" in profile]
    if n == 0 or not cols:
        return np.full(n, np.nan)
    terms = np.stack(
        [np.asarray(profile[f"dsq_{c}"], dtype=float) / (2.0 * variance[c]) for c in cols], axis=1
    )
    out = np.full(n, np.nan)
    ok = np.isfinite(terms).any(axis=1)
    out[ok] = np.nanmedian(terms[ok], axis=1)
    return out


def pooled_variance(profile: Mapping[str, np.ndarray], cols: Sequence[str]) -> dict[str, float]:
    """Each action joint's within-episode variance pooled over the dataset (frame-weighted).

    Pooled *within* episodes, so that episodes parked at different rest poses do
    not inflate it, and weighted by frames, so that many short idle episodes
    cannot shrink it to their jitter.
    """
    n = np.asarray(profile.get("n_frames", []), dtype=float)
    out: dict[str, float] = {}
    for c in cols:
        v = np.asarray(profile.get(f"var_{c}", np.zeros(0)), dtype=float)
        ok = np.isfinite(v) & (n > 0) if v.size == n.size else np.zeros(0, dtype=bool)
        out[c] = float(np.sum(v[ok] * n[ok]) / np.sum(n[ok])) if ok.any() else 0.0
    return out


# --- dataset scales ------------------------------------------------------------------------


def dataset_scales(con: duckdb.DuckDBPyConnection, layout: Layout) -> Scales:
    """Ranges and motion partners from a deterministic sample of whole episodes.

    Reads every m-th episode (m chosen so that about ``SAMPLE_FRAMES`` frames are
    read; m = 1 for smaller datasets) from the ``frames`` view of ``con``.
    """
    window = motion_window(layout.fps)
    if layout.parquet_glob is None or not layout.joint_cols:
        return Scales(window=window)
    (total,) = con.execute("SELECT count(*) FROM frames").fetchall()[0]
    every = max(1, math.ceil(int(total) / SAMPLE_FRAMES))
    cols = ", ".join(layout.joint_cols)
    tbl = con.sql(
        f"SELECT episode_index, {cols} FROM frames WHERE episode_index % {every} = 0 "
        "ORDER BY episode_index, frame_index"
    ).to_arrow_table()
    episode = tbl.column("episode_index").to_numpy(zero_copy_only=False)
    values = {c: _floats(tbl.column(c)) for c in layout.joint_cols}
    quantiles = {}
    for c, v in values.items():
        fin = v[np.isfinite(v)]
        if fin.size:
            lo, hi = np.quantile(fin, RANGE_QUANTILES)
            quantiles[c] = (float(lo), float(hi))
    scales = Scales(window=window, quantiles=quantiles, sample_every=every)
    partners = motion_partners(episode, values, layout.state_cols, scales)
    commands = command_partners(episode, values, layout.state_cols, layout.action_cols, scales)
    return Scales(
        window=window,
        quantiles=quantiles,
        partners=partners,
        sample_every=every,
        commands=commands,
        rest=rest_values(episode, values, layout.state_cols, window),
        response=fit_response(episode, values, layout.state_cols, layout.action_cols),
    )


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=float)


def motion_partners(
    episode: np.ndarray,
    values: Mapping[str, np.ndarray],
    state_cols: Sequence[str],
    scales: Scales,
) -> dict[str, tuple[str, ...]]:
    """For each state joint j, the joints k it moves with (frozen_joint's reference).

    Over windows of ``scales.window`` frames inside one episode: k is a partner
    of j when j changed in at least ``PARTNER_RATE`` of the windows in which k
    travelled (moved more than ``scales.travel(k)``), in at least as many
    windows as one window's worth of frames; the ``MAX_PARTNERS`` that travel
    most often are kept. Learnt from the data, so nothing is assumed about
    which joints move together: a mobile base's x moves with its y, not with
    its heading (it turns on the spot); an arm's noisy velocity estimate is no
    partner of its encoder angles (it changes when the arm stands still).
    """
    w = scales.window
    if episode.size <= w or not state_cols:
        return {c: () for c in state_cols}
    same = episode[w:] == episode[:-w]
    moved, travelled = [], []
    for c in state_cols:
        v = values[c]
        disp = np.abs(v[w:] - v[:-w])[same]
        # NaN compares unequal: a window over a NaN counts as a change, never as travel
        moved.append(~(disp == 0))
        t = scales.travel(c)
        travelled.append(
            ((disp > t) & (disp <= scales.range(c))) if t > 0 else np.zeros(disp.shape, dtype=bool)
        )
    m = np.stack(moved, axis=1).astype(float)
    t = np.stack(travelled, axis=1).astype(float)
    together = m.T @ t  # [j, k]: windows where k travelled and j changed
    n_travel = t.sum(axis=0)
    least = max(10, w)
    out: dict[str, tuple[str, ...]] = {}
    for j, c in enumerate(state_cols):
        others = [k for k in range(len(state_cols)) if k != j and n_travel[k] >= least]
        cands = [(-n_travel[k], k) for k in others if together[j, k] >= PARTNER_RATE * n_travel[k]]
        if cands and len(cands) == len(others):
            # j changes whenever anything travels (a noisy or fast channel): any motion
            # of the robot is its reference, so a stuck gyro is seen in a turn on the spot
            out[c] = (ANY_PARTNER,)
        else:
            out[c] = tuple(state_cols[k] for _, k in sorted(cands)[:MAX_PARTNERS])
    return out


def rest_values(
    episode: np.ndarray, values: Mapping[str, np.ndarray], state_cols: Sequence[str], w: int
) -> dict[str, float]:
    """For each state channel that rests at one value, that value (frozen_joint).

    Over windows of ``w`` frames inside one episode: the windows in which the
    channel kept exactly its value (at least ``max(10, w)`` of them) hold one
    value in more than ``REST_VALUE_RATE`` of them. Such a channel (a velocity
    estimate at 0 while the robot holds still, a tracking error at 0 with no
    target in view) rests only there; constant anywhere else, it is stuck. A
    joint that holds still wherever it stopped has no rest value. The frozen
    reference for it counts only the windows that end off that value, so the
    episodes (or stretches) spent at rest do not dilute it.
    """
    out: dict[str, float] = {}
    if episode.size <= w:
        return out
    same = episode[w:] == episode[:-w]
    least = max(10, w)
    for c in state_cols:
        v = values[c]
        end = v[w:][same]
        kept = end[(v[w:] == v[:-w])[same] & np.isfinite(end)]
        if kept.size < least:
            continue
        vals, counts = np.unique(kept, return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] > REST_VALUE_RATE * kept.size:
            out[c] = float(vals[top])
    return out


def command_partners(
    episode: np.ndarray,
    values: Mapping[str, np.ndarray],
    state_cols: Sequence[str],
    action_cols: Sequence[str],
    scales: Scales,
) -> dict[str, tuple[str, ...]]:
    """For each state joint j, the action columns k that command it (frozen_joint).

    k commands j when j changed in at least ``PARTNER_RATE`` of the windows
    that start with k away from 0 (``|a_k| > Scales.active(k)``) while every
    other action stays at 0 throughout (k alone: co-occurrence is not cause),
    and j kept exactly its value in at least ``REST_RATE`` of the windows in
    which all of its commands stay at 0; each over at least one window's worth
    of windows: a velocity or on/off drive command, which is 0 when the joint
    rests. A position target is away from 0 while the robot holds still, and a
    robot that never rests has no rest to check, so they command nothing here;
    such joints keep the partner reference. Against its commands a stuck joint is
    seen however little of the episode is left after it stuck: a drive that keeps
    being commanded and does not move is what a stuck reading looks like.
    """
    w = scales.window
    if episode.size <= w or not state_cols or not action_cols:
        return {c: () for c in state_cols}
    same = episode[w:] == episode[:-w]
    active, resting = [], []
    for k in action_cols:
        lvl = scales.active(k)
        if lvl <= 0:
            active.append(np.zeros(int(same.sum()), dtype=bool))
            resting.append(np.zeros(int(same.sum()), dtype=bool))
            continue
        a = np.abs(values[k])
        away = ~(a <= lvl)  # NaN counts as away from 0
        # at 0 throughout the window (a pause shorter than the window is no rest): no
        # frame of frames r-w .. r away, from a running count (one pass, not a window max)
        run = np.concatenate([[0], np.cumsum(away)])
        active.append((a[:-w] > lvl)[same])
        resting.append((run[w + 1 :] - run[: -w - 1] == 0)[same])
    act = np.stack(active, axis=1)
    rest = np.stack(resting, axis=1)
    changed = np.stack(
        [~(np.abs(values[c][w:] - values[c][:-w])[same] == 0) for c in state_cols], axis=1
    ).astype(float)
    # k alone: k away from 0 at the window's start, every other action at 0 throughout
    # (an operator moving x and y together does not make y's command drive x)
    others_rest = [
        np.delete(rest, k, axis=1).all(axis=1) if rest.shape[1] > 1 else np.ones(len(rest), bool)
        for k in range(len(action_cols))
    ]
    alone = np.stack([act[:, k] & others_rest[k] for k in range(len(action_cols))], axis=1)
    together = changed.T @ alone.astype(float)  # [j, k]: windows k alone and j changed
    n_alone = alone.sum(axis=0)
    least = max(10, w)
    out: dict[str, tuple[str, ...]] = {}
    for j, c in enumerate(state_cols):
        cands = [
            k
            for k in range(len(action_cols))
            if n_alone[k] >= least and together[j, k] >= PARTNER_RATE * n_alone[k]
        ]
        # and j rests when all of them are at 0 (a joint several commands drive, an arm's
        # shoulder under x and y velocities, moves whenever any of them is away from 0)
        idle = rest[:, cands].all(axis=1) if cands else np.zeros(0, dtype=bool)
        if idle.sum() < least or (1.0 - changed[idle, j]).sum() < REST_RATE * idle.sum():
            out[c] = ()
            continue
        out[c] = tuple(action_cols[k] for k in sorted(cands, key=lambda k: -n_alone[k]))[
            :MAX_PARTNERS
        ]
    return out


def build_workspace(
    path: Path,
    layout: Layout,
    hashes: Sequence[tuple[int, str | None, int | None, int | None]],
    threads: int | None = None,
) -> Scales:
    """Create the workspace file at ``path`` (views, profile, hashes), close it; its scales."""
    con = duckdb.connect(str(path))
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.execute(frames_view_sql(layout))
        scales = dataset_scales(con, layout)
        con.execute(
            f"CREATE OR REPLACE TABLE episode_profile AS {profile_select_sql(layout, scales)} "
            "ORDER BY episode_index"
        )
        (unordered,) = con.execute(
            "SELECT coalesce(sum(n_unordered), 0) FROM episode_profile"
        ).fetchall()[0]
        if unordered:
            # Parquet not in canonical order: sort per episode instead (slower, exact)
            con.execute(
                "CREATE OR REPLACE TABLE episode_profile AS "
                f"{profile_select_sql(layout, scales, streaming=False)} ORDER BY episode_index"
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
    return scales
