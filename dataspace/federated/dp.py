"""Sample-level DP-SGD at a site, and the privacy plan of a run.

Privacy unit: one frame (one (input, target) pair). Mechanism: DP-SGD with
Poisson sampling at rate ``q = 1 / ceil(N / batch_size)``, per-sample gradient
clipping to L2 norm ``C`` and Gaussian noise of standard deviation ``sigma C``
added to the clipped sum, divided by the expected batch size (Abadi et al.
2016; Opacus 1.6 semantics).

Accounting uses Opacus's **RDP** accountant (``opacus.accountants.RDPAccountant``,
Mironov 2017), not "prv": the history of a run mixes the DP-SGD steps with the
Gaussian releases of normalisation statistics and evaluation losses, which RDP
composes exactly and in milliseconds, so the same plan can be recomputed
cheaply by every (possibly fresh) ClientApp process before every round. The
plan, and so the noise, depends only on the contract, the site's settings and
metadata (frame counts), never on the server's message: a server may ask for
fewer local epochs or a smaller clip, never more. The whole history of a run
is a pure function of the round number, so the accountant's state is carried
across rounds (and across process restarts and resumes) by recomputation.

Round ``r`` is charged ``eps(r) - eps(r - 1)`` where ``eps(r)`` is the
accountant's epsilon after round ``r``'s history (round 1 includes the
normalisation statistics); the charges of a run add up to the accountant's
epsilon for the whole run, which is at most the contract's. Across runs the
ledger adds epsilons (basic composition), which is conservative.

Training modes (``site.toml [training] grad_sample_mode``):
``"bk"`` (default) is our book-keeping clipping for the Linear/activation
MLPs of :mod:`.templates` (Bu et al. 2023): per-sample gradient norms from
layer inputs and output gradients, the clipped sum in one matrix product per
layer, no per-sample gradients stored and no second backward pass.
``"hooks"``, ``"functorch"`` and ``"ghost"`` run Opacus's ``make_private``.
All four implement the same mechanism with the same accounting.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from torch import nn

from dataspace.errors import DataspaceError

ACCOUNTANT = "rdp"
MODES = ("bk", "hooks", "functorch", "ghost")

HistoryEntry = tuple[float, float, int]


class PrivacyPlanError(DataspaceError):
    """A budget that no amount of noise within reason can meet."""


@dataclass(frozen=True)
class TrainingSettings:
    """The connector's own limits (``site.toml [training]``); defaults below."""

    clip_norm: float = 1.0
    batch_size: int = 256
    max_epochs: int = 1
    grad_sample_mode: str = "bk"
    heldout_fraction: float = 0.2
    stats_share: float = 0.05
    #: clip bound of the normalisation sums; None: chosen by the site with DP
    #: (:func:`dataspace.federated.normalize.dp_bound`, one more release)
    stats_bound: float | None = None
    eval_share: float = 0.05
    eval_clip: float = 1.0
    exclude_flagged: bool = False
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict) -> TrainingSettings:
        section = dict(config.get("training", {}))
        known = {k: section.pop(k) for k in list(section) if k in cls.__dataclass_fields__}
        s = cls(**known, extra=section)
        if s.grad_sample_mode not in MODES:
            raise PrivacyPlanError(
                f"site.toml [training] grad_sample_mode={s.grad_sample_mode!r}: "
                f"expected one of {', '.join(MODES)}"
            )
        return s

    def lowered_by(self, epochs: int | None = None, clip_norm: float | None = None):
        """These settings with the server's requests applied where they only lower."""
        s = self
        if epochs is not None and 0 < epochs < s.max_epochs:
            s = replace(s, max_epochs=int(epochs))
        if clip_norm is not None and 0 < clip_norm < s.clip_norm:
            s = replace(s, clip_norm=float(clip_norm))
        return s


#: RDP orders: a coarser version of Opacus's defaults (fractional orders are what
#: make Opacus's RDP slow), extended upwards for the strongly noised releases.
#: Any set of orders gives a valid bound; fewer orders only make it slightly looser.
ALPHAS: tuple[float, ...] = (
    1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0,
    *(float(a) for a in range(12, 64)), 80.0, 100.0, 128.0, 256.0, 512.0,
)  # fmt: skip


@functools.lru_cache(maxsize=4096)
def _rdp(noise: float, q: float, steps: int) -> tuple[float, ...]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(compute_rdp(q=q, noise_multiplier=noise, steps=steps, orders=ALPHAS))


def epsilon_of(history: Sequence[HistoryEntry], delta: float) -> float:
    """Epsilon of a history: exactly ``RDPAccountant(history).get_epsilon(delta, ALPHAS)``.

    RDP composes by adding the per-order curves, which is what Opacus's
    accountant does; cached per entry so plans solve in a fraction of a second.
    """
    if not history:
        return 0.0
    total = np.zeros(len(ALPHAS))
    for noise, q, steps in history:
        total += np.asarray(_rdp(float(noise), float(q), int(steps)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = get_privacy_spent(orders=list(ALPHAS), rdp=total, delta=delta)
    return float(eps)


def _solve(f, target: float, lo: float, hi: float) -> float:
    """Smallest noise multiplier x in [lo, hi] with f(x) <= target (f decreasing)."""
    if f(hi) > target:
        raise PrivacyPlanError(f"epsilon {target:g} is too small even with noise {hi:g}")
    if f(lo) <= target:
        return lo
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.002:
            break
    return hi


@dataclass(frozen=True)
class PrivacyPlan:
    """Noise and accounting for one site over one run (module docstring)."""

    epsilon: float
    delta: float
    rounds: int
    frames: int
    batch_size: int
    sample_rate: float
    steps_per_round: int
    noise_multiplier: float
    clip_norm: float
    stats_noise: float
    eval_noise: float
    accountant: str = ACCOUNTANT
    #: Gaussian releases of the statistics: count, sum, sum of squares (+ the bound's histogram)
    stats_releases: int = 3

    def history(self, rounds_done: int) -> list[HistoryEntry]:
        """Accountant history after round ``rounds_done`` (0 = statistics only)."""
        h: list[HistoryEntry] = [(self.stats_noise, 1.0, self.stats_releases)]
        for _ in range(max(0, rounds_done)):
            h.append((self.noise_multiplier, self.sample_rate, self.steps_per_round))
            # two Gaussian releases a round: the train loss and the held-out loss
            h.append((self.eval_noise, 1.0, 2))
        return h

    def epsilon_after(self, rounds_done: int) -> float:
        if rounds_done < 0:
            return 0.0
        return epsilon_of(self.history(rounds_done), self.delta)

    def charge(self, round_no: int) -> float:
        """Epsilon to charge for round ``round_no`` (>= 1).

        Round 1 also pays for the normalisation statistics released just
        before it (history entry 0), so ``sum(charge(1..R)) == epsilon_after(R)``.
        """
        if round_no < 1:
            raise PrivacyPlanError(f"rounds are numbered from 1, got {round_no}")
        if round_no == 1:
            return self.epsilon_after(1)
        return self.epsilon_after(round_no) - self.epsilon_after(round_no - 1)


def make_plan(
    epsilon: float, delta: float, rounds: int, frames: int, settings: TrainingSettings
) -> PrivacyPlan:
    """Noise multipliers meeting ``(epsilon, delta)`` over ``rounds`` rounds (cached)."""
    return _make_plan(
        float(epsilon), float(delta), int(rounds), int(frames), settings.clip_norm,
        settings.batch_size, settings.max_epochs, settings.stats_share, settings.eval_share,
        3 if settings.stats_bound is not None else 4,
    )  # fmt: skip


@functools.lru_cache(maxsize=256)
def _make_plan(
    epsilon: float, delta: float, rounds: int, frames: int, clip_norm: float, batch_size: int,
    max_epochs: int, stats_share: float, eval_share: float, stats_releases: int = 3,
) -> PrivacyPlan:  # fmt: skip
    settings = TrainingSettings(
        clip_norm=clip_norm, batch_size=batch_size, max_epochs=max_epochs,
        stats_share=stats_share, eval_share=eval_share,
    )  # fmt: skip
    if frames < 1 or rounds < 1 or epsilon <= 0 or not 0 < delta < 1:
        raise PrivacyPlanError(
            f"cannot plan epsilon={epsilon} delta={delta} rounds={rounds} frames={frames}"
        )
    batches = math.ceil(frames / settings.batch_size)
    q = 1.0 / batches
    steps = batches * settings.max_epochs
    stats_noise = _solve(
        lambda z: epsilon_of([(z, 1.0, stats_releases)], delta),
        settings.stats_share * epsilon,
        0.5,
        5000.0,
    )
    eval_noise = _solve(
        lambda z: epsilon_of([(z, 1.0, 2 * rounds)], delta),
        settings.eval_share * epsilon,
        0.5,
        5000.0,
    )
    base = PrivacyPlan(
        epsilon=epsilon,
        delta=delta,
        rounds=rounds,
        frames=frames,
        batch_size=settings.batch_size,
        sample_rate=q,
        steps_per_round=steps,
        noise_multiplier=1.0,
        clip_norm=settings.clip_norm,
        stats_noise=stats_noise,
        eval_noise=eval_noise,
        stats_releases=stats_releases,
    )
    sigma = _solve(
        lambda s: replace(base, noise_multiplier=s).epsilon_after(rounds),
        epsilon * 0.999,
        0.3,
        60.0,
    )
    return replace(base, noise_multiplier=sigma)


# --------------------------------------------------------------------------- training


class PerSampleMSE(nn.Module):
    """MSE averaged over output dims per sample; ``reduction`` as Opacus expects."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per = ((out - target) ** 2).mean(dim=1)
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()


@dataclass(frozen=True)
class StepResult:
    loss: float
    steps: int
    samples: int


def noisy_mean_loss(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    count: int,
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> float:
    """Mean per-frame MSE, each frame's loss clipped to ``clip``, Gaussian-noised.

    Sensitivity of the clipped sum is ``clip`` (one frame in or out), so the
    noise is ``N(0, (noise_multiplier * clip)^2)``; ``count`` is the frame count
    from metadata. Accounted as ``(noise_multiplier, 1.0, 1)``.
    """
    with torch.no_grad():
        per = ((net(x) - y) ** 2).mean(dim=1).clamp(max=clip)
        noise = torch.randn(1, generator=generator, dtype=torch.float64)
    total = float(per.double().sum()) + noise_multiplier * clip * float(noise)
    return total / max(1, count)


def poisson_batches(n: int, q: float, steps: int, generator: torch.Generator):
    """Index tensors of ``steps`` Poisson-sampled batches (possibly empty)."""
    for _ in range(steps):
        mask = torch.rand(n, generator=generator) < q
        yield mask.nonzero().squeeze(1)


def train_dp(
    net: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: PrivacyPlan,
    lr: float,
    generator: torch.Generator,
    mode: str = "bk",
    noise_multiplier: float | None = None,
    steps: int | None = None,
) -> StepResult:
    """One round of DP-SGD on ``net`` in place (``noise_multiplier`` overrides for tests)."""
    sigma = plan.noise_multiplier if noise_multiplier is None else noise_multiplier
    steps = plan.steps_per_round if steps is None else steps
    if mode == "bk":
        return _train_bk(net, x, y, plan, sigma, lr, generator, steps)
    if mode in ("hooks", "functorch", "ghost"):
        return _train_opacus(net, x, y, plan, sigma, lr, generator, steps, mode)
    raise PrivacyPlanError(f"unknown grad_sample_mode {mode!r}")


def bk_step(
    net: nn.Sequential,
    xb: torch.Tensor,
    yb: torch.Tensor,
    clip_norm: float,
    sigma: float,
    lr: float,
    expected_batch: float,
    generator: torch.Generator,
) -> float:
    """One DP-SGD step with book-keeping clipping (Bu et al. 2023) on a Linear MLP.

    For a Linear layer on non-sequence inputs the per-sample gradient of the
    weight is the outer product ``g_i a_i^T`` of the output gradient and the
    input, so its squared norm is ``|g_i|^2 |a_i|^2`` (plus ``|g_i|^2`` for the
    bias): per-sample norms need no per-sample gradients. The backward pass
    goes only to the layer outputs (no weight gradients), then the clipped sum
    is one matrix product per layer: ``(c * G)^T A``. Gaussian noise
    ``N(0, (sigma C)^2)`` is added to the sum, divided by the expected batch
    size, as in Opacus. Returns the batch's mean loss (not released).
    """
    linears = [m for m in net if isinstance(m, nn.Linear)]
    sums = [(torch.zeros_like(m.weight), torch.zeros_like(m.bias)) for m in linears]
    loss = float("nan")
    if xb.shape[0]:
        acts, outs = [], []
        h = xb
        for m in net:
            if isinstance(m, nn.Linear):
                acts.append(h.detach())
                h = m(h)
                outs.append(h)
            else:
                h = m(h)
        per = ((h - yb) ** 2).mean(dim=1)
        grads = torch.autograd.grad(per.sum(), outs)
        with torch.no_grad():
            norm2 = sum(
                (g * g).sum(1) * ((a * a).sum(1) + 1.0) for a, g in zip(acts, grads, strict=True)
            )
            scale = (clip_norm / (norm2.sqrt() + 1e-6)).clamp(max=1.0)
            for (sw, sb), a, g in zip(sums, acts, grads, strict=True):
                gs = g * scale[:, None]
                sw += gs.T @ a
                sb += gs.sum(0)
        loss = float(per.detach().mean())
    with torch.no_grad():
        for m, (sw, sb) in zip(linears, sums, strict=True):
            for p, s in ((m.weight, sw), (m.bias, sb)):
                if sigma > 0:
                    s += torch.randn(s.shape, generator=generator) * (sigma * clip_norm)
                p -= lr * s / expected_batch
    return loss


def _train_bk(net, x, y, plan, sigma, lr, generator, steps) -> StepResult:
    if any(not isinstance(m, nn.Linear | nn.ReLU | nn.Tanh | nn.GELU) for m in net):
        raise PrivacyPlanError("book-keeping clipping supports Linear + activation MLPs only")
    expected = plan.sample_rate * x.shape[0]
    total, count, losses = 0, 0, []
    for idx in poisson_batches(x.shape[0], plan.sample_rate, steps, generator):
        loss = bk_step(net, x[idx], y[idx], plan.clip_norm, sigma, lr, expected, generator)
        if idx.numel():
            losses.append(loss)
            total += int(idx.numel())
        count += 1
    return StepResult(loss=sum(losses) / max(len(losses), 1), steps=count, samples=total)


def _train_opacus(net, x, y, plan, sigma, lr, generator, steps, mode) -> StepResult:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    ghost = mode == "ghost"
    if ghost:
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.optimizers import DPOptimizerFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        gsm = GradSampleModuleFastGradientClipping(
            net, max_grad_norm=plan.clip_norm, use_ghost_clipping=True, loss_reduction="mean"
        )
        opt_cls = DPOptimizerFastGradientClipping
    else:
        gsm = GradSampleModule(
            net, batch_first=True, loss_reduction="mean", force_functorch=mode == "functorch"
        )
        opt_cls = DPOptimizer
    expected = max(1, round(plan.sample_rate * x.shape[0]))
    opt = opt_cls(
        torch.optim.SGD(gsm.parameters(), lr=lr),
        noise_multiplier=sigma,
        max_grad_norm=plan.clip_norm,
        expected_batch_size=expected,
        loss_reduction="mean",
        generator=generator,
    )
    crit = PerSampleMSE("mean")
    dp_loss = DPLossFastGradientClipping(gsm, opt, crit, "mean") if ghost else None
    total, count, losses = 0, 0, []
    for idx in poisson_batches(x.shape[0], plan.sample_rate, steps, generator):
        opt.zero_grad(set_to_none=True)
        if idx.numel():
            out = gsm(x[idx])
            loss = dp_loss(out, y[idx]) if ghost else crit(out, y[idx])
            loss.backward()
            losses.append(
                float(loss.loss_per_sample.detach().mean()) if ghost else float(loss.detach())
            )
            total += int(idx.numel())
        else:
            # an empty Poisson batch still gets noise (Opacus semantics)
            for p in gsm.parameters():
                p.grad_sample = torch.zeros((0, *p.shape))
        opt.step()
        count += 1
    gsm._close() if hasattr(gsm, "_close") else None
    return StepResult(loss=sum(losses) / max(len(losses), 1), steps=count, samples=total)
