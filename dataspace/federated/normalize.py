"""Normalisation statistics with differential privacy (issue 5: "never exact").

A model needs each state and action dimension's mean and scale. Computed
exactly they would leak (a mean over few frames reveals them), so each site
releases only noisy sums, with the Gaussian mechanism, over D = S + A
coordinates ``x_j`` of a frame's ``[state, action]`` vector:

* a clip bound ``B_j`` PER COORDINATE: by default chosen by the site with DP
  (:func:`dp_bound`: a noisy histogram per coordinate of ``|x_j|`` over powers of
  two), because robot data comes in every unit, between datasets (the shared G1
  recording lies within +-1.4 rad, the SO-101 within +-100, the bimanual arms
  within +-250) and within one frame (the reacher's joint velocities reach 16,
  its target position 0.2: bench/RESULTS.md, closed loop). One bound for every
  coordinate made the noise floor of a small coordinate's variance larger than
  its spread: the policy's input shrank the target 25-60x and it never learnt to
  reach it (success 0.00). A holder may fix the bound instead (``stats_bound`` in
  ``site.toml [training]``: that bound for every coordinate);
* each coordinate in units of its bound, ``u_j = clip(x_j / B_j, -1, 1)``;
* released: ``count + N(0, z^2)``, ``sum u_j + N(0, (z sqrt(D))^2)`` and
  ``sum u_j^2 + N(0, (z sqrt(D))^2)`` per coordinate, and (with :func:`dp_bound`)
  the D histograms, each count ``+ N(0, (z sqrt(D))^2)``: four Gaussian mechanisms
  of noise multiplier ``z``, each noised in proportion to its own L2 sensitivity.

Sensitivity (one frame added or removed; the Gaussian mechanism's noise
``sigma = z * Delta_2`` costs the same for every release, Dwork and Roth 2014,
"The Algorithmic Foundations of Differential Privacy", Thm. A.1, and Mironov
2017, "Renyi Differential Privacy", Prop. 7, which the accountant composes):
the count moves by 1 (``Delta_2 = 1``); the sum vector by ``u`` with every
``|u_j| <= 1``, so ``||u||_2 <= sqrt(D)``; the squares by ``u_j^2 in [0, 1]``,
again ``<= sqrt(D)``; the frame adds one count to ONE bin of EACH of the D
histograms, a vector of D ones: ``sqrt(D)``. The bounds ``B_j`` come from the
noisy histograms (post-processing) or from the holder (data-independent), so
dividing by them changes no sensitivity. The sums go on the wire multiplied back
by ``B_j`` (``sum clip(x_j, B_j) + N(0, (z sqrt(D) B_j)^2)``), post-processing,
so a released answer of the older format (one scalar ``B``, same units) reads
as the same bound for every coordinate.

The privacy unit is the site's (:mod:`.dp`, ``privacy_unit``). Per frame, as
above. Per episode, one episode moves each release by at most as much as one
frame does above: each histogram counts each episode once (in the bin of its
largest ``|x_j|`` over all its frames), and the sums add, per episode, the mean
of its frames' ``u`` and ``u^2`` (each coordinate still within [-1, 1] and
[0, 1]; the count is in episodes, and :func:`combine` weighs episodes equally).
The releases (three, four with the histograms) are entered in the run's
accountant history as ``(z, 1.0, n)`` (sample rate 1, n steps) and charged with
round 1, inside the contract's budget; ``z`` is set so that they cost about
``stats_share`` (20 %, :data:`.dp.STATS_SHARE`) of the run's epsilon. The server
adds the sites' noisy sums; nobody sees a site's exact statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dataspace.errors import DataspaceError

if TYPE_CHECKING:
    from dataspace.federated.noise import NoiseSource

#: floor for a scale, in units of the coordinate's clip bound (a constant feature stays finite)
MIN_STD_FRACTION = 1e-3

#: the bounds :func:`dp_bound` chooses from: 2**k for k in this range (1/256 .. 65536)
BOUND_EXPONENTS = range(-8, 17)

#: how many standard deviations of the histogram's noise a count must exceed to be data
BOUND_SIGMAS = 5.0

#: a bin just above bins of data counts as data from this many standard deviations: data
#: are contiguous over powers of two, so a thin tail (a few % of the values, below
#: BOUND_SIGMAS) is not clipped away whole; noise alone passes 3 sd in 0.13 % of
#: coordinates, and then only doubles the bound (more noise, nothing clipped)
ADJACENT_SIGMAS = 3.0

#: the largest share of a coordinate's values :func:`dp_bound` lets its bound clip
CLIPPED_SHARE = 0.01

#: the bounds a release may state (a site.toml ``stats_bound`` too): a scale computed from
#: them stays a positive float32 (their squares and fourth powers neither under- nor overflow)
BOUND_RANGE = (2.0**-20, 2.0**40)


class StatsFormatError(DataspaceError):
    """Released statistics that are not well formed (wrong width, a value that is not
    finite, a bound that is not a positive number): never combined into a model."""


def bounds_of(bound: float | Sequence[float] | np.ndarray, width: int) -> np.ndarray:
    """``bound`` as ``width`` per-coordinate bounds (a scalar is that bound for every
    coordinate: ``stats_bound`` in site.toml, or a release of the older format).

    Raises :class:`StatsFormatError` for another width, or a bound that is not a
    finite number within :data:`BOUND_RANGE`.
    """
    b = _numbers(bound, "bound") if not isinstance(bound, np.ndarray) else bound.astype(float)
    if b.ndim == 0:
        b = np.full(width, float(b))
    if b.shape != (width,):
        raise StatsFormatError(f"bound has shape {b.shape}, expected {width} coordinates")
    lo, hi = BOUND_RANGE
    bad = np.flatnonzero(~(np.isfinite(b) & (b >= lo) & (b <= hi)))
    if bad.size:
        raise StatsFormatError(f"bound[{bad[0]}] = {b[bad[0]]} is not within [{lo:g}, {hi:g}]")
    return b


def _numbers(value: Any, name: str) -> np.ndarray:
    """``value`` (a number or a flat list of numbers, as a wire or a ledger holds them) as
    float64; a string, a bool, a nested list is a :class:`StatsFormatError`."""

    def number(v: Any) -> bool:
        return isinstance(v, int | float | np.floating | np.integer) and not isinstance(v, bool)

    if number(value):
        return np.asarray(float(value))
    if isinstance(value, list | tuple) and all(number(v) for v in value):
        return np.asarray([float(v) for v in value], dtype=np.float64)
    raise StatsFormatError(f"{name} is not a number or a list of numbers")


@dataclass(frozen=True)
class NoisySums:
    """One site's released statistics over D = S + A coordinates, in data units."""

    count: float
    sum: np.ndarray  # [D]
    sumsq: np.ndarray  # [D]
    bound: np.ndarray  # [D]: each coordinate's clip bound B_j
    noise_multiplier: float

    def to_lists(self) -> dict[str, list[float] | float]:
        return {
            "count": float(self.count),
            "sum": [float(v) for v in self.sum],
            "sumsq": [float(v) for v in self.sumsq],
            "bound": [float(v) for v in self.bound],
            "noise": float(self.noise_multiplier),
        }

    @classmethod
    def from_lists(cls, values: Mapping[str, Any], width: int) -> NoisySums:
        """A release read back (a site's reply, a ledger entry) for ``width`` coordinates.

        Checked, never trusted: ``sum`` and ``sumsq`` exactly ``width`` finite
        numbers, ``bound`` ``width`` of them (or one, the older format: the same
        bound for every coordinate), ``count`` finite and ``noise`` finite and
        >= 0. Anything else raises :class:`StatsFormatError`.
        """
        missing = [k for k in ("count", "sum", "sumsq", "bound", "noise") if k not in values]
        if missing:
            raise StatsFormatError(f"statistics without {', '.join(missing)}")
        count, noise = _numbers(values["count"], "count"), _numbers(values["noise"], "noise")
        if count.ndim or noise.ndim:
            raise StatsFormatError("count and noise must be single numbers")
        count, noise = float(count), float(noise)
        s, sq = _numbers(values["sum"], "sum"), _numbers(values["sumsq"], "sumsq")
        bound = values["bound"]
        if not (math.isfinite(count) and math.isfinite(noise) and noise >= 0):
            raise StatsFormatError(f"count {count} or noise {noise} is not a finite number")
        for name, v in (("sum", s), ("sumsq", sq)):
            if v.shape != (width,):
                raise StatsFormatError(f"{name} has shape {v.shape}, expected ({width},)")
            if not np.isfinite(v).all():
                raise StatsFormatError(f"{name} holds values that are not finite")
        return cls(count, s, sq, bounds_of(bound, width), noise)


@dataclass(frozen=True)
class Stats:
    """Means and scales of state and action (what a :class:`Policy`'s buffers hold)."""

    state_mean: np.ndarray
    state_std: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray


def per_episode_mean(values: torch.Tensor, episode: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ([N, ...]) within each run of equal ``episode`` ([N]): [E, ...]."""
    _, inverse, counts = torch.unique_consecutive(episode, return_inverse=True, return_counts=True)
    sums = torch.zeros((counts.shape[0], *values.shape[1:]), dtype=values.dtype)
    sums.index_add_(0, inverse, values)
    return sums / counts.to(values.dtype).view(-1, *([1] * (values.dim() - 1)))


def _choose_bin(counts: list[float], sd: float) -> int | None:
    """The bin index of the "at most ~1 % clipped" rule (:func:`dp_bound`) over noisy
    ``counts`` of noise ``sd``, or None when no count stands out of the noise."""
    holds = [c > BOUND_SIGMAS * sd for c in counts]
    if not any(holds):
        return None
    for i in range(1, len(counts)):  # the tail just above data: data too, if above 3 sd
        holds[i] = holds[i] or (holds[i - 1] and counts[i] > ADJACENT_SIGMAS * sd)
    tail = CLIPPED_SHARE * sum(c for c, h in zip(counts, holds, strict=True) if h)
    above = 0.0
    for i in range(len(counts) - 1, -1, -1):
        if holds[i]:
            above += counts[i]
            if above > tail:
                return i
    return None  # not reached: the holding counts are positive and sum past the tail


def bound_histograms(
    state: torch.Tensor, action: torch.Tensor, episode: torch.Tensor | None = None
) -> torch.Tensor:
    """The exact counts :func:`dp_bound` noises: [D, bins], row ``j`` the histogram of
    ``|x_j|`` (per frame, or per episode its largest) over :data:`BOUND_EXPONENTS`.
    Every unit adds exactly one count to every row (L2 sensitivity ``sqrt(D)``)."""
    lo, hi = BOUND_EXPONENTS.start, BOUND_EXPONENTS.stop - 1
    peak = torch.cat([state, action], dim=1).double().abs()  # [N, D]
    if episode is not None:
        _, counts = torch.unique_consecutive(episode, return_counts=True)
        peak = torch.stack([p.amax(0) for p in peak.split(counts.tolist())])  # [E, D]
    # NaN (a corrupt frame) falls in the top bin, as a value past the top does
    peak = torch.nan_to_num(peak, nan=2.0**hi)
    k = torch.ceil(torch.log2(peak.clamp(min=2.0**lo, max=2.0**hi))).long() - lo
    hist = torch.zeros((peak.shape[1], len(BOUND_EXPONENTS)), dtype=torch.float64)
    hist.scatter_add_(1, k.T, torch.ones_like(k.T, dtype=torch.float64))
    return hist


def dp_bound(
    state: torch.Tensor,
    action: torch.Tensor,
    noise_multiplier: float,
    rng: NoiseSource,
    episode: torch.Tensor | None = None,
) -> np.ndarray:
    """Power-of-two clip bounds, one per coordinate, chosen with the Gaussian mechanism.

    For each coordinate ``j`` of D, each frame falls in one bin ``k`` of
    :data:`BOUND_EXPONENTS`, the smallest with ``|x_j| <= 2**k`` (values past the
    top land in the top bin). The D histograms are one release: a frame adds one
    count to one bin of each, so adding or removing it moves the concatenated
    counts by a vector of D ones, L2 sensitivity ``sqrt(D)``, and each bin gets
    noise ``N(0, (z sqrt(D))^2)`` (module docstring). With ``episode`` (each
    frame's episode index, frames grouped by episode) the unit is an episode: it
    falls, per coordinate, in the bin of its largest ``|x_j|`` over all its frames
    (one count per histogram, the same sensitivity).

    Per coordinate, a bin holds values when its noisy count exceeds
    :data:`BOUND_SIGMAS` standard deviations of the noise (a bin of noise alone does
    so with probability 3e-7), or :data:`ADJACENT_SIGMAS` when the bin just below
    holds values (a thin upper tail of the data, which the sqrt(D) noise would
    otherwise hide, clipping all of it). Reading those bins from the top down, the bound is
    the first one at which they hold more than :data:`CLIPPED_SHARE` (1 %) of the
    coordinate's noisy total, so at most about 1 % of its values are clipped, and a
    few glitched frames do not set its scale. A coordinate whose histogram has no
    bin that stands out (a tiny site, a tiny budget) takes the same rule over the
    sum of the D histograms (noise ``z D`` per bin, D times the counts), and when
    nothing stands out there either, the fullest bin of that sum. Every choice is
    post-processing of the noisy histograms (no further privacy cost); the bounds
    are released with the sums.
    """
    lo, bins = BOUND_EXPONENTS.start, len(BOUND_EXPONENTS)
    hist = bound_histograms(state, action, episode)
    d = hist.shape[0]
    sd = noise_multiplier * math.sqrt(d)
    noisy = hist + sd * rng.normal((d, bins), dtype=torch.float64)
    pooled = noisy.sum(0).tolist()  # noise N(0, (z D)^2) a bin
    at = _choose_bin(pooled, sd * math.sqrt(d))
    if at is None:
        at = max(range(bins), key=pooled.__getitem__)
    out = np.empty(d)
    for j in range(d):
        i = _choose_bin(noisy[j].tolist(), sd)
        out[j] = 2.0 ** (lo + (at if i is None else i))
    return out


def dp_sums(
    state: torch.Tensor,
    action: torch.Tensor,
    bound: float | Sequence[float] | np.ndarray,
    noise_multiplier: float,
    rng: NoiseSource,
    episode: torch.Tensor | None = None,
) -> NoisySums:
    """The Gaussian-mechanism release of clipped sums (module docstring).

    ``bound``: one per coordinate (:func:`dp_bound`), or a scalar for all. Each
    coordinate is summed in units of its bound, clipped to [-1, 1] (and its
    square), noised with ``N(0, (z sqrt(D))^2)``, then multiplied back by the
    bound. With ``episode`` each episode adds the mean of its clipped frames (and
    of their squares) and counts once: per-episode sensitivities as per frame.
    """
    x = torch.cat([state, action], dim=1).double()
    d = x.shape[1]
    b = bounds_of(bound, d)
    bt = torch.from_numpy(b)
    u = (x / bt).clamp(-1.0, 1.0)
    sq = u * u
    if episode is not None:
        u, sq = per_episode_mean(u, episode), per_episode_mean(sq, episode)
    sd = noise_multiplier * math.sqrt(d)
    noise = rng.normal((2 * d + 1,), dtype=torch.float64)
    return NoisySums(
        count=float(u.shape[0] + noise_multiplier * noise[0]),
        sum=((u.sum(0) + sd * noise[1 : d + 1]) * bt).numpy(),
        sumsq=((sq.sum(0) + sd * noise[d + 1 :]) * bt * bt).numpy(),
        bound=b,
        noise_multiplier=noise_multiplier,
    )


def combine(parts: list[NoisySums], state_dim: int) -> Stats:
    """Pool the sites' noisy sums into means and scales, per coordinate.

    A variance the noise drove below its own noise level (the standard deviation
    of the pooled noise of ``sum x_j^2``, over the count: ``sqrt(sum_sites (z
    sqrt(D) B_j^2)^2) / count``) is raised to that level: with few frames the
    scale is then too large, never zero or negative. Each coordinate's floor is
    in its own bound's units, so a coordinate of scale 0.05 keeps its scale next
    to one of scale 16.
    """
    if not parts:
        raise StatsFormatError("no statistics to combine")
    d = parts[0].sum.shape[0]
    if any(p.sum.shape != (d,) or p.sumsq.shape != (d,) or p.bound.shape != (d,) for p in parts):
        raise StatsFormatError("the sites' statistics have different widths")
    if not 0 <= state_dim <= d:
        raise StatsFormatError(f"state width {state_dim} is not within the {d} coordinates")
    count = max(sum(p.count for p in parts), 1.0)
    s = sum(p.sum for p in parts)
    sq = sum(p.sumsq for p in parts)
    mean = s / count
    var = sq / count - mean**2
    noise_level = (
        np.sqrt(sum((p.noise_multiplier * math.sqrt(d) * p.bound**2) ** 2 for p in parts)) / count
    )
    bound = np.max([p.bound for p in parts], axis=0)
    var = np.maximum(var, np.maximum(noise_level, (MIN_STD_FRACTION * bound) ** 2))
    std = np.sqrt(var)
    return Stats(
        state_mean=mean[:state_dim].astype(np.float32),
        state_std=std[:state_dim].astype(np.float32),
        action_mean=mean[state_dim:].astype(np.float32),
        action_std=std[state_dim:].astype(np.float32),
    )


def exact_stats(state: torch.Tensor, action: torch.Tensor) -> Stats:
    """Exact statistics: ONLY for non-private baselines in benchmarks, never at a site."""
    s = state.double()
    a = action.double()
    return Stats(
        state_mean=s.mean(0).float().numpy(),
        state_std=s.std(0).clamp_min(1e-3).float().numpy(),
        action_mean=a.mean(0).float().numpy(),
        action_std=a.std(0).clamp_min(1e-3).float().numpy(),
    )


def apply_stats(policy: torch.nn.Module, stats: Stats) -> None:
    """Write ``stats`` into a policy's normalisation buffers."""
    with torch.no_grad():
        policy.state_mean.copy_(torch.from_numpy(stats.state_mean))
        policy.state_std.copy_(torch.from_numpy(stats.state_std))
        policy.action_mean.copy_(torch.from_numpy(stats.action_mean))
        policy.action_std.copy_(torch.from_numpy(stats.action_std))


def normalised(
    policy: torch.nn.Module, state: torch.Tensor, action: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames in the policy's normalised units."""
    return (
        (state - policy.state_mean) / policy.state_std,
        (action - policy.action_mean) / policy.action_std,
    )
