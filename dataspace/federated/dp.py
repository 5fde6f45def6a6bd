"""DP-SGD at a site, per frame or per episode, and the privacy plan of a run.

Privacy unit (``site.toml [training] privacy_unit``, the holder's choice; the
server cannot change it):

* ``"frame"`` (default): one frame (one (input, target) pair). Mechanism:
  DP-SGD with Poisson sampling of frames at rate ``q = 1 / ceil(N / batch_size)``,
  per-sample gradient clipping to L2 norm ``C`` and Gaussian noise of standard
  deviation ``sigma C`` added to the clipped sum, divided by the expected batch
  size (Abadi et al. 2016; Opacus 1.6 semantics).
* ``"episode"``: one whole episode (an operator's session, a patient's
  session): "whatever one episode contains, the outputs barely change".
  User-level DP-SGD (McMahan et al. 2018, "Learning differentially private
  recurrent language models", DP-FedAvg's per-user clipping, here per episode):
  Poisson sampling of *episodes* at rate ``q = 1 / ceil(E / b)`` (``E`` train
  episodes, ``b`` expected episodes per batch, ``episodes_per_batch`` or
  ``batch_size / frames_per_episode``); each sampled episode contributes ONE
  gradient, that of its mean loss over up to ``m = frames_per_episode`` of its
  frames drawn by the site's secret noise source; that gradient is clipped to
  ``C``, the sum gets ``N(0, sigma^2 C^2)`` and is divided by ``q E``. The
  accountant is the same with the episode counts, so epsilon is per episode.
  Every other release is bounded per episode too: normalisation sums (each
  episode adds the mean of its clipped frames, :func:`.normalize.dp_sums`) and
  losses (each episode adds the mean of its clipped frame losses,
  :func:`noisy_mean_loss`).

Accounting is RDP (:mod:`dataspace.accountant`, Mironov 2017; held against
Opacus's ``RDPAccountant`` in the tests), not "prv": a contract's releases mix
DP-SGD steps with Gaussian releases of normalisation statistics and losses, which
RDP composes exactly and in milliseconds. The plan, and so the noise, depends only
on the contract (its epsilon, delta and rounds), the site's settings and metadata
(frame counts), never on a message: a message may repeat the site's epochs and clip
(:meth:`TrainingSettings.check_request`), never change them, and the noise is
planned for the contract's rounds whatever a run says.

The plan describes its releases in the accountant's form (:meth:`PrivacyPlan.stats_release`,
:meth:`PrivacyPlan.round_release`); the site's ledger
(:func:`dataspace.policy.ledger.charge_round`) charges each release before it is
computed as the increase of the contract's composed epsilon over everything it
released, in all its runs, and refuses the release that would cross the contract's
(epsilon, delta). A plan whose statistics and rounds all happen spends at most the
contract's epsilon (``epsilon_after(rounds)``).

The recipe (issue 17; bench/RESULTS.md, "closed loop"): a round is ``local_steps``
DP steps (``site.toml [training]``, default :data:`LOCAL_STEPS`; steps, not epochs, so
the accountant counts exactly the steps taken, whatever a site's size; a run takes at
most ``run_steps``, :func:`steps_per_round`, so a contract of many short rounds, what
non-IID sites need, costs no more noise than one of 20 rounds), and the noisy
clipped mean gradient of each step goes to the run's optimizer (:class:`Recipe`:
DP-Adam by default, as Opacus's ``DPOptimizer`` around ``torch.optim.Adam``; or plain
SGD) at the learning rate of a cosine schedule over the run's steps. Optimizer and
schedule are post-processing of the DP releases: they change no charge.

Training modes (``site.toml [training] grad_sample_mode``):
``"bk"`` (default) is our book-keeping clipping for the Linear/activation
MLPs of :mod:`.templates` (Bu et al. 2023): per-sample gradient norms from
layer inputs and output gradients, the clipped sum in one matrix product per
layer, no per-sample gradients stored and no second backward pass.
``"hooks"``, ``"functorch"`` and ``"ghost"`` run Opacus's ``make_private``.
All four implement the same mechanism with the same accounting, per frame and
per episode: per episode, ``"bk"`` takes each episode's gradient norm from the
Gram matrices of its frames, ``||sum_t g_t a_t^T||^2 = sum_{t,s} (g_t.g_s)(a_t.a_s)``,
and Opacus gets the episode's frames as one ``[m, D]`` sample (its Linear
grad samplers sum over the middle dimension).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from dataspace import accountant
from dataspace.errors import DataspaceError, RefusedError
from dataspace.federated.noise import NoiseSource
from dataspace.federated.normalize import BOUND_RANGE, per_episode_mean

ACCOUNTANT = "rdp"
MODES = ("bk", "hooks", "functorch", "ghost")
PRIVACY_UNITS = ("frame", "episode")

HistoryEntry = tuple[float, float, int]

#: the training recipe's defaults (bench/RESULTS.md, "closed loop": tuned on the
#: simulated ``reacher`` task, checked on ``reacher-long`` and the Unitree G1 sample)
LOCAL_STEPS = 100
#: the most DP steps one run takes at a site: a run of many rounds takes fewer steps a
#: round (``min(local_steps, ceil(run_steps / rounds))``), so its noise does not grow
#: with its rounds (reacher, eps 8: 100 rounds of 20 steps succeed as often as 100 of
#: 100, at noise multiplier 2.41 instead of 5.14 and a fifth of the compute); runs of up
#: to 20 rounds keep ``local_steps``
RUN_STEPS = 2000
#: the share of the run's epsilon the normalisation statistics are planned to cost: at
#: 0.05 the per-coordinate histograms' noise hid a coordinate's thin tail and its DP
#: scale came out 0.012-0.07x the true one (reacher, 6 noise seeds); at 0.2 0.84-0.95x,
#: for 2.2 % more DP-SGD noise (RDP composes the strongly noised releases cheaply)
STATS_SHARE = 0.2
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
#: the default learning rate of each optimizer (peak of the schedule)
#: (adam 3e-3, session 8: reacher, eps 8, 100 rounds of 20 steps, 0.28 at 1e-3, 0.45 at
#: 3e-3, 0.38 at 6e-3; checked on the G1 recording, whose held-out MSE went from 1.03 to
#: 0.94 of the central one, and on reacher-long, where it did not help: 0.15 vs 0.18)
DEFAULT_LR = {"adam": 3e-3, "sgd": 0.5}


class PrivacyPlanError(DataspaceError):
    """A budget that no amount of noise within reason can meet."""


class RecipeError(RefusedError):
    """A message naming an optimizer, schedule or warm-up this site does not know."""


class MechanismError(RefusedError):
    """A message that states a mechanism (rounds, epochs, clip, ...) other than the site's."""


class PrivacyUnitError(PrivacyPlanError):
    """A privacy unit (``site.toml [training] privacy_unit``) this connector does not know."""


@dataclass(frozen=True)
class TrainingSettings:
    """The connector's own limits (``site.toml [training]``); defaults below."""

    clip_norm: float = 1.0
    batch_size: int = 256
    #: local DP steps a round (the accountant counts them); 0: ``max_epochs`` passes
    #: over the site's units. Steps, not epochs: the number of optimisation steps a
    #: round needs depends on the model and the task, not on how much data a site
    #: holds (bench/RESULTS.md, "closed loop": 1 epoch of a 4k-frame site is 13 steps)
    local_steps: int = LOCAL_STEPS
    #: the most local DP steps one run takes (:data:`RUN_STEPS`); 0: no cap
    run_steps: int = RUN_STEPS
    max_epochs: int = 1
    grad_sample_mode: str = "bk"
    heldout_fraction: float = 0.2
    stats_share: float = STATS_SHARE
    #: clip bound of the normalisation sums, the same for every coordinate; None: one
    #: bound per coordinate, chosen by the site with DP
    #: (:func:`dataspace.federated.normalize.dp_bound`, one more release)
    stats_bound: float | None = None
    eval_share: float = 0.05
    eval_clip: float = 1.0
    exclude_flagged: bool = False
    #: "frame" or "episode": what one unit of the guarantee is (module docstring)
    privacy_unit: str = "frame"
    #: episode unit: frames drawn from each sampled episode for its one gradient (m)
    frames_per_episode: int = 32
    #: episode unit: expected episodes per batch; 0: batch_size / frames_per_episode
    episodes_per_batch: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.privacy_unit not in PRIVACY_UNITS:
            raise PrivacyUnitError(
                f"site.toml [training] privacy_unit={self.privacy_unit!r}: "
                f"expected one of {', '.join(PRIVACY_UNITS)}"
            )
        if int(self.local_steps) < 0:
            raise PrivacyPlanError(
                f"site.toml [training] local_steps={self.local_steps!r}: expected >= 0"
            )
        if int(self.run_steps) < 0:
            raise PrivacyPlanError(
                f"site.toml [training] run_steps={self.run_steps!r}: expected >= 0"
            )
        if int(self.frames_per_episode) < 1 or int(self.episodes_per_batch) < 0:
            raise PrivacyPlanError(
                f"site.toml [training] frames_per_episode={self.frames_per_episode!r} "
                f"episodes_per_batch={self.episodes_per_batch!r}: expected >= 1 and >= 0"
            )

    @property
    def units_per_batch(self) -> int:
        """Expected privacy units (frames or episodes) per Poisson batch."""
        if self.privacy_unit == "frame":
            return self.batch_size
        if self.episodes_per_batch:
            return int(self.episodes_per_batch)
        return max(1, round(self.batch_size / self.frames_per_episode))

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
        lo, hi = BOUND_RANGE
        b = s.stats_bound
        if b is not None and (
            type(b) not in (int, float) or not math.isfinite(b) or not lo <= b <= hi
        ):  # checked here, before any charge, not when the statistics are computed
            raise PrivacyPlanError(
                f"site.toml [training] stats_bound={b!r}: a number within [{lo:g}, {hi:g}] "
                "(one clip bound for every coordinate), or absent (chosen with DP)"
            )
        return s

    def check_request(self, epochs: Any = None, clip_norm: Any = None) -> None:
        """Refuse a message whose mechanism differs from the site's (:class:`MechanismError`).

        The site fixes the mechanism (epochs, clip norm) from its own settings; a
        message may repeat them (0 or absent: not stated), never change them, up or down.
        """
        if epochs not in (None, 0) and (type(epochs) is not int or epochs != self.max_epochs):
            raise MechanismError(
                f"the message asks for {epochs!r} local epochs; this site trains "
                f"{self.max_epochs} (site.toml [training] max_epochs)"
            )
        if clip_norm not in (None, 0, 0.0) and (
            type(clip_norm) not in (int, float) or float(clip_norm) != self.clip_norm
        ):
            raise MechanismError(
                f"the message asks for clip norm {clip_norm!r}; this site clips at "
                f"{self.clip_norm:g} (site.toml [training] clip_norm)"
            )


#: the accountant's RDP orders (:data:`dataspace.accountant.ORDERS`)
ALPHAS = accountant.ORDERS


def epsilon_of(history: Sequence[HistoryEntry], delta: float) -> float:
    """Epsilon of a history of releases (:func:`dataspace.accountant.epsilon`)."""
    return accountant.epsilon(history, delta)


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
    #: what the guarantee protects: "frame" or "episode"; ``units`` counts them
    #: (``sample_rate`` and ``batch_size`` are in these units)
    privacy_unit: str = "frame"
    units: int = 0
    #: episode unit: frames drawn from each sampled episode (m)
    frames_per_episode: int = 0

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

    def stats_release(self) -> list[HistoryEntry]:
        """What one release of the normalisation statistics costs (the accountant's form)."""
        return [(self.stats_noise, 1.0, self.stats_releases)] if self.stats_releases else []

    def round_release(self) -> list[HistoryEntry]:
        """What one round costs: its DP-SGD steps, its train loss and its one evaluation."""
        return [
            (self.noise_multiplier, self.sample_rate, self.steps_per_round),
            (self.eval_noise, 1.0, 2),
        ]

    def mechanism(self) -> dict[str, Any]:
        """The mechanism as ``round.started`` records it (what an auditor recomputes from)."""
        return {
            "privacy_unit": self.privacy_unit,
            "units": self.units,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps_per_round,
            "clip_norm": self.clip_norm,
            "batch_size": self.batch_size,
            "eval_noise": self.eval_noise,
            "stats_noise": self.stats_noise,
            "stats_releases": self.stats_releases,
            "rounds": self.rounds,
        }


def make_plan(
    epsilon: float,
    delta: float,
    rounds: int,
    frames: int,
    settings: TrainingSettings,
    episodes: int | None = None,
) -> PrivacyPlan:
    """Noise multipliers meeting ``(epsilon, delta)`` over ``rounds`` rounds (cached).

    With ``settings.privacy_unit == "episode"`` the sampling rate and steps are
    counted in ``episodes`` (the number of train episodes, metadata), which is
    then required.
    """
    unit = settings.privacy_unit
    if unit == "episode" and not episodes:
        raise PrivacyPlanError(f"privacy_unit 'episode' needs the episode count, got {episodes}")
    units = int(episodes) if unit == "episode" else int(frames)
    return _make_plan(
        float(epsilon), float(delta), int(rounds), int(frames), settings.clip_norm,
        settings.units_per_batch, settings.max_epochs, settings.stats_share,
        settings.eval_share, 3 if settings.stats_bound is not None else 4, unit, units,
        settings.frames_per_episode if unit == "episode" else 0,
        steps_per_round(settings, int(rounds)),
    )  # fmt: skip


def steps_per_round(settings: TrainingSettings, rounds: int) -> int:
    """The local DP steps of each of a run's ``rounds`` rounds: ``local_steps``, at
    most ``ceil(run_steps / rounds)`` (:data:`RUN_STEPS`); 0 means epochs instead."""
    steps = int(settings.local_steps)
    if steps > 0 and int(settings.run_steps) > 0 and rounds > 0:
        steps = min(steps, max(1, math.ceil(int(settings.run_steps) / rounds)))
    return steps


@functools.lru_cache(maxsize=256)
def _make_plan(
    epsilon: float, delta: float, rounds: int, frames: int, clip_norm: float, batch_size: int,
    max_epochs: int, stats_share: float, eval_share: float, stats_releases: int = 3,
    privacy_unit: str = "frame", units: int = 0, frames_per_episode: int = 0,
    local_steps: int = 0,
) -> PrivacyPlan:  # fmt: skip
    settings = TrainingSettings(
        clip_norm=clip_norm, batch_size=batch_size, max_epochs=max_epochs,
        stats_share=stats_share, eval_share=eval_share,
    )  # fmt: skip
    units = units or frames
    if units < 1 or rounds < 1 or epsilon <= 0 or not 0 < delta < 1:
        raise PrivacyPlanError(
            f"cannot plan epsilon={epsilon} delta={delta} rounds={rounds} {privacy_unit}s={units}"
        )
    # batch_size is in privacy units (frames, or episodes: TrainingSettings.units_per_batch)
    batches = math.ceil(units / settings.batch_size)
    q = 1.0 / batches
    # a fixed number of steps a round when the site says so (the default), else epochs
    steps = local_steps if local_steps > 0 else batches * settings.max_epochs
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
        privacy_unit=privacy_unit,
        units=units,
        frames_per_episode=frames_per_episode,
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
    rng: NoiseSource,
    episode: torch.Tensor | None = None,
) -> float:
    """Mean per-unit MSE, each frame's loss clipped to ``clip``, Gaussian-noised.

    Per frame (``episode`` None): the sum of clipped frame losses; per episode
    (``episode``: each frame's episode index, frames grouped by episode): the
    sum over episodes of the mean of their clipped frame losses. Either way one
    unit moves the sum by at most ``clip``, so the noise is
    ``N(0, (noise_multiplier * clip)^2)``; ``count`` is the number of units
    (frames or episodes) from metadata. Accounted as ``(noise_multiplier, 1.0, 1)``.
    """
    with torch.no_grad():
        per = ((net(x) - y) ** 2).mean(dim=1).double()
        # a frame whose loss is not finite (crafted weights overflow) counts as the clip:
        # each frame still moves the sum by at most ``clip``, and NaN never reaches the sum
        per = torch.nan_to_num(per, nan=clip, posinf=clip).clamp(0.0, clip)
        if episode is not None:
            per = per_episode_mean(per, episode)
        noise = rng.normal((1,), dtype=torch.float64)
    total = float(per.sum()) + noise_multiplier * clip * float(noise)
    return total / max(1, count)


@dataclass(frozen=True)
class EpisodeIndex:
    """Where each episode's frames lie in a frame tensor sorted by episode."""

    starts: torch.Tensor  # int64 [E]
    lengths: torch.Tensor  # int64 [E]

    @classmethod
    def of(cls, episode: torch.Tensor) -> EpisodeIndex:
        _, counts = torch.unique_consecutive(episode, return_counts=True)
        return cls(starts=torch.cumsum(counts, 0) - counts, lengths=counts)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


def episode_batch(
    index: EpisodeIndex, chosen: torch.Tensor, m: int, rng: NoiseSource
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of the ``chosen`` episodes, up to ``m`` each, drawn by ``rng``.

    Returns ``idx`` [k, mm] (frame indices; padding points at frame 0) and
    ``weight`` [k, mm] (``1 / frames drawn`` where drawn, 0 on padding), so that
    ``(loss[idx] * weight).sum(1)`` is each episode's mean loss over its draw.
    """
    k = int(chosen.numel())
    lengths = index.lengths[chosen]
    mm = int(min(m, int(lengths.max()))) if k else 1
    idx = torch.zeros((k, mm), dtype=torch.long)
    weight = torch.zeros((k, mm))
    for j, e in enumerate(chosen.tolist()):
        n, start = int(index.lengths[e]), int(index.starts[e])
        # all of a short episode; else m frames without replacement, in frame order
        pick = torch.arange(n) if n <= m else rng.randperm(n)[:m].sort().values
        idx[j, : pick.numel()] = start + pick
        weight[j, : pick.numel()] = 1.0 / pick.numel()
    return idx, weight


def poisson_batches(n: int, q: float, steps: int, rng: NoiseSource):
    """Index tensors of ``steps`` Poisson-sampled batches (possibly empty)."""
    for _ in range(steps):
        yield rng.bernoulli(n, q).nonzero().squeeze(1)


@dataclass(frozen=True)
class Recipe:
    """How the noisy gradients become weights: the optimizer and its learning rate at
    each local step. Post-processing of the DP releases (every step's noisy gradient is
    already private), so the run chooses it; the site checks only that the names are
    known and the rate finite (:func:`check_recipe`).

    ``schedule`` "cosine": linear warm-up over the first ``warmup`` of the run's
    steps, then cosine decay to ``FLOOR`` x ``lr`` at the run's last step (Loshchilov
    and Hutter 2017). The run's steps are ``total_steps`` (its rounds times the site's
    steps a round); ``offset`` is the steps of the rounds before this one. The
    optimizer's state (Adam's moments) starts afresh each round: it would otherwise be
    a second model state the server never sees, and FedAvg averages the weights only.
    """

    optimizer: str = "sgd"
    lr: float = 0.5
    schedule: str = "constant"
    warmup: float = 0.0
    total_steps: int = 0
    offset: int = 0

    FLOOR = 0.05

    def lr_at(self, step: int) -> float:
        """The learning rate of this round's local step ``step`` (from 0)."""
        t = self.offset + step
        total = max(1, self.total_steps)
        if self.schedule == "constant" or self.total_steps <= 0:
            return self.lr
        warm = int(self.warmup * total)
        if t < warm:
            return self.lr * (t + 1) / warm
        frac = min(1.0, (t - warm) / max(1, total - warm))
        return self.lr * (self.FLOOR + (1 - self.FLOOR) * 0.5 * (1 + math.cos(math.pi * frac)))

    def make(self, params) -> torch.optim.Optimizer | None:
        """The torch optimizer over ``params`` (None for plain SGD: the update in place)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return None


def check_recipe(optimizer: Any, schedule: Any, warmup: Any) -> None:
    """Refuse names this site does not know (:class:`RecipeError`)."""
    if optimizer not in OPTIMIZERS:
        raise RecipeError(
            f"unknown optimizer {str(optimizer)[:40]!r} (known: {', '.join(OPTIMIZERS)})"
        )
    if schedule not in SCHEDULES:
        raise RecipeError(
            f"unknown lr schedule {str(schedule)[:40]!r} (known: {', '.join(SCHEDULES)})"
        )
    if type(warmup) not in (int, float) or not (math.isfinite(warmup) and 0 <= warmup < 1):
        raise RecipeError(f"warmup must be a fraction in [0, 1), got {str(warmup)[:40]!r}")


def train_dp(
    net: nn.Sequential,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: PrivacyPlan,
    lr: float,
    rng: NoiseSource,
    mode: str = "bk",
    noise_multiplier: float | None = None,
    steps: int | None = None,
    episode: torch.Tensor | None = None,
    recipe: Recipe | None = None,
) -> StepResult:
    """One round of DP-SGD on ``net`` in place (``noise_multiplier`` overrides for tests).

    With ``plan.privacy_unit == "episode"``, ``episode`` (each pair's episode
    index, pairs grouped by episode) is required: episodes are the sampled and
    clipped units (module docstring); ``StepResult.samples`` then counts episodes.
    """
    sigma = plan.noise_multiplier if noise_multiplier is None else noise_multiplier
    steps = plan.steps_per_round if steps is None else steps
    recipe = Recipe(lr=lr) if recipe is None else recipe
    if plan.privacy_unit == "episode":
        if episode is None or episode.shape[0] != x.shape[0]:
            raise PrivacyPlanError("privacy_unit 'episode' needs each frame's episode index")
        if mode not in MODES:
            raise PrivacyPlanError(f"unknown grad_sample_mode {mode!r}")
        return _train_episodes(net, x, y, episode, plan, sigma, recipe, rng, steps, mode)
    if mode == "bk":
        return _train_bk(net, x, y, plan, sigma, recipe, rng, steps)
    if mode in ("hooks", "functorch", "ghost"):
        return _train_opacus(net, x, y, plan, sigma, recipe, rng, steps, mode)
    raise PrivacyPlanError(f"unknown grad_sample_mode {mode!r}")


def _forward_recording(
    net: nn.Sequential, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The MLP's output, and each Linear layer's input (detached) and output: what
    book-keeping clipping needs to get per-unit gradient norms from one backward pass."""
    acts: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    h = x
    for m in net:
        if isinstance(m, nn.Linear):
            acts.append(h.detach())
            h = m(h)
            outs.append(h)
        else:
            h = m(h)
    return h, acts, outs


def bk_step(
    net: nn.Sequential,
    xb: torch.Tensor,
    yb: torch.Tensor,
    clip_norm: float,
    sigma: float,
    lr: float,
    expected_batch: float,
    rng: NoiseSource,
    opt: torch.optim.Optimizer | None = None,
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
        h, acts, outs = _forward_recording(net, xb)
        per = ((h - yb) ** 2).mean(dim=1)
        grads = torch.autograd.grad(per.sum(), outs)
        with torch.no_grad():
            grads = list(grads)
            norm2 = _frame_norm2(acts, grads)
            bad = ~torch.isfinite(norm2)
            if bool(bad.any()):  # rare: crafted weights overflow some frames (_zero_rows)
                acts, grads = _zero_rows(acts, bad), _zero_rows(grads, bad)
                norm2 = _frame_norm2(acts, grads)
            scale = (clip_norm / (norm2.sqrt() + 1e-6)).clamp(max=1.0)
            for (sw, sb), a, g in zip(sums, acts, grads, strict=True):
                gs = g * scale[:, None]
                sw += gs.T @ a
                sb += gs.sum(0)
        loss = float(per.detach().mean())
    _noisy_update(linears, sums, clip_norm, sigma, lr, expected_batch, rng, opt)
    return loss


def _frame_norm2(acts: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Each row's squared gradient norm over the Linear layers: ``sum |g|^2 (|a|^2 + 1)``.

    Not finite exactly when one of the row's inputs or output gradients is not
    (every term is >= 0, so no inf cancels; an inf times a 0 is NaN), or when the
    row's own values overflow the sum: both decided by the row alone.
    """
    return sum((g * g).sum(1) * ((a * a).sum(1) + 1.0) for a, g in zip(acts, grads, strict=True))


def _zero_rows(tensors: list[torch.Tensor], rows: torch.Tensor) -> list[torch.Tensor]:
    """``tensors`` with the ``rows`` (a bool mask) set to zero: those units contribute nothing.

    Crafted weights can overflow the forward or backward pass for some frames
    only; one NaN in the clipped sum would turn the whole update into NaN and
    tell the server that such a frame was sampled (a one-bit leak beside the
    noise). A unit with a non-finite value contributes nothing instead: a choice
    made from that unit alone, so the sum still moves by at most ``C`` when one
    unit is added or removed. ``torch.where``, not a product: ``0 * inf`` is NaN.
    """
    keep = (~rows)[:, None]
    return [torch.where(keep, t, torch.zeros_like(t)) for t in tensors]


def _noisy_update(linears, sums, clip_norm, sigma, lr, expected_batch, rng, opt=None) -> None:
    """Add ``N(0, (sigma C)^2)`` to each clipped sum, step by ``lr * sum / expected_batch``
    (plain SGD), or hand ``sum / expected_batch`` to ``opt`` as the gradient (e.g. DP-Adam:
    Adam on the noisy gradient, post-processing)."""
    pairs = [(p, s) for m, (sw, sb) in zip(linears, sums, strict=True)
             for p, s in ((m.weight, sw), (m.bias, sb))]  # fmt: skip
    with torch.no_grad():
        if sigma > 0:
            # one draw a value (gradient noise never leaves by itself, noise.py), all of a
            # step's in one call: the source's cost is per call as much as per value
            total = sum(s.numel() for _, s in pairs)
            noise = rng.normal((total,), dtype=pairs[0][1].dtype, draws=1) * (sigma * clip_norm)
            at = 0
            for _, s in pairs:
                s += noise[at : at + s.numel()].view_as(s)
                at += s.numel()
        if opt is None:
            for p, s in pairs:
                p -= lr * s / expected_batch
            return
        for p, s in pairs:
            p.grad = s / expected_batch
        for group in opt.param_groups:
            group["lr"] = lr
    opt.step()


def episode_clipped_sums(
    net: nn.Sequential,
    xb: torch.Tensor,
    yb: torch.Tensor,
    weight: torch.Tensor,
    clip_norm: float,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Sum over episodes of each episode's gradient clipped to ``clip_norm``, book-keeping style.

    ``xb`` [k, m, D], ``yb`` [k, m, A], ``weight`` [k, m] (:func:`episode_batch`):
    episode ``e``'s loss is ``sum_t w_et loss_et``, its gradient for a Linear
    layer ``sum_t g_t a_t^T`` (+ ``sum_t g_t`` for the bias), whose squared norm
    is ``sum_{t,s} (g_t.g_s)(a_t.a_s + 1)``: two [m, m] Gram matrices per
    episode and layer, no per-episode gradient stored. Padding frames have
    weight 0, so their output gradients (and terms) are 0. The clipped sum is
    one matrix product per layer over all frames, each frame's output gradient
    scaled by its episode's clip factor. Returns ``[(weight sum, bias sum)]``
    per Linear layer and the episodes' losses [k]. With ``m = 1`` and weight 1
    this is per-frame clipping (:func:`bk_step`).
    """
    linears = [m for m in net if isinstance(m, nn.Linear)]
    sums = [(torch.zeros_like(m.weight), torch.zeros_like(m.bias)) for m in linears]
    k, mm = weight.shape
    if not k:
        return sums, torch.zeros(0)
    h, acts, outs = _forward_recording(net, xb.reshape(k * mm, -1))
    per = ((h - yb.reshape(k * mm, -1)) ** 2).mean(dim=1)
    per_episode = (per.view(k, mm) * weight).sum(1)
    grads = torch.autograd.grad(per_episode.sum(), outs)
    with torch.no_grad():
        grads = list(grads)
        norm2 = _episode_norm2(acts, grads, k, mm)
        if not bool(torch.isfinite(norm2).all()):
            # rare: an episode with any non-finite value of its own frames contributes
            # nothing (_zero_rows). Padding rows first: they repeat another episode's
            # frame 0, whose values must not decide for this one
            pad = weight.reshape(-1) == 0
            acts, grads = _zero_rows(acts, pad), _zero_rows(grads, pad)
            bad = ~torch.isfinite(_frame_norm2(acts, grads))
            drop = bad.view(k, mm).any(1).repeat_interleave(mm)
            acts, grads = _zero_rows(acts, drop), _zero_rows(grads, drop)
            norm2 = _episode_norm2(acts, grads, k, mm)
        scale = (clip_norm / (norm2.clamp(min=0).sqrt() + 1e-6)).clamp(max=1.0)
        frame_scale = scale.repeat_interleave(mm)[:, None]
        for (sw, sb), a, g in zip(sums, acts, grads, strict=True):
            gs = g * frame_scale
            sw += gs.T @ a
            sb += gs.sum(0)
    return sums, per_episode.detach()


def _episode_norm2(acts: list, grads: list, k: int, mm: int) -> torch.Tensor:
    """Each episode's squared gradient norm from the Gram matrices of its frames."""
    norm2 = torch.zeros(k, dtype=grads[0].dtype)
    for a, g in zip(acts, grads, strict=True):
        a3, g3 = a.view(k, mm, -1), g.view(k, mm, -1)
        norm2 += ((g3 @ g3.transpose(1, 2)) * (a3 @ a3.transpose(1, 2) + 1.0)).sum((1, 2))
    return norm2


def bk_episode_step(
    net: nn.Sequential,
    xb: torch.Tensor,
    yb: torch.Tensor,
    weight: torch.Tensor,
    clip_norm: float,
    sigma: float,
    lr: float,
    expected_batch: float,
    rng: NoiseSource,
    opt: torch.optim.Optimizer | None = None,
) -> float:
    """One user-level DP-SGD step: :func:`episode_clipped_sums`, then noise and update
    as in :func:`bk_step` (``N(0, (sigma C)^2)``, divided by the expected number of
    episodes). Returns the mean episode loss (not released)."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    sums, losses = episode_clipped_sums(net, xb, yb, weight, clip_norm)
    _noisy_update(linears, sums, clip_norm, sigma, lr, expected_batch, rng, opt)
    return float(losses.mean()) if losses.numel() else float("nan")


class EpisodeMSE(nn.Module):
    """Per-episode mean MSE for Opacus: ``target`` [k, m, A + 1], its last column the weights."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per = ((out - target[..., :-1]) ** 2).mean(dim=-1)
        per = (per * target[..., -1]).sum(dim=1)
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()


def _train_episodes(net, x, y, episode, plan, sigma, recipe, rng, steps, mode) -> StepResult:
    """User-level DP-SGD over episodes (module docstring), in any of :data:`MODES`."""
    index = EpisodeIndex.of(episode)
    if len(index) != plan.units:
        raise PrivacyPlanError(
            f"the plan counts {plan.units} train episodes, the frames hold {len(index)}"
        )
    m = max(1, plan.frames_per_episode)
    expected = plan.sample_rate * len(index)

    def batches():
        for chosen in poisson_batches(len(index), plan.sample_rate, steps, rng):
            idx, w = episode_batch(index, chosen, m, rng)
            yield x[idx], y[idx], w

    if mode == "bk":
        if any(not isinstance(mod, nn.Linear | nn.ReLU | nn.Tanh | nn.GELU) for mod in net):
            raise PrivacyPlanError("book-keeping clipping supports Linear + activation MLPs only")
        total, count, losses = 0, 0, []
        opt = recipe.make(net.parameters())
        for xb, yb, w in batches():
            lr = recipe.lr_at(count)
            loss = bk_episode_step(net, xb, yb, w, plan.clip_norm, sigma, lr, expected, rng, opt)
            if w.shape[0]:
                losses.append(loss)
                total += int(w.shape[0])
            count += 1
        return StepResult(loss=sum(losses) / max(len(losses), 1), steps=count, samples=total)
    return _opacus_loop(net, plan, sigma, recipe, rng, mode, expected, batches(), EpisodeMSE)


def _train_bk(net, x, y, plan, sigma, recipe, rng, steps) -> StepResult:
    if any(not isinstance(m, nn.Linear | nn.ReLU | nn.Tanh | nn.GELU) for m in net):
        raise PrivacyPlanError("book-keeping clipping supports Linear + activation MLPs only")
    expected = plan.sample_rate * x.shape[0]
    total, count, losses = 0, 0, []
    opt = recipe.make(net.parameters())
    for idx in poisson_batches(x.shape[0], plan.sample_rate, steps, rng):
        lr = recipe.lr_at(count)
        loss = bk_step(net, x[idx], y[idx], plan.clip_norm, sigma, lr, expected, rng, opt)
        if idx.numel():
            losses.append(loss)
            total += int(idx.numel())
        count += 1
    return StepResult(loss=sum(losses) / max(len(losses), 1), steps=count, samples=total)


def _train_opacus(net, x, y, plan, sigma, recipe, rng, steps, mode) -> StepResult:
    expected = plan.sample_rate * x.shape[0]

    def batches():
        for idx in poisson_batches(x.shape[0], plan.sample_rate, steps, rng):
            yield x[idx], y[idx], None

    return _opacus_loop(net, plan, sigma, recipe, rng, mode, expected, batches(), PerSampleMSE)


def _secret_noise_optimizer(base: type, rng: NoiseSource, sanitise: bool) -> type:
    """``base`` (an Opacus DP optimizer) drawing its noise from ``rng``.

    Opacus draws from a ``torch.Generator`` (or torchcsprng in ``secure_mode``,
    which has no build for current torch); here the noise is the site's secret
    ChaCha20 source (:mod:`.noise`). ``sanitise``: a sample whose per-sample
    gradient has a non-finite value contributes nothing (:func:`_zero_rows`).
    """

    class SecretNoiseOptimizer(base):  # type: ignore[misc, valid-type]
        def add_noise(self) -> None:
            std = self.noise_multiplier * self.max_grad_norm
            for p in self.params:
                grad = p.summed_grad
                if std > 0:  # as Opacus: no draw without noise (the stream stays aligned)
                    grad = grad + rng.normal(grad.shape, dtype=grad.dtype, draws=1) * std
                p.grad = grad.view_as(p)

        def clip_and_accumulate(self) -> None:
            if sanitise:
                samples = [p.grad_sample for p in self.params if p.grad_sample is not None]
                if samples and samples[0].shape[0]:
                    bad = torch.zeros(samples[0].shape[0], dtype=torch.bool)
                    for g in samples:
                        bad |= ~torch.isfinite(g.reshape(g.shape[0], -1)).all(1)
                    if bool(bad.any()):
                        for p in self.params:
                            g = p.grad_sample
                            mask = bad.view(-1, *([1] * (g.dim() - 1)))
                            p.grad_sample = torch.where(mask, torch.zeros_like(g), g)
            super().clip_and_accumulate()

    return SecretNoiseOptimizer


def _opacus_loop(net, plan, sigma, recipe, rng, mode, expected, batches, loss_cls) -> StepResult:
    """DP-SGD with Opacus's GradSampleModule / ghost clipping over ``batches``.

    A batch is ``(x, y, weight)``: frames (``weight`` None, :class:`PerSampleMSE`)
    or episodes (``x`` [k, m, D], :class:`EpisodeMSE` with the weights as the
    target's last column; Opacus's Linear grad samplers and ghost norms sum over
    the middle dimension, so each episode is one sample). Noise from ``rng``;
    a sample with a non-finite gradient contributes nothing (ghost clipping: the
    step is taken again without it, since its NaN reaches every gradient).
    """
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
        opt_cls = _secret_noise_optimizer(DPOptimizerFastGradientClipping, rng, sanitise=False)
    else:
        gsm = GradSampleModule(
            net, batch_first=True, loss_reduction="mean", force_functorch=mode == "functorch"
        )
        opt_cls = _secret_noise_optimizer(DPOptimizer, rng, sanitise=True)
    opt = opt_cls(
        # DP-Adam is Opacus's DPOptimizer around torch's Adam (the noisy gradient in, Adam's
        # update out); plain SGD as before
        recipe.make(gsm.parameters()) or torch.optim.SGD(gsm.parameters(), lr=recipe.lr),
        noise_multiplier=sigma,
        max_grad_norm=plan.clip_norm,
        expected_batch_size=max(1, round(expected)),
        loss_reduction="mean",
    )
    crit = loss_cls("mean")
    dp_loss = DPLossFastGradientClipping(gsm, opt, crit, "mean") if ghost else None

    def backward(xb, yb, w) -> float:
        target = yb if w is None else torch.cat([yb, w[..., None]], dim=-1)
        out = gsm(xb)
        loss = dp_loss(out, target) if ghost else crit(out, target)
        loss.backward()
        return float(loss.loss_per_sample.detach().mean()) if ghost else float(loss.detach())

    total, count, losses = 0, 0, []
    for xb, yb, w in batches:
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(count)
        opt.zero_grad(set_to_none=True)
        if xb.shape[0]:
            loss = backward(xb, yb, w)
            norms = gsm.per_sample_gradient_norms if ghost else None
            if norms is not None and not bool(torch.isfinite(norms).all()):
                keep = torch.isfinite(norms).nonzero().squeeze(1)
                opt.zero_grad(set_to_none=True)
                xb, yb, w = xb[keep], yb[keep], None if w is None else w[keep]
                loss = backward(xb, yb, w) if xb.shape[0] else float("nan")
        if xb.shape[0]:
            losses.append(loss)
            total += int(xb.shape[0])
        else:
            # an empty Poisson batch still gets noise (Opacus semantics)
            for p in gsm.parameters():
                p.grad_sample = torch.zeros((0, *p.shape))
        opt.step()
        count += 1
    gsm._close() if hasattr(gsm, "_close") else None
    return StepResult(loss=sum(losses) / max(len(losses), 1), steps=count, samples=total)
