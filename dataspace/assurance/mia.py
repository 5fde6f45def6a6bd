"""Membership inference scores, AUC and the one-run epsilon lower bound.

"Privacy auditing with one (1) training run" (Steinke, Nasr, Jagielski, NeurIPS
2023): ``m`` canaries are each included in training independently with
probability 1/2; the attacker scores every canary, guesses "in" for the ``k+``
highest scores and "out" for the ``k-`` lowest, and abstains on the rest. If
training is epsilon-DP, the number of correct guesses among ``r = k+ + k-`` is
stochastically dominated by ``Binomial(r, e^eps / (1 + e^eps))`` (their
Theorem 3.1 with delta = 0). The empirical lower bound at confidence ``1 - beta``
is the largest epsilon that this tail rejects.

Two simplifications, both of which can only make the reported bound *larger*
(so the check "empirical < accountant" is conservative): the delta term of
their Theorem 3.1 is left out, and the best of several guess counts is
reported with a Bonferroni-corrected ``beta`` rather than a pre-registered one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom


def auc(scores: np.ndarray, member: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``member`` (Mann-Whitney U, ties count one half)."""
    scores = np.asarray(scores, dtype=np.float64)
    member = np.asarray(member, dtype=bool)
    pos, neg = scores[member], scores[~member]
    if pos.size == 0 or neg.size == 0:
        return 0.5
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(order.size, dtype=np.float64)
    allv = np.concatenate([pos, neg])[order]
    # average ranks over ties
    i = 0
    while i < allv.size:
        j = i
        while j + 1 < allv.size and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def epsilon_lower_bound(guesses: int, correct: int, beta: float) -> float:
    """Largest epsilon with ``P[Binomial(guesses, p(eps)) >= correct] <= beta``.

    ``p(eps) = e^eps / (1 + e^eps)``; 0 when even a fair coin explains the result.
    """
    if guesses <= 0 or correct <= 0:
        return 0.0

    def tail(eps: float) -> float:
        p = 1.0 / (1.0 + math.exp(-eps))
        return float(binom.sf(correct - 1, guesses, p))

    if tail(0.0) > beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while tail(hi) <= beta and hi < 100.0:
        lo, hi = hi, hi * 2.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if tail(mid) <= beta:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class OneRunBound:
    epsilon: float
    guesses: int
    correct: int
    confidence: float


def one_run_bound(
    scores: np.ndarray,
    member: np.ndarray,
    confidence: float = 0.95,
    fractions: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
) -> OneRunBound:
    """The best (Bonferroni-corrected) one-run bound over guess counts ``fractions * m``.

    Equal numbers of "in" and "out" guesses (``k+ = k- = k/2``), as in the paper's
    experiments.
    """
    scores = np.asarray(scores, dtype=np.float64)
    member = np.asarray(member, dtype=bool)
    m = scores.size
    order = np.argsort(-scores, kind="mergesort")
    beta = (1.0 - confidence) / len(fractions)
    best = OneRunBound(0.0, 0, 0, confidence)
    for f in fractions:
        half = max(1, int(f * m) // 2)
        top, bottom = order[:half], order[m - half :]
        correct = int(member[top].sum() + (~member[bottom]).sum())
        eps = epsilon_lower_bound(2 * half, correct, beta)
        if eps > best.epsilon or best.guesses == 0:
            best = OneRunBound(eps, 2 * half, correct, confidence)
    return best
