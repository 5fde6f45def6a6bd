"""Empirical privacy audit of the connector's DP training (issue 8, "Empirical privacy audit").

What it checks: that the epsilon the accountant charges is not an
underestimate that an attacker could beat. Method (auditing in one run,
Steinke, Nasr, Jagielski 2023; see :mod:`.mia`):

1. ``m`` canary frames are drawn: a state far outside the data (a random
   direction at radius ``canary_radius`` in normalised units) paired with a
   random action. The privacy unit of the connector's DP-SGD is one frame
   (:mod:`dataspace.federated.dp`), so a canary is one frame.
2. Each canary joins the site's real training frames with probability 1/2.
3. The model trains exactly as the ClientApp trains it: the template's
   network, :func:`dataspace.federated.dp.make_plan` from the epsilon, delta,
   rounds and frame count, :func:`dataspace.federated.dp.train_dp` for every
   round. Without DP (the baseline), the same network is trained with Adam for
   many epochs on a small subset, as an unprotected model would overfit.
4. The attack is loss-based per canary (lower loss: guess "member"); we report
   its ROC AUC and the one-run epsilon lower bound at ``confidence``.

The accountant's epsilon is the plan's ``epsilon_after(rounds)``; with DP the
lower bound must stay below it, or the accounting (or the code) is wrong.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from dataspace.assurance.mia import auc, one_run_bound
from dataspace.errors import DataspaceError
from dataspace.federated import data as fdata
from dataspace.federated import dp, normalize
from dataspace.federated.noise import NoiseSource
from dataspace.federated.templates import get_template
from dataspace.site.folder import Site


class AuditError(DataspaceError):
    """An audit configuration that cannot be run."""


@dataclass(frozen=True)
class AuditConfig:
    """Knobs of one audit run; defaults are the benchmark's DP setting."""

    epsilon: float | None = 8.0  # None: train without DP (the baseline)
    delta: float = 1e-5
    canaries: int = 500
    rounds: int = 5
    epochs: int = 4  # local epochs per round (DP) or total epochs (no DP)
    batch_size: int = 128
    lr: float = 0.5  # DP-SGD step size (the ClientApp's default); Adam uses 1e-3
    hidden: tuple[int, ...] = (256, 256)
    template: str = "bc-mlp"
    max_frames: int | None = None  # train on the first N real frames only
    canary_radius: float = 4.0
    clip_norm: float = 1.0
    confidence: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class AuditResult:
    dp: bool
    accountant_epsilon: float | None
    delta: float
    empirical_epsilon: float
    auc: float
    confidence: float
    canaries: int
    included: int
    guesses: int
    correct: int
    frames: int
    rounds: int
    epochs: int
    noise_multiplier: float | None
    hidden: list[int]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def make_canaries(
    m: int, state_dim: int, action_dim: int, radius: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` canary frames in normalised units: far-away states, random actions."""
    s = torch.randn(m, state_dim, generator=gen)
    s = radius * s / s.norm(dim=1, keepdim=True).clamp_min(1e-6)
    a = torch.randn(m, action_dim, generator=gen)
    return s, a


def per_sample_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return ((net(x) - y) ** 2).mean(dim=1).double().numpy()


def audit_frames(state: torch.Tensor, action: torch.Tensor, cfg: AuditConfig) -> AuditResult:
    """Run one audit on real frames (raw units); the frames never leave this function."""
    t0 = time.perf_counter()
    if cfg.canaries < 10:
        raise AuditError(f"canaries={cfg.canaries}: at least 10 are needed for a bound")
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.max_frames is not None:
        state, action = state[: cfg.max_frames], action[: cfg.max_frames]
    stats = normalize.exact_stats(state, action)  # local to the audit, never released
    xs = (state - torch.from_numpy(stats.state_mean)) / torch.from_numpy(stats.state_std)
    ys = (action - torch.from_numpy(stats.action_mean)) / torch.from_numpy(stats.action_std)
    cs, ca = make_canaries(cfg.canaries, xs.shape[1], ys.shape[1], cfg.canary_radius, gen)
    member = (torch.rand(cfg.canaries, generator=gen) < 0.5).numpy()
    x = torch.cat([xs, cs[torch.from_numpy(member)]])
    y = torch.cat([ys, ca[torch.from_numpy(member)]])
    template = replace(get_template(cfg.template), hidden=tuple(cfg.hidden))
    policy = template.build(xs.shape[1], ys.shape[1], seed=cfg.seed)
    net = policy.net
    accountant, sigma = None, None
    if cfg.epsilon is not None:
        settings = dp.TrainingSettings(
            clip_norm=cfg.clip_norm, batch_size=cfg.batch_size, max_epochs=cfg.epochs,
            local_steps=0,  # the audit counts epochs (as its non-private twin trains)
        )
        plan = dp.make_plan(cfg.epsilon, cfg.delta, cfg.rounds, x.shape[0], settings)
        for _ in range(cfg.rounds):
            # the audit's own experiment (its result goes to the holder only): a seeded
            # source keeps it repeatable for its seed
            rng = NoiseSource.seeded(f"privacy-audit/{cfg.seed}")
            dp.train_dp(net, x, y, plan, lr=cfg.lr, rng=rng, mode="bk")
        accountant, sigma = plan.epsilon_after(cfg.rounds), plan.noise_multiplier
    else:
        _train_plain(net, x, y, cfg, gen)
    scores = -per_sample_loss(net, cs, ca)

    bound = one_run_bound(scores, member, cfg.confidence)
    return AuditResult(
        dp=cfg.epsilon is not None,
        accountant_epsilon=accountant,
        delta=cfg.delta,
        empirical_epsilon=bound.epsilon,
        auc=auc(scores, member),
        confidence=cfg.confidence,
        canaries=cfg.canaries,
        included=int(member.sum()),
        guesses=bound.guesses,
        correct=bound.correct,
        frames=int(xs.shape[0]),
        rounds=cfg.rounds,
        epochs=cfg.epochs,
        noise_multiplier=sigma,
        hidden=list(cfg.hidden),
        seconds=time.perf_counter() - t0,
    )


def _train_plain(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AuditConfig, gen: torch.Generator
) -> None:
    """Non-private baseline: Adam, minibatches, ``epochs * rounds`` passes, no clipping."""
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    n = x.shape[0]
    for _ in range(cfg.epochs * cfg.rounds):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            ((net(x[idx]) - y[idx]) ** 2).mean().backward()
            opt.step()


def audit_site(site: Site, dataset_id: str, cfg: AuditConfig) -> AuditResult:
    """Audit on the training episodes of an enrolled dataset (the ClientApp's split)."""
    ref = fdata.dataset_ref(site, dataset_id)
    split = fdata.split_episodes(site, dataset_id)
    fr = fdata.load_frames(site, ref, split.train)
    return audit_frames(fr.state, fr.action, cfg)
