"""Per-dataset contribution to a federated run: GTG-Shapley over the rounds' updates.

Method: Guided Truncation Gradient Shapley (Liu et al., "GTG-Shapley: Efficient
and Accurate Participant Contribution Evaluation in Federated Learning", ACM
TIST 2022). The server already holds, for each round r, the global model
theta_r and every site's update u_{r,i}. The utility of a coalition S in round
r is the drop in the server's validation loss when only S's updates are
aggregated (FedAvg weights renormalised over S)::

    v_r(S) = loss(theta_r) - loss(theta_r + sum_{i in S} w_i u_{r,i} / sum_{i in S} w_i)

and a site's contribution is the sum over rounds of its Shapley value of v_r.
Why this and not leave-one-out or retraining Monte Carlo Shapley: it
*reconstructs* coalition models from updates the server already has, so it
needs no extra training and no extra round with the sites (no extra privacy
cost: the updates are the DP-noised ones that were released anyway), and unlike
leave-one-out it splits credit fairly between sites with redundant data.
With n <= 8 sites every coalition is evaluated (2^n losses per round, exact);
beyond that, permutations are sampled with GTG's within-round truncation
(stop a permutation once the remaining marginal gain is below ``tol`` of the
round's total) and between-round truncation (skip a round whose total utility
is below ``tol`` of the first round's).

What the number means: the expected reduction of the server's validation
loss that the site's data brought, averaged over the orders in which sites
could have joined. Positive helped, negative hurt (e.g. mislabelled or shuffled
actions). The suggested revenue split gives each site its positive part's
share; a site with a negative contribution gets 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

EXACT_MAX_SITES = 8


def _aggregate(
    theta: np.ndarray,
    updates: Mapping[Hashable, np.ndarray],
    weights: Mapping[Hashable, float],
    coalition: Sequence[Hashable],
) -> np.ndarray:
    if not coalition:
        return theta
    total = sum(float(weights[i]) for i in coalition)
    step = sum(float(weights[i]) / total * np.asarray(updates[i]) for i in coalition)
    return theta + step


def _weights_for(
    weights: Mapping[Hashable, float] | Sequence[Mapping[Hashable, float]] | None,
    r: int,
    sites: Sequence[Hashable],
) -> dict[Hashable, float]:
    if weights is None:
        return dict.fromkeys(sites, 1.0)
    w = weights[r] if isinstance(weights, Sequence) else weights
    return {s: float(w.get(s, 1.0)) for s in sites}


def round_shapley(
    theta: np.ndarray,
    updates: Mapping[Hashable, np.ndarray],
    weights: Mapping[Hashable, float],
    eval_loss: Callable[[np.ndarray], float],
    *,
    permutations: int = 50,
    tol: float = 0.01,
    rng: np.random.Generator | None = None,
) -> dict[Hashable, float]:
    """Shapley values of one round's utility v_r (module docstring)."""
    sites = list(updates)
    n = len(sites)
    base = float(eval_loss(theta))
    cache: dict[frozenset, float] = {frozenset(): 0.0}

    def v(coal: Sequence[Hashable]) -> float:
        key = frozenset(coal)
        if key not in cache:
            cache[key] = base - float(
                eval_loss(_aggregate(theta, updates, weights, sorted(coal, key=sites.index)))
            )
        return cache[key]

    phi = dict.fromkeys(sites, 0.0)
    if n == 0:
        return phi
    if n <= EXACT_MAX_SITES:
        for i in sites:
            others = [s for s in sites if s != i]
            for k in range(n):
                wk = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                for coal in itertools.combinations(others, k):
                    phi[i] += wk * (v([*coal, i]) - v(list(coal)))
        return phi
    rng = rng or np.random.default_rng(0)
    total = v(sites)
    for _ in range(permutations):
        order = list(rng.permutation(n))
        prev = 0.0
        for pos, idx in enumerate(order):
            coal = [sites[j] for j in order[: pos + 1]]
            if abs(total - prev) < tol * abs(total):
                break  # within-round truncation: the rest adds ~nothing
            cur = v(coal)
            phi[sites[idx]] += (cur - prev) / permutations
            prev = cur
    return phi


def contributions(
    round_updates: list[dict[Hashable, np.ndarray]],
    weights: Mapping[Hashable, float] | Sequence[Mapping[Hashable, float]] | None,
    global_init: np.ndarray,
    eval_loss: Callable[[np.ndarray], float],
    *,
    tol: float = 0.01,
    permutations: int = 50,
    seed: int = 0,
) -> dict[Hashable, float]:
    """GTG-Shapley contribution of each site over a run, in validation-loss units.

    ``round_updates[r][site]`` is the flat update (new - old parameters) a site
    sent in round r; ``weights`` the FedAvg weights (one mapping, or one per
    round; None = equal); ``global_init`` the flat global model before round 0.
    The global model is advanced each round by the full FedAvg aggregate, as
    the server did. Rounds whose total utility is below ``tol`` times the first
    round's are skipped (between-round truncation).
    """
    rng = np.random.default_rng(seed)
    theta = np.asarray(global_init, dtype=float).copy()
    sites: list[Hashable] = []
    for ups in round_updates:
        for s in ups:
            if s not in sites:
                sites.append(s)
    total = dict.fromkeys(sites, 0.0)
    first_gain: float | None = None
    for r, ups in enumerate(round_updates):
        present = list(ups)
        w = _weights_for(weights, r, present)
        nxt = _aggregate(theta, ups, w, present)
        gain = float(eval_loss(theta)) - float(eval_loss(nxt))
        if first_gain is None:
            first_gain = gain
        if first_gain and abs(gain) < tol * abs(first_gain) and r > 0:
            theta = nxt
            continue
        phi = round_shapley(theta, ups, w, eval_loss, permutations=permutations, tol=tol, rng=rng)
        for s, x in phi.items():
            total[s] += x
        theta = nxt
    return total


def revenue_split(contrib: Mapping[Hashable, float]) -> dict[Hashable, float]:
    """Suggested shares (sum 1): proportional to positive contributions; equal if none."""
    pos = {s: max(0.0, float(c)) for s, c in contrib.items()}
    total = sum(pos.values())
    if total <= 0:
        n = len(contrib)
        return {s: 1.0 / n for s in contrib} if n else {}
    return {s: p / total for s, p in pos.items()}
