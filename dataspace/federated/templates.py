"""Model templates: the policies a contract may allow (DESIGN.md, Federated training).

A template names a model architecture and how frames become training pairs.
The registry's names (``bc-mlp``, ``bc-chunk``) are what a usage policy lists
as "allowed model templates", so a name, once published, must keep meaning the
same architecture.

Every policy is a :class:`Policy`: fixed normalisation buffers (set once per
run from differentially private statistics, see :mod:`.normalize`) around a
trainable ``net`` of Linear layers only. No BatchNorm (Opacus refuses it, and
batch statistics would leak across samples), no parameter sharing between
samples, so per-sample gradients are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dataspace.errors import NotFoundError


class Policy(nn.Module):
    """``net`` maps normalised inputs to normalised outputs; buffers hold the stats."""

    def __init__(self, net: nn.Sequential, state_dim: int, action_dim: int) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class Template:
    """An architecture: ``history`` past states in, ``chunk`` future actions out."""

    name: str
    description: str
    history: int = 1
    chunk: int = 1
    hidden: tuple[int, ...] = (256, 256)

    def in_features(self, state_dim: int) -> int:
        return self.history * state_dim

    def out_features(self, action_dim: int) -> int:
        return self.chunk * action_dim

    def build(self, state_dim: int, action_dim: int, seed: int = 0) -> Policy:
        """A freshly initialised policy; the same seed gives the same weights."""
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            layers: list[nn.Module] = []
            width = self.in_features(state_dim)
            for h in self.hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, self.out_features(action_dim)))
            return Policy(nn.Sequential(*layers), state_dim, action_dim)
        finally:
            torch.random.set_rng_state(gen_state)

    def pairs(
        self, state: torch.Tensor, action: torch.Tensor, episode: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pairs from normalised frames sorted by episode and frame.

        Input i is the ``history`` states ending at frame i, output i the
        ``chunk`` actions starting at frame i; both are padded inside the
        episode by repeating its first state / last action, never crossing
        into another episode.
        """
        n = state.shape[0]
        idx = torch.arange(n)
        # first and last frame index of each frame's episode
        change = torch.ones(n, dtype=torch.bool)
        change[1:] = episode[1:] != episode[:-1]
        starts = torch.cummax(torch.where(change, idx, torch.zeros_like(idx)), 0).values
        end_mark = torch.ones(n, dtype=torch.bool)
        end_mark[:-1] = episode[1:] != episode[:-1]
        ends = torch.flip(
            torch.cummin(
                torch.flip(torch.where(end_mark, idx, torch.full_like(idx, n)), [0]), 0
            ).values,
            [0],
        )
        past = [torch.maximum(idx - k, starts) for k in range(self.history - 1, -1, -1)]
        future = [torch.minimum(idx + k, ends) for k in range(self.chunk)]
        x = torch.cat([state[p] for p in past], dim=1)
        y = torch.cat([action[f] for f in future], dim=1)
        return x, y


REGISTRY: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            name="bc-mlp",
            description="behaviour cloning MLP: observation.state -> action (2x256, ReLU)",
        ),
        Template(
            name="bc-chunk",
            description=(
                "behaviour cloning with action chunking: the last 4 states -> "
                "the next 8 actions (MLP 2x256, ReLU)"
            ),
            history=4,
            chunk=8,
        ),
    )
}


def get_template(name: str) -> Template:
    """The template registered under ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise NotFoundError(f"unknown model template {name!r} (known: {known})") from None
