"""Custom Great Expectations expectations for robot episodes.

GE 1.24 has no SQL implementation of ``expect_column_values_to_be_increasing``
and no notion of "within a group" (an episode), so every per-episode check is a
custom expectation here. They are :class:`UnexpectedRowsExpectation` subclasses
(GE's own mechanism for SQL-defined expectations) with two changes:

* the query is built from typed parameters by ``build(...)`` and returns
  ``(episode_index, detail)`` rows, one per failing episode;
* the rows are fetched *all* through our own metric
  (``dataspace.episode_rows.table``): GE's ``unexpected_rows_query.table``
  stops at ``MAX_RESULT_RECORDS`` (200), and every failing episode must become
  a flag (quality/flags.py), not only the first 200.

The queries run over ``{batch}``: the ``episode_profile`` table of the check's
workspace (quality/profile.py) or its ``episode_hashes`` table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.execution_engine import SqlAlchemyExecutionEngine
from great_expectations.expectations.core.unexpected_rows_expectation import (
    UnexpectedRowsExpectation,
)
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.query_metrics.query_table.query_table import (
    QueryTable,
)


class EpisodeRowsQueryTable(QueryTable):
    """Like GE's ``unexpected_rows_query.table`` but returns every row, not 200."""

    metric_name = "dataspace_episode_rows.table"
    value_keys = ("unexpected_rows_query",)

    @metric_value(engine=SqlAlchemyExecutionEngine)
    def _sqlalchemy(
        cls,
        execution_engine: SqlAlchemyExecutionEngine,
        metric_domain_kwargs: dict,
        metric_value_kwargs: dict,
        metrics: dict[str, Any],
        runtime_configuration: dict,
    ) -> list[dict]:
        batch_selectable, _, _ = execution_engine.get_compute_domain(
            metric_domain_kwargs, domain_type=MetricDomainTypes.TABLE
        )
        query = metric_value_kwargs["unexpected_rows_query"]
        sub = cls._get_substituted_batch_subquery_from_query_and_batch_selectable(
            query=query, batch_selectable=batch_selectable, execution_engine=execution_engine
        )
        return cls._get_sqlalchemy_records_from_substituted_batch_subquery(
            substituted_batch_subquery=sub, execution_engine=execution_engine, fetch_all=True
        )


class EpisodeRowsExpectation(UnexpectedRowsExpectation):
    """Base: passes when no episode fails; lists every failing episode.

    Subclasses set ``check`` (the flag name stored in ``episode_flags``) and
    implement ``build``. The result always carries
    ``result.details.unexpected_rows`` = ``[{"episode_index", "detail"}, ...]``.
    """

    check: ClassVar[str] = ""
    #: the quality dimension this check feeds (quality/dimensions.py)
    dimension: ClassVar[str] = ""

    metric_dependencies: ClassVar[tuple[str, ...]] = (
        "dataspace_episode_rows.table",
        "unexpected_rows_query.row_count",
    )

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict:
        rows = metrics["dataspace_episode_rows.table"]
        return {
            "success": len(rows) == 0,
            "result": {"observed_value": len(rows), "details": {"unexpected_rows": rows}},
        }


def _detail(*parts: str) -> str:
    """SQL for a detail string (concat_ws skips NULL parts)."""
    return "concat_ws(' ', " + ", ".join(parts) + ")"


class ExpectEpisodeValuesFinite(EpisodeRowsExpectation):
    """No null, NaN or infinite value in any frame column of the episode."""

    check: ClassVar[str] = "nonfinite"
    dimension: ClassVar[str] = "completeness"

    @classmethod
    def build(cls) -> ExpectEpisodeValuesFinite:
        q = (
            "SELECT episode_index, "
            + _detail("n_nonfinite || ' frames with NaN/inf'", "n_null || ' with nulls'")
            + " AS detail FROM {batch} WHERE n_nonfinite > 0 OR n_null > 0"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeTimestampsStrictlyIncreasing(EpisodeRowsExpectation):
    """Timestamps strictly increase with frame_index within each episode.

    Catches clocks that reset to 0 or step back inside an episode (LeRobot's
    ``check_timestamps_sync`` failures); frame order is ``frame_index``.
    """

    check: ClassVar[str] = "timestamps_increasing"
    dimension: ClassVar[str] = "consistency"

    @classmethod
    def build(cls) -> ExpectEpisodeTimestampsStrictlyIncreasing:
        q = (
            "SELECT episode_index, n_nonincreasing || ' non-increasing timestamps' AS detail "
            "FROM {batch} WHERE n_nonincreasing > 0"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeFrameIndexContiguous(EpisodeRowsExpectation):
    """frame_index runs 0, 1, 2, ... without gaps or repeats (LeRobot validate_episode)."""

    check: ClassVar[str] = "frame_index"
    dimension: ClassVar[str] = "conformity"

    @classmethod
    def build(cls) -> ExpectEpisodeFrameIndexContiguous:
        q = (
            "SELECT episode_index, n_index_gaps || ' frame_index steps other than 1' AS detail "
            "FROM {batch} WHERE n_index_gaps > 0"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeFrameIntervalRegular(EpisodeRowsExpectation):
    """Frame intervals match 1/fps: no dropped frames, jitter within tolerance.

    An interval over 1.5 periods is a dropped frame; among the others the
    largest deviation from 1/fps must stay within ``tolerance_s`` (LeRobot v2
    used 1e-4 s).
    """

    check: ClassVar[str] = "frame_interval"
    dimension: ClassVar[str] = "timeliness"

    @classmethod
    def build(cls, tolerance_s: float) -> ExpectEpisodeFrameIntervalRegular:
        q = (
            "SELECT episode_index, "
            + _detail(
                "CASE WHEN n_dropped > 0 THEN n_dropped || ' dropped-frame gaps' END",
                f"CASE WHEN max_jitter_s > {tolerance_s!r} THEN 'jitter ' || "
                "round(max_jitter_s * 1000, 3) || ' ms' END",
            )
            + f" AS detail FROM {{batch}} WHERE n_dropped > 0 OR max_jitter_s > {tolerance_s!r}"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeLengthBetween(EpisodeRowsExpectation):
    """Episode length (frames) within [min_frames, max_frames]."""

    check: ClassVar[str] = "episode_length"
    dimension: ClassVar[str] = "consistency"

    @classmethod
    def build(cls, min_frames: float, max_frames: float) -> ExpectEpisodeLengthBetween:
        q = (
            f"SELECT episode_index, n_frames || ' frames, outside [{int(min_frames)}, "
            f"{int(max_frames)}]' AS detail FROM {{batch}} "
            f"WHERE n_frames < {min_frames!r} OR n_frames > {max_frames!r}"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeJointsWithinLimits(EpisodeRowsExpectation):
    """Every finite joint value (state and action) inside its limits.

    Limits are robust ones from quantiles of the per-episode extremes
    (quality/suite.py, ``robust_limits``), narrowed by the ranges the dataset
    declares in its catalog (``suite.declared_ranges``), never widened by them.
    """

    check: ClassVar[str] = "out_of_range"
    dimension: ClassVar[str] = "accuracy"

    @classmethod
    def build(cls, limits: Mapping[str, tuple[float, float]]) -> ExpectEpisodeJointsWithinLimits:
        conds, names = [], []
        for col, (lo, hi) in limits.items():
            conds.append(f"min_{col} < {lo!r} OR max_{col} > {hi!r}")
            names.append(f"CASE WHEN min_{col} < {lo!r} OR max_{col} > {hi!r} THEN '{col}' END")
        where = " OR ".join(f"({c})" for c in conds) or "false"
        q = (
            "SELECT episode_index, 'outside limits: ' || "
            + _detail(*names or ["NULL"])
            + f" AS detail FROM {{batch}} WHERE {where}"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeNoFrozenJoint(EpisodeRowsExpectation):
    """No joint that moves with its partners, or never rests, stays put for long.

    Over windows of about one second (profile.Scales.window): ``pmove_s_j``
    counts those in which one of joint j's partners (the joints it normally
    moves with, learnt from the dataset) travels more than 2 % of its usual
    range, ``frozen_s_j`` those of them in which j kept exactly its value;
    ``still_s_j`` counts the windows of all ``n_windows`` in which j kept
    exactly its value. An episode fails when, for a joint in ``partners``
    (joints that move when their partners do), its frozen share of partner
    motion reaches the joint's threshold (at least 60 %), or, for a joint in
    ``still`` (channels that are never constant over a window: noise, fast
    joints), its still share does; once there are ``min_windows`` windows; or, for a
    joint in ``commanded`` (a joint some action drives: a velocity, torque or
    on/off command), when it stays put in at least that many windows that start
    with its command away from 0 (``cfrozen_s_j``): an absolute duration, since a
    drive moves when commanded and a joint that sticks late leaves a small share;
    or, for a joint in ``off_rest`` (a channel that rests only at one value and is
    otherwise never constant over a window), when it keeps its value in at least
    its threshold's share of the ``n_off_s_j`` windows that end off that value.
    Holding still is no partner motion, so idle phases do not count on the
    first reference; a slow joint changes its encoder count within a second,
    so slow motions do not either.
    """

    check: ClassVar[str] = "frozen_joint"
    dimension: ClassVar[str] = "accuracy"

    @classmethod
    def build(
        cls,
        partners: Mapping[str, float],
        still: Mapping[str, float],
        min_windows: int,
        commanded: Mapping[str, float] | None = None,
        off_rest: Mapping[str, float] | None = None,
    ) -> ExpectEpisodeNoFrozenJoint:
        least = int(min_windows)
        by_joint: dict[str, list[str]] = {}
        for c, t in partners.items():
            by_joint.setdefault(c, []).append(
                f"(pmove_{c} >= {least} AND frozen_{c} >= {t!r} * pmove_{c})"
            )
        for c, t in still.items():
            by_joint.setdefault(c, []).append(
                f"(n_windows >= {least} AND still_{c} >= {t!r} * n_windows)"
            )
        for c, t in (commanded or {}).items():
            by_joint.setdefault(c, []).append(f"(cfrozen_{c} >= {t!r})")
        for c, t in (off_rest or {}).items():
            by_joint.setdefault(c, []).append(
                f"(n_off_{c} >= {least} AND still_off_{c} >= {t!r} * n_off_{c})"
            )
        conds = {c: " OR ".join(x) for c, x in sorted(by_joint.items())}
        names = [f"CASE WHEN {x} THEN '{c}' END" for c, x in conds.items()]
        where = " OR ".join(f"({x})" for x in conds.values()) or "false"
        q = (
            "SELECT episode_index, 'frozen: ' || "
            + _detail(*names or ["NULL"])
            + f" AS detail FROM {{batch}} WHERE {where}"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeNoActionJump(EpisodeRowsExpectation):
    """No one-frame action excursion (out and back) above the joint's outlier threshold.

    ``spike_a_j`` (profile) is the height of the largest excursion that goes out
    and comes back at the next frame; a step (a gripper closing, a saturated or
    bang-bang command switching) is none. The threshold (suite.spike_thresholds)
    is relative to the joint's usual range and to the dataset's own excursions.
    ``excused`` lists, per joint, episodes whose every such excursion the state's
    response explains (an operator's flick moves the robot; quality/response.py),
    or that only toggle a discrete channel no state joint observes.
    """

    check: ClassVar[str] = "action_jump"
    dimension: ClassVar[str] = "accuracy"

    @classmethod
    def build(
        cls,
        thresholds: Mapping[str, float],
        excused: Mapping[str, Sequence[int]] | None = None,
    ) -> ExpectEpisodeNoActionJump:
        excused = excused or {}
        conds = []
        for c, t in thresholds.items():
            cond = f"spike_{c} > {t!r}"
            if excused.get(c):
                ids = ", ".join(str(int(e)) for e in sorted(excused[c]))
                cond += f" AND episode_index NOT IN ({ids})"
            conds.append(f"({cond})")
        names = [f"CASE WHEN {x} THEN '{c}' END" for x, c in zip(conds, thresholds, strict=True)]
        where = " OR ".join(conds) or "false"
        q = (
            "SELECT episode_index, 'action jump: ' || "
            + _detail(*names or ["NULL"])
            + f" AS detail FROM {{batch}} WHERE {where}"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeActionsNotNoise(EpisodeRowsExpectation):
    """The episode's actions follow a trajectory: roughness at most the threshold.

    Roughness (``profile.action_roughness``) is the median over action joints
    of the mean squared frame-to-frame change over twice the joint's variance
    *over the dataset* (``variance``, pooled within episodes). Measured against
    the dataset, not the episode: an episode that holds still under a little
    command jitter has a tiny variance of its own, and its jitter would look
    like noise against it (issue 18). Clean actions lie below 0.16 (the shared
    recordings below 0.01, joystick velocity commands with hand tremor highest);
    actions with noise of the action's own spread added, or shuffled across
    frames, at 0.5 and above. Such actions keep their distribution, so range
    and jump checks can miss them, yet a policy learns noise from them. The
    threshold is absolute, not fitted to the dataset, so a dataset whose every
    episode is noisy is flagged too.
    """

    check: ClassVar[str] = "action_noise"
    dimension: ClassVar[str] = "accuracy"

    @classmethod
    def build(
        cls, variance: Mapping[str, float], max_roughness: float
    ) -> ExpectEpisodeActionsNotNoise:
        terms = [f"dsq_{c} / {2.0 * v!r}" for c, v in variance.items() if v > 0]
        if not terms:
            return cls(
                unexpected_rows_query="SELECT episode_index, '' AS detail FROM {batch} WHERE false",
                description=cls.__doc__,
            )
        # list_median skips NULLs, as the median aggregate does
        rough = f"list_median([{', '.join(terms)}])"
        q = (
            f"SELECT episode_index, 'action roughness ' || round({rough}, 3) || "
            f"' > {max_roughness!r}' AS detail FROM {{batch}} "
            f"WHERE {rough} > {max_roughness!r}"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeTaskLabelled(EpisodeRowsExpectation):
    """Every frame has a task_index naming a non-empty task of the dataset."""

    check: ClassVar[str] = "missing_task"
    dimension: ClassVar[str] = "completeness"

    @classmethod
    def build(cls) -> ExpectEpisodeTaskLabelled:
        q = (
            "SELECT episode_index, n_task_missing || ' frames without a task label' AS detail "
            "FROM {batch} WHERE n_task_missing > 0"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeHashUnique(EpisodeRowsExpectation):
    """No episode repeats an earlier episode's content hash (``episodes.hash``).

    The later copy is flagged; the first occurrence is kept clean.
    """

    check: ClassVar[str] = "duplicate"
    dimension: ClassVar[str] = "consistency"

    @classmethod
    def build(cls) -> ExpectEpisodeHashUnique:
        q = (
            "SELECT b.episode_index, 'same hash as episode ' || min(a.episode_index) AS detail "
            "FROM {batch} b JOIN {batch} a ON a.hash = b.hash AND a.episode_index < "
            "b.episode_index GROUP BY b.episode_index"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectEpisodeNotNearDuplicate(EpisodeRowsExpectation):
    """No episode is a near copy of an earlier one (different hash, same content).

    Signature: frame count and the per-joint mean and standard deviation of the
    state. Two episodes are near-duplicates when their lengths differ by at
    most 1 % and every signature component differs by at most ``tolerance``
    times that component's spread across episodes. Candidate pairs come from an
    equi-join on a coarse grid of the first joint's mean, on two grids offset by
    half a cell, so the join stays near-linear in the number of episodes.
    """

    check: ClassVar[str] = "near_duplicate"
    dimension: ClassVar[str] = "consistency"

    @classmethod
    def build(
        cls, scales: Mapping[str, float], tolerance: float, hashes_table: str = "episode_hashes"
    ) -> ExpectEpisodeNotNearDuplicate:
        cols = list(scales)
        if not cols:
            return cls(
                unexpected_rows_query="SELECT episode_index, '' AS detail FROM {batch} WHERE false",
                description=cls.__doc__,
            )
        key_col, key_scale = cols[0], scales[cols[0]]
        cell = max(key_scale * tolerance * 4, 1e-12)
        conds = ["abs(a.n_frames - b.n_frames) <= 0.01 * b.n_frames"]
        for c, sc in scales.items():
            conds.append(f"abs(a.{c} - b.{c}) <= {max(sc * tolerance, 1e-12)!r}")
        grid = (
            f"SELECT episode_index, floor({key_col} / {cell!r}) AS g0, "
            f"floor({key_col} / {cell!r} + 0.5) AS g1, n_frames, {', '.join(cols)} "
            "FROM {batch}"
        )
        pair = " AND ".join(conds)
        q = (
            f"WITH p AS ({grid}), c AS ("
            f"SELECT a.episode_index AS ea, b.episode_index AS eb FROM p a JOIN p b "
            f"ON a.g0 = b.g0 AND a.episode_index < b.episode_index WHERE {pair} UNION "
            f"SELECT a.episode_index, b.episode_index FROM p a JOIN p b "
            f"ON a.g1 = b.g1 AND a.episode_index < b.episode_index WHERE {pair}) "
            f"SELECT c.eb AS episode_index, 'near copy of episode ' || min(c.ea) AS detail "
            f"FROM c LEFT JOIN {hashes_table} ha ON ha.episode_index = c.ea "
            f"LEFT JOIN {hashes_table} hb ON hb.episode_index = c.eb "
            f"WHERE ha.hash IS NULL OR hb.hash IS NULL OR ha.hash <> hb.hash "
            f"GROUP BY c.eb"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)


class ExpectFrameColumnTypes(UnexpectedRowsExpectation):
    """Every column of the frame view has its canonical SQL type.

    GE's ``expect_column_values_to_be_of_type`` fails with ``KeyError: 'type'``
    on duckdb-engine's column metadata (GE 1.24.1), so the dtype check reads
    ``information_schema.columns`` instead; the unexpected rows are the columns
    whose type differs (or that are missing).
    """

    @classmethod
    def build(cls, table: str, types: Mapping[str, str]) -> ExpectFrameColumnTypes:
        values = ", ".join(f"('{c}', '{t}')" for c, t in types.items())
        q = (
            "WITH b AS (SELECT * FROM {batch} LIMIT 0), "
            f"want(column_name, data_type) AS (VALUES {values}), "
            "have AS (SELECT column_name, data_type FROM information_schema.columns "
            f"WHERE table_name = '{table}') "
            "SELECT w.column_name, w.data_type AS expected, h.data_type AS actual "
            "FROM want w LEFT JOIN have h USING (column_name) "
            "WHERE h.data_type IS DISTINCT FROM w.data_type"
        )
        return cls(unexpected_rows_query=q, description=cls.__doc__)
