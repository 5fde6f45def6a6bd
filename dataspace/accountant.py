"""The privacy accountant: Rényi DP of Gaussian releases, their composition, and the filter.

One module, pure math, imported by every layer that counts privacy: the site's
ledger (:mod:`dataspace.policy.ledger`, which refuses a release that would cross a
contract's (epsilon, delta)), the training plan (:mod:`dataspace.federated.dp`,
which picks noise to meet it) and the auditor (:mod:`dataspace.audit.rules`,
which recomputes every charge from the mechanism a ``round.started`` records).
All three must agree to the last digit, so there is one implementation.

A *release* is ``(noise_multiplier, sample_rate, steps)``: ``steps`` runs of the
sampled Gaussian mechanism, each adding ``N(0, (noise_multiplier * S)^2)`` to a
sum of sensitivity ``S`` over a Poisson sample of rate ``sample_rate`` (1.0: no
sampling, the plain Gaussian mechanism; a DP-SGD round, a noisy loss and the
normalisation sums are all releases).

* RDP of the sampled Gaussian mechanism at order ``alpha``: Mironov, Talwar and
  Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism"
  (arXiv:1908.10530), section 3.3: integer orders by the binomial expansion,
  fractional ones by the two-sided series; ``alpha / (2 sigma^2)`` without
  sampling (Mironov 2017, Proposition 7). Ported from TF Privacy /
  Opacus 1.6 ``opacus.accountants.analysis.rdp`` (Apache-2.0) with no scipy;
  the tests hold it against Opacus's ``RDPAccountant`` to 1e-9.
* Composition: RDP curves add (Mironov 2017, Proposition 1).
* Conversion to (epsilon, delta): Balle et al. 2020, "Hypothesis testing
  interpretations and Rényi differential privacy", Theorem 21
  (``eps = rdp - (log delta + log alpha) / (alpha - 1) + log((alpha - 1) / alpha)``),
  minimised over :data:`ORDERS`, as Opacus's ``get_privacy_spent``.
* The filter (:func:`admits`): a release is admitted only if the composed curve
  of everything a contract has released, this one included, still converts to at
  most the contract's epsilon. A Rényi filter stays valid when which release comes
  next is chosen adaptively (Feldman and Zrnic 2021, "Individual privacy accounting
  via a Rényi filter"; Lécuyer 2021, "Practical privacy filters and odometers with
  Rényi differential privacy", for the conversion over a set of orders); here the
  adversary picks only the order and number of releases from a menu the site fixed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

#: RDP orders: Opacus's defaults thinned below 12 (fractional orders cost a series
#: each), extended upwards for strongly noised releases. Any set gives a valid bound.
ORDERS: tuple[float, ...] = (
    1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0,
    *(float(a) for a in range(12, 64)), 80.0, 100.0, 128.0, 256.0, 512.0,
)  # fmt: skip

#: the largest noise multiplier a release may state: far past any plan (its epsilon is
#: nil), and the fractional orders' series grows with it (1.4 s at 1e10): a log of such
#: entries would only slow an auditor down
MAX_NOISE = 1e6

#: one release: (noise multiplier, sample rate, steps)
Release = tuple[float, float, int]


class AccountantError(ValueError):
    """A release that is not a Gaussian mechanism the accountant knows (bad numbers)."""


def check_release(release: Sequence[float]) -> Release:
    """``release`` as a typed triple, or :class:`AccountantError` naming what is wrong."""
    try:
        noise, q, steps = release
    except (TypeError, ValueError):
        raise AccountantError(f"a release is [noise, rate, steps], got {release!r}") from None
    if type(steps) is float and float(steps).is_integer():
        steps = int(steps)
    ok = (
        all(type(v) in (int, float) for v in (noise, q))
        and type(steps) is int
        and math.isfinite(noise)
        and 0 < noise <= MAX_NOISE
        and math.isfinite(q)
        and 0 < q <= 1
        and steps >= 0
    )
    if not ok:
        raise AccountantError(
            f"release {release!r}: need 0 < noise <= {MAX_NOISE:g}, 0 < sample_rate <= 1, "
            "steps a whole number >= 0"
        )
    return float(noise), float(q), int(steps)


# ------------------------------------------------------------------ log-space helpers


def _log_add(a: float, b: float) -> float:
    lo, hi = min(a, b), max(a, b)
    if lo == -math.inf:
        return hi
    return math.log1p(math.exp(lo - hi)) + hi


def _log_sub(a: float, b: float) -> float:
    if a < b:
        raise AccountantError("log-space subtraction went negative")
    if b == -math.inf:
        return a
    if a == b:
        return -math.inf
    try:
        return math.log(math.expm1(a - b)) + b
    except OverflowError:
        return a


def _log_erfc(x: float) -> float:
    """log(erfc(x)), accurate where erfc underflows (asymptotic series past x = 20)."""
    if x < 20.0:
        return math.log(math.erfc(x))
    # erfc(x) = exp(-x^2) / (x sqrt(pi)) * (1 - 1/(2x^2) + 3/(4x^4) - 15/(8x^6) + ...)
    x2 = x * x
    series = 1 - 1 / (2 * x2) + 3 / (4 * x2 * x2) - 15 / (8 * x2**3)
    return -x2 - math.log(x) - 0.5 * math.log(math.pi) + math.log(series)


# ------------------------------------------------------------------ RDP of one step


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    """Mironov et al. 2019, section 3.3, integer ``alpha``."""
    log_a = -math.inf
    for i in range(alpha + 1):
        coef = math.log(math.comb(alpha, i)) + i * math.log(q) + (alpha - i) * math.log1p(-q)
        log_a = _log_add(log_a, coef + (i * i - i) / (2 * sigma**2))
    return log_a


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    """Mironov et al. 2019, section 3.3, fractional ``alpha`` (series until terms < e^-30)."""
    log_a0, log_a1 = -math.inf, -math.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    i = 0
    log_coef, sign = 0.0, 1  # log |binom(alpha, i)| and its sign, updated term by term
    while True:
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log1p(-q)
        log_t1 = log_coef + j * math.log(q) + i * math.log1p(-q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        if sign > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        elif sign < 0:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        if max(log_s0, log_s1) < -30:
            return _log_add(log_a0, log_a1)
        f = (alpha - i) / (i + 1)  # binom(alpha, i + 1) = binom(alpha, i) * f
        sign *= 1 if f > 0 else -1
        log_coef += math.log(abs(f))
        i += 1


def _rdp_step(q: float, sigma: float, alpha: float) -> float:
    if q == 1.0:
        return alpha / (2 * sigma**2)
    if float(alpha).is_integer():
        return _log_a_int(q, sigma, int(alpha)) / (alpha - 1)
    return _log_a_frac(q, sigma, alpha) / (alpha - 1)


@functools.lru_cache(maxsize=8192)
def rdp(release: Release) -> tuple[float, ...]:
    """The RDP curve of one release over :data:`ORDERS` (cached: plans repeat releases)."""
    noise, q, steps = check_release(release)
    if steps == 0:
        return (0.0,) * len(ORDERS)
    return tuple(steps * _rdp_step(q, noise, a) for a in ORDERS)


def compose(releases: Iterable[Sequence[float]]) -> list[float]:
    """The RDP curve of all ``releases`` together: the sum of theirs."""
    total = [0.0] * len(ORDERS)
    for r in releases:
        for k, v in enumerate(rdp(check_release(r))):
            total[k] += v
    return total


def epsilon_of_curve(curve: Sequence[float], delta: float) -> float:
    """The smallest epsilon any order gives for ``delta`` (Balle et al. 2020, Thm 21)."""
    if not 0 < delta < 1:
        raise AccountantError(f"delta must be in (0, 1), got {delta!r}")
    if not any(curve):
        return 0.0
    best = math.inf
    for a, r in zip(ORDERS, curve, strict=True):
        eps = r - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        best = min(best, eps)
    return max(0.0, best)


def epsilon(releases: Iterable[Sequence[float]], delta: float) -> float:
    """Epsilon of ``releases`` composed, at ``delta``."""
    return epsilon_of_curve(compose(releases), delta)


def admits(
    spent: Iterable[Sequence[float]], new: Iterable[Sequence[float]], delta: float, limit: float
) -> tuple[bool, float, float]:
    """The filter: may ``new`` follow ``spent`` within ``(limit, delta)``?

    Returns ``(admitted, epsilon before, epsilon after)``; the charge of ``new``
    is ``after - before``, so the charges of a contract add up to the epsilon of
    everything it released.
    """
    spent = list(spent)
    before = epsilon(spent, delta)
    after = epsilon([*spent, *new], delta)
    return after <= limit * (1 + 1e-9), before, after


def compose_onto(curve: Sequence[float], releases: Iterable[Sequence[float]]) -> list[float]:
    """``curve`` (a composed curve over :data:`ORDERS`) with ``releases`` added after it.

    The running form of :func:`compose`: for ``curve = compose(earlier)``,
    ``compose_onto(curve, new) == compose([*earlier, *new])`` to the last digit (the
    same additions in the same order), so whoever follows a contract's releases one
    charge at a time (the auditor) keeps one curve per contract, not every release.
    """
    if len(curve) != len(ORDERS):
        raise AccountantError(f"a curve has {len(ORDERS)} orders, got {len(curve)}")
    total = [float(v) for v in curve]
    for r in releases:
        total = [t + v for t, v in zip(total, rdp(check_release(r)), strict=True)]
    return total


@functools.lru_cache(maxsize=64)
def _conversion(delta: float) -> tuple[tuple[float, float], ...]:
    """Per order, the two terms :func:`epsilon_of_curve` adds to the RDP at ``delta``."""
    terms = (((math.log(delta) + math.log(a)) / (a - 1), math.log((a - 1) / a)) for a in ORDERS)
    return tuple(terms)


def epsilon_at(curve: Sequence[float], delta: float) -> float:
    """:func:`epsilon_of_curve` to the last digit (the same operations in the same order),
    with its per-order terms computed once per ``delta``: for callers that convert once
    per release, such as the auditor over a long log."""
    if not 0 < delta < 1:
        raise AccountantError(f"delta must be in (0, 1), got {delta!r}")
    if not any(curve):
        return 0.0
    best = min((r - x) + y for r, (x, y) in zip(curve, _conversion(delta), strict=True))
    return max(0.0, best)
