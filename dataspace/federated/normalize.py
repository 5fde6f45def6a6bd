"""Normalisation statistics with differential privacy (issue 5: "never exact").

A model needs each state and action dimension's mean and scale. Computed
exactly they would leak (a mean over few frames reveals them), so each site
releases only noisy sums, with the Gaussian mechanism:

* the clip bound ``B``: by default chosen by the site with DP (:func:`dp_bound`:
  a noisy histogram of each frame's largest ``|coordinate|`` over powers of two),
  because robot data comes in every unit (the shared G1 recording lies within
  +-1.4 rad, the SO-101 within +-100, the bimanual arms within +-250). A fixed
  bound that is loose for the data makes the noise floor of the variance larger
  than the data's own spread, and the policy then learns only the mean action
  (measured: bench/RESULTS.md, value_detect). A holder may fix it instead
  (``stats_bound`` in ``site.toml [training]``);
* every coordinate of a frame's ``[state, action]`` vector is clipped to ``[-B, B]``;
* released: ``sum x + N(0, (z B sqrt(D))^2)``, ``sum x^2 + N(0, (z B^2 sqrt(D))^2)``
  and ``count + N(0, z^2)``, i.e. three Gaussian mechanisms of noise multiplier
  ``z``, each with its own L2 sensitivity (one frame added or removed).

The privacy unit is the site's (:mod:`.dp`, ``privacy_unit``). Per frame, as
above. Per episode, one episode moves each release by at most as much as one
frame does above: the bound's histogram counts each episode once (in the bin of
its largest ``|coordinate|`` over all its frames), and the sums add, per
episode, the mean of its clipped frames ``mean_t x_t`` and ``mean_t x_t^2`` (so
the same noise, the count is in episodes, and :func:`combine` weighs episodes
equally). The releases (three,
four with the bound's histogram) are entered in the run's accountant history as
``(z, 1.0, n)`` (sample rate 1, n steps) and charged with round 1, inside the
contract's budget; ``z`` is set so that they cost about ``stats_share`` (5 %) of
the run's epsilon. The server adds the sites' noisy sums; nobody sees a site's
exact statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from dataspace.federated.noise import NoiseSource

#: floor for a scale, in units of the clip bound (a constant feature stays finite)
MIN_STD_FRACTION = 1e-3

#: the bounds :func:`dp_bound` chooses from: 2**k for k in this range (1/256 .. 65536)
BOUND_EXPONENTS = range(-8, 17)

#: how many standard deviations of the histogram's noise a count must exceed to be data
BOUND_SIGMAS = 5.0


@dataclass(frozen=True)
class NoisySums:
    """One site's released statistics over D = S + A coordinates."""

    count: float
    sum: np.ndarray  # [D]
    sumsq: np.ndarray  # [D]
    bound: float
    noise_multiplier: float

    def to_lists(self) -> dict[str, list[float] | float]:
        return {
            "count": float(self.count),
            "sum": [float(v) for v in self.sum],
            "sumsq": [float(v) for v in self.sumsq],
            "bound": float(self.bound),
            "noise": float(self.noise_multiplier),
        }


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


def dp_bound(
    state: torch.Tensor,
    action: torch.Tensor,
    noise_multiplier: float,
    rng: NoiseSource,
    episode: torch.Tensor | None = None,
) -> float:
    """A power-of-two clip bound for :func:`dp_sums`, chosen with the Gaussian mechanism.

    With ``episode`` (each frame's episode index, frames grouped by episode)
    the unit is an episode: each falls in the bin of its largest ``|x|`` over
    all its frames (one count per episode, same sensitivity 1).

    Each frame falls in one bin ``k`` of :data:`BOUND_EXPONENTS`, the smallest
    with ``max |x| <= 2**k`` (values past the top land in the top bin), so adding or
    removing a frame moves one count by one: L2 sensitivity 1, noise ``N(0, z^2)``
    per bin. A bin holds frames when its noisy count exceeds :data:`BOUND_SIGMAS`
    standard deviations of the noise (a bin of noise alone does so with
    probability 3e-7). Reading those bins from the top down, the bound is the first
    one at which they hold more than 1 % of the noisy total, so at most about 1 %
    of the frames are clipped, and a few glitched frames do not set the scale.
    When no bin stands out (a tiny site, a tiny budget) the fullest noisy bin is
    taken. The choice is post-processing of the noisy histogram (no further
    privacy cost); the bound is released with the sums.
    """
    lo, hi = BOUND_EXPONENTS.start, BOUND_EXPONENTS.stop - 1
    bins = len(BOUND_EXPONENTS)
    peak = torch.cat([state, action], dim=1).double().abs().amax(dim=1)
    if episode is not None:
        _, counts = torch.unique_consecutive(episode, return_counts=True)
        peak = torch.stack([p.max() for p in peak.split(counts.tolist())])
    k = torch.ceil(torch.log2(peak.clamp(min=2.0**lo, max=2.0**hi))).long() - lo
    noise = rng.normal((bins,), dtype=torch.float64)
    counts = (torch.bincount(k, minlength=bins).double() + noise_multiplier * noise).tolist()
    holds = [c > BOUND_SIGMAS * noise_multiplier for c in counts]
    tail = 0.01 * sum(c for c, h in zip(counts, holds, strict=True) if h)
    above = 0.0
    for i in range(bins - 1, -1, -1):
        if holds[i]:
            above += counts[i]
            if above > tail:
                return 2.0 ** (lo + i)
    return 2.0 ** (lo + max(range(bins), key=counts.__getitem__))


def dp_sums(
    state: torch.Tensor,
    action: torch.Tensor,
    bound: float,
    noise_multiplier: float,
    rng: NoiseSource,
    episode: torch.Tensor | None = None,
) -> NoisySums:
    """The Gaussian-mechanism release of clipped sums (module docstring).

    With ``episode`` each episode adds the mean of its clipped frames (and of
    their squares) and counts once: per-episode sensitivities as per frame.
    """
    v = torch.cat([state, action], dim=1).double().clamp(-bound, bound)
    sq = v * v
    if episode is not None:
        v, sq = per_episode_mean(v, episode), per_episode_mean(sq, episode)
    d = v.shape[1]
    sd_sum = noise_multiplier * bound * math.sqrt(d)
    sd_sq = noise_multiplier * bound * bound * math.sqrt(d)
    noise = rng.normal((2 * d + 1,), dtype=torch.float64)
    return NoisySums(
        count=float(v.shape[0] + noise_multiplier * noise[0]),
        sum=(v.sum(0) + sd_sum * noise[1 : d + 1]).numpy(),
        sumsq=(sq.sum(0) + sd_sq * noise[d + 1 :]).numpy(),
        bound=bound,
        noise_multiplier=noise_multiplier,
    )


def combine(parts: list[NoisySums], state_dim: int) -> Stats:
    """Pool the sites' noisy sums into means and scales.

    A variance the noise drove below its own noise level is raised to that
    level: with few frames the scale is then too large, never zero or negative.
    """
    count = max(sum(p.count for p in parts), 1.0)
    s = sum(p.sum for p in parts)
    sq = sum(p.sumsq for p in parts)
    mean = s / count
    var = sq / count - mean**2
    d = mean.shape[0]
    noise_level = (
        math.sqrt(sum((p.noise_multiplier * p.bound**2 * math.sqrt(d)) ** 2 for p in parts)) / count
    )
    bound = max(p.bound for p in parts)
    var = np.maximum(var, max(noise_level, (MIN_STD_FRACTION * bound) ** 2))
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
