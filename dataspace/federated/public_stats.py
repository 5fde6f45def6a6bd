"""Public normalisation statistics: given by the consumer, never released by a site.

The DP statistics of :mod:`.normalize` cost the holders privacy (20 % of the
contract's epsilon, ``dp.STATS_SHARE``) and, with the episode as privacy unit and tens of episodes
a site, their noise swamps the data (bench/RESULTS.md, "fl_utility with the
episode as privacy unit"). The standard remedy in DP ML is normalisation from
*public* information: constants that reveal nothing about any holder's data.
The consumer knows its own robot and has its own episodes, so it computes the
means and scales of ``observation.state`` and ``action`` exactly from its own
data (or writes them in a JSON file) and the run sends them to the sites:

* consumer side: :func:`load_public_stats` (a dataset folder or file in any
  format the connectors read, or a JSON file ``{"state_mean", "state_std",
  "action_mean", "action_std"}``), :func:`stats_from_episodes`, :func:`check_stats`;
* the run's spec says so (run config ``public-stats``; every message's config
  has ``stats = "public"`` and the four lists, :func:`to_config`), and the
  sites skip the statistics release entirely: no ``query.stats`` message, no DP
  bound, and the privacy plan (:func:`plan_without_stats`) gives the whole
  epsilon to DP-SGD and the evaluation share. The plan is still a pure function
  of what the site knows: the contract, its settings and metadata, and the
  run's stats source as its spec states;
* site side, before anything is charged: :func:`from_config` checks the
  numbers (finite, the dataset's dimensions, positive scales; else
  :class:`RefusedPublicStatsError`) and :func:`fix_stats_source` records the
  run's stats source in the site's DuckDB, so that a server cannot switch a
  run between DP and public statistics half way (the charges of the two plans
  do not compose; a switched message is refused, nothing charged). The
  ClientApp logs each such refusal as ``access.refused`` in the site's log.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from dataspace.errors import DataspaceError, RefusedError
from dataspace.federated import dp
from dataspace.federated.normalize import Stats
from dataspace.site.folder import Site

#: the stats sources a run may name (run spec ``stats``)
SOURCES = ("dp", "public")
#: JSON / config field names, in Stats order
FIELDS = ("state_mean", "state_std", "action_mean", "action_std")
#: scale floor of statistics computed from episodes (a constant feature stays finite)
MIN_STD = 1e-3


class PublicStatsError(DataspaceError):
    """Public statistics that are malformed (not finite, wrong dimensions, scale <= 0)."""


class RefusedPublicStatsError(PublicStatsError, RefusedError):
    """A site's refusal of a message whose public statistics are malformed (or whose
    stats source is unknown): a refusal like any other, logged ``access.refused`` by
    the ClientApp; nothing is charged."""


class StatsSourceError(RefusedError):
    """A message whose stats source differs from the one its run started with."""


# ------------------------------------------------------------------ consumer side


def stats_from_episodes(episodes: Iterable[Any]) -> Stats:
    """Exact means and scales of the consumer's own episodes (``dataspace.schema.Episode``).

    Streamed in float64 sums, one episode at a time; every frame weighs the
    same. Scales are floored at :data:`MIN_STD` (a joint that never moves).
    """
    n, s1, s2, a1, a2 = 0, None, None, None, None
    for e in episodes:
        st = np.asarray(e.state, dtype=np.float64)
        ac = np.asarray(e.action, dtype=np.float64)
        if s1 is None:
            s1, s2 = np.zeros(st.shape[1]), np.zeros(st.shape[1])
            a1, a2 = np.zeros(ac.shape[1]), np.zeros(ac.shape[1])
        if st.shape[1] != s1.shape[0] or ac.shape[1] != a1.shape[0]:
            raise PublicStatsError(
                f"episode {getattr(e, 'source', '?')}: state/action dims "
                f"{st.shape[1]}/{ac.shape[1]}, earlier episodes {s1.shape[0]}/{a1.shape[0]}"
            )
        n += st.shape[0]
        s1 += st.sum(0)
        s2 += (st * st).sum(0)
        a1 += ac.sum(0)
        a2 += (ac * ac).sum(0)
    if not n:
        raise PublicStatsError("no frames to compute public statistics from")

    def mean_std(t1: np.ndarray, t2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = t1 / n
        var = np.maximum(t2 / n - mean**2, 0.0) * (n / max(n - 1, 1))
        return mean.astype(np.float32), np.maximum(np.sqrt(var), MIN_STD).astype(np.float32)

    sm, ss = mean_std(s1, s2)
    am, as_ = mean_std(a1, a2)
    return Stats(state_mean=sm, state_std=ss, action_mean=am, action_std=as_)


def check_stats(
    values: Mapping[str, Any] | Stats,
    state_dim: int | None = None,
    action_dim: int | None = None,
    where: str = "public statistics",
) -> Stats:
    """``values`` as :class:`Stats` if well formed, else :class:`PublicStatsError`.

    Well formed: the four fields present, 1-D, finite, means and scales of equal
    length (``state_dim`` / ``action_dim`` when given), every scale > 0.
    """
    if isinstance(values, Stats):
        values = {f: getattr(values, f) for f in FIELDS}
    missing = [f for f in FIELDS if f not in values]
    if missing:
        raise PublicStatsError(f"{where}: missing {', '.join(missing)}")
    arrs: dict[str, np.ndarray] = {}
    for f in FIELDS:
        try:
            a = np.asarray(values[f], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise PublicStatsError(f"{where}: {f} is not a list of numbers ({e})") from e
        if a.ndim != 1 or a.size == 0:
            raise PublicStatsError(f"{where}: {f} must be a non-empty list, got shape {a.shape}")
        # finite as the float32 the sites normalise with (1e300 is finite only in float64)
        with np.errstate(over="ignore"):
            bad = np.flatnonzero(~np.isfinite(a) | ~np.isfinite(a.astype(np.float32)))
        if bad.size:
            raise PublicStatsError(f"{where}: {f}[{bad[0]}] = {a[bad[0]]} is not finite")
        arrs[f] = a
    for kind, want in (("state", state_dim), ("action", action_dim)):
        m, s = arrs[f"{kind}_mean"], arrs[f"{kind}_std"]
        if m.size != s.size:
            raise PublicStatsError(f"{where}: {kind}_mean has {m.size} values, {kind}_std {s.size}")
        if want is not None and m.size != want:
            raise PublicStatsError(f"{where}: {kind} has {m.size} dimensions, the dataset {want}")
        # > 0 as float32, and its inverse too: 1e-50 is 0 in float32, 1e-45 divides to inf
        s32 = s.astype(np.float32)
        with np.errstate(divide="ignore", over="ignore"):
            bad = np.flatnonzero((s32 <= 0) | ~np.isfinite(np.float32(1) / s32))
        if bad.size:
            raise PublicStatsError(f"{where}: {kind}_std[{bad[0]}] = {s[bad[0]]} is not > 0")
    return Stats(**{f: arrs[f].astype(np.float32) for f in FIELDS})


def load_public_stats(path: Path | str) -> Stats:
    """The consumer's statistics from a JSON file holding the four lists (:data:`FIELDS`).

    For statistics computed from a dataset of the consumer's own, the caller reads
    its episodes (``dataspace.connectors.detect.read_episodes``, as ``--validation``
    is) and passes them to :func:`stats_from_episodes`: exact, since the data is
    the consumer's.
    """
    p = Path(path)
    if not (p.is_file() and p.suffix.lower() == ".json"):
        raise PublicStatsError(f"{p}: expected a .json file with {', '.join(FIELDS)}")
    try:
        values = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise PublicStatsError(f"{p}: not JSON ({e})") from e
    if not isinstance(values, dict):
        raise PublicStatsError(f"{p}: expected an object with {', '.join(FIELDS)}")
    return check_stats(values, where=str(p))


def to_lists(stats: Stats) -> dict[str, list[float]]:
    """JSON-ready form (``history.json``, run config ``public-stats``)."""
    return {f: [float(v) for v in getattr(stats, f)] for f in FIELDS}


def to_config(stats: Stats, source: str = "public") -> dict[str, Any]:
    """The entries a message's ConfigRecord carries: a public-stats run's statistics, or
    (``source="dp"``) a DP-stats run's pooled statistics (:func:`pooled_from_config`)."""
    lists = {f"stats-{f.replace('_', '-')}": v for f, v in to_lists(stats).items()}
    return {"stats": source, **lists}


# ------------------------------------------------------------------ site side


def source_of(cfg: Mapping[str, Any]) -> str:
    """The stats source a message's config names ("dp" when absent: older servers)."""
    source = str(cfg.get("stats", "dp") or "dp")
    if source not in SOURCES:
        raise RefusedPublicStatsError(
            f"stats source {source!r}: expected one of {', '.join(SOURCES)}"
        )
    return source


def from_config(cfg: Mapping[str, Any], state_dim: int, action_dim: int) -> Stats | None:
    """The public statistics of a message (None in a DP-stats run), checked for the dataset.

    Site side: malformed numbers raise :class:`RefusedPublicStatsError` (a
    :class:`PublicStatsError` and a :class:`RefusedError`).
    """
    if source_of(cfg) != "public":
        return None
    return _checked(_lists_of(cfg), state_dim, action_dim, "the run's public statistics")


def _lists_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``stats-*`` entries of a message's config, by Stats field (absent ones left out)."""
    values = {f: cfg.get(f"stats-{f.replace('_', '-')}") for f in FIELDS}
    return {k: v for k, v in values.items() if v is not None}


def _checked(values: Mapping[str, Any], state_dim: int, action_dim: int, where: str) -> Stats:
    """:func:`check_stats` at the site: a malformed value is a refusal (nothing charged)."""
    try:
        return check_stats(values, state_dim, action_dim, where=where)
    except PublicStatsError as e:
        raise RefusedPublicStatsError(str(e)) from e


def pooled_from_config(cfg: Mapping[str, Any], state_dim: int, action_dim: int) -> Stats | None:
    """The pooled DP statistics of a DP-stats run's message, checked for the dataset;
    None when the message carries none (its statistics round, or an older server).

    After the statistics round the server adds the sites' noisy sums
    (:func:`.normalize.combine`) and sends the pooled means and scales with every
    train and evaluate message, so that every site trains in the coordinates of
    the one global model: with each site normalising by its own statistics,
    non-IID sites train in different coordinates and FedAvg averages models that
    do not agree (closed-loop success 0.02 against 0.17 with the pooled ones,
    bench/RESULTS.md, closed loop, session 7). The site cannot check that they are
    the pool of the releases, and need not: they are numbers from the server, like
    public statistics, and get the same checks (finite, the dataset's dimensions,
    positive scales; else :class:`RefusedPublicStatsError`, nothing charged).
    Normalisation comes before the per-unit clipping, so whatever they are, each
    unit still moves a release by at most its clip: DP-SGD's and the evaluation's
    guarantees hold for any normalisation the server chooses, adaptively too.
    """
    values = _lists_of(cfg) if source_of(cfg) == "dp" else {}
    if not values:
        return None
    return _checked(values, state_dim, action_dim, "the run's pooled DP statistics")


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS run_stats_source (dataset_id VARCHAR, run_id VARCHAR, "
        "source VARCHAR, PRIMARY KEY (dataset_id, run_id))"
    )


def fix_stats_source(site: Site, dataset_id: str, run_id: str, source: str) -> None:
    """Record ``run_id``'s stats source at its first message; refuse a later change.

    Durable (site DuckDB), so it holds across fresh ClientApp processes and
    resumed runs. Raises :class:`StatsSourceError` (nothing is charged then).
    """
    with site.db() as con:
        ensure_tables(con)
        row = con.execute(
            "SELECT source FROM run_stats_source WHERE dataset_id = ? AND run_id = ?",
            [dataset_id, run_id],
        ).fetchone()
        if row is None:
            con.execute(
                "INSERT INTO run_stats_source VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [dataset_id, run_id, source],
            )
            row = con.execute(
                "SELECT source FROM run_stats_source WHERE dataset_id = ? AND run_id = ?",
                [dataset_id, run_id],
            ).fetchone()
    if row[0] != source:
        raise StatsSourceError(
            f"run {run_id} on dataset {dataset_id} started with {row[0]} statistics; "
            f"a message asking for {source} statistics is refused"
        )


def plan_without_stats(
    epsilon: float,
    delta: float,
    rounds: int,
    frames: int,
    settings: dp.TrainingSettings,
    episodes: int | None = None,
) -> dp.PrivacyPlan:
    """The site's privacy plan when no statistics are released (the run's stats are public).

    :func:`dp.make_plan`'s plan with ``stats_releases = 0`` (its history's
    statistics entry then has no steps and adds nothing to the RDP curve) and
    the DP-SGD noise solved again, so that the whole ``epsilon`` goes to
    DP-SGD and the evaluation share (``eval_share``, unchanged).
    """
    base = dp.make_plan(epsilon, delta, rounds, frames, settings, episodes=episodes)
    return _without_stats(base)


@functools.lru_cache(maxsize=256)
def _without_stats(base: dp.PrivacyPlan) -> dp.PrivacyPlan:
    plan = replace(base, stats_releases=0)

    def eps(sigma: float) -> float:
        return replace(plan, noise_multiplier=sigma).epsilon_after(plan.rounds)

    target = plan.epsilon * 0.999  # as dp.make_plan: a margin below the contract
    lo, hi = 0.3, 60.0
    if eps(hi) > target:
        raise dp.PrivacyPlanError(f"epsilon {plan.epsilon:g} is too small even with noise {hi:g}")
    if eps(lo) <= target:
        return replace(plan, noise_multiplier=lo)
    while hi / lo >= 1.002:  # bisection in log space: eps(sigma) decreases with sigma
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if eps(mid) > target else (lo, mid)
    return replace(plan, noise_multiplier=hi)
