"""The central non-private baseline, tuned the way a practitioner would (issue 17).

Pooled training episodes, exact normalisation statistics, no DP, Adam. What a
practitioner tunes, and on what: the learning rate (a small grid) and the number of
epochs (early stopping), both chosen on a **validation split taken from the training
episodes** (a fixed share of them, whole episodes, drawn with a seed), never on the
test episodes or rollouts that the benchmark then reports. The model kept is the
checkpoint with the lowest validation MSE of the learning rate with the lowest
validation MSE.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from dataspace.federated import data as fdata
from dataspace.federated import normalize
from dataspace.federated.templates import Policy, get_template

#: the practitioner's grid of learning rates for Adam
LRS = (3e-4, 1e-3, 3e-3)
#: share of the training episodes held out for validation
VAL_SHARE = 0.15
BATCH = 256


@dataclass
class Tuned:
    policy: Policy
    lr: float
    epochs: int  # epochs of the checkpoint kept
    val_mse: float  # its validation MSE (normalised units)
    grid: dict[str, dict[str, float]] = field(default_factory=dict)


def split_validation(fr: fdata.Frames, share: float = VAL_SHARE, seed: int = 0):
    """Whole episodes of ``fr``: (train, validation), the validation ones drawn with ``seed``."""
    eps = torch.unique(fr.episode)
    g = torch.Generator().manual_seed(seed)
    n_val = max(1, round(share * len(eps)))
    val_eps = eps[torch.randperm(len(eps), generator=g)[:n_val]]
    is_val = torch.isin(fr.episode, val_eps)

    def take(mask: torch.Tensor) -> fdata.Frames:
        return fdata.Frames(fr.state[mask], fr.action[mask], fr.episode[mask])

    return take(~is_val), take(is_val)


def _pairs(policy: Policy, template: str, fr: fdata.Frames):
    xs, ys = normalize.normalised(policy, fr.state, fr.action)
    return get_template(template).pairs(xs, ys, fr.episode)


def tuned_central(
    train: fdata.Frames,
    template: str = "bc-mlp",
    max_epochs: int = 200,
    patience: int = 15,
    lrs: tuple[float, ...] = LRS,
    seed: int = 0,
    log=None,
) -> Tuned:
    """Adam on the pooled ``train`` frames; lr and epochs chosen on a validation split."""
    tr, val = split_validation(train, seed=seed)
    tmpl = get_template(template)
    stats = normalize.exact_stats(tr.state, tr.action)
    best: Tuned | None = None
    grid: dict[str, dict[str, float]] = {}
    for lr in lrs:
        policy = tmpl.build(train.state.shape[1], train.action.shape[1], seed=seed)
        normalize.apply_stats(policy, stats)
        x, y = _pairs(policy, template, tr)
        xv, yv = _pairs(policy, template, val)
        opt = torch.optim.Adam(policy.net.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        kept, kept_mse, kept_epoch, since = None, float("inf"), 0, 0
        for epoch in range(1, max_epochs + 1):
            for idx in torch.randperm(x.shape[0], generator=g).split(BATCH):
                opt.zero_grad()
                ((policy(x[idx]) - y[idx]) ** 2).mean().backward()
                opt.step()
            with torch.no_grad():
                v = float(((policy(xv) - yv) ** 2).mean())
            if v < kept_mse:
                kept, kept_mse, kept_epoch, since = copy.deepcopy(policy), v, epoch, 0
            else:
                since += 1
                if since >= patience:  # early stopping
                    break
        grid[f"{lr:g}"] = {"val_mse": kept_mse, "epochs": kept_epoch}
        if log:
            log(f"central lr {lr:g}: validation MSE {kept_mse:.5f} at epoch {kept_epoch}")
        if best is None or kept_mse < best.val_mse:
            assert kept is not None
            best = Tuned(policy=kept, lr=lr, epochs=kept_epoch, val_mse=kept_mse)
    assert best is not None
    best.grid = grid
    return best
