"""The consumer's side of a run's value: held-out loss on its own episodes, and
each dataset's contribution (GTG-Shapley, :mod:`dataspace.quality.contribution`).

The consumer keeps a few episodes of its own (never given to any site) as its
validation set. The server saved every site's reply of every round
(``OUT/rounds/NNN/updates/<dataset>.npz``) and the global model before it
(``OUT/rounds/NNN-1/global.npz``); a site's update is the difference. The
contribution of a dataset is its Shapley value of the decrease in validation
MSE, summed over rounds: "how much lower the consumer's loss is thanks to this
dataset", in normalised action units. ``OUT/contribution.json`` is what
:func:`dataspace.federated.report.write_report` plots.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dataspace.federated.normalize import normalised
from dataspace.federated.templates import Policy, get_template
from dataspace.schema import Episode

CONTRIBUTION = "contribution.json"


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k].copy() for k in z.files}


def _flat(arrays: dict[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
    return np.concatenate([arrays[k].reshape(-1).astype(np.float64) for k in keys])


class Validation:
    """MSE of a flat parameter vector on the consumer's own episodes."""

    def __init__(self, template: str, arrays: dict[str, np.ndarray], episodes: list[Episode]):
        self.keys = sorted(arrays)
        self.shapes = {k: arrays[k].shape for k in self.keys}
        s_dim, a_dim = episodes[0].state.shape[1], episodes[0].action.shape[1]
        self.template = get_template(template)
        self.policy: Policy = self.template.build(s_dim, a_dim)
        self.state = torch.from_numpy(np.concatenate([e.state for e in episodes]))
        self.action = torch.from_numpy(np.concatenate([e.action for e in episodes]))
        self.episode = torch.from_numpy(
            np.concatenate([np.full(e.frames, i) for i, e in enumerate(episodes)])
        )

    def unflat(self, theta: np.ndarray) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for k in self.keys:
            n = int(np.prod(self.shapes[k]))
            out[k] = torch.from_numpy(theta[i : i + n].reshape(self.shapes[k]).astype(np.float32))
            i += n
        return out

    @torch.no_grad()
    def loss(self, theta: np.ndarray) -> float:
        self.policy.load_state_dict(self.unflat(theta))
        xs, ys = normalised(self.policy, self.state, self.action)
        x, y = self.template.pairs(xs, ys, self.episode)
        return float(torch.mean((self.policy(x) - y) ** 2))


def run_contributions(
    out_dir: Path | str, template: str, episodes: list[Episode], permutations: int = 20
) -> dict[str, object]:
    """Contribution per dataset of the run in ``out_dir``; writes ``contribution.json``.

    Returns ``{"contribution": {dataset: value}, "split": {dataset: share},
    "validation_mse": {"initial", "final"}}``.
    """
    from dataspace.quality.contribution import contributions, revenue_split

    out = Path(out_dir)
    rounds = sorted(p for p in (out / "rounds").iterdir() if (p / "round.json").exists())
    g0 = _load(out / "rounds" / "000" / "global.npz")
    val = Validation(template, g0, episodes)
    keys = val.keys
    updates, weights = [], []
    prev = _flat(g0, keys)
    for rdir in rounds:
        rec = json.loads((rdir / "round.json").read_text())
        ups = {}
        for f in sorted((rdir / "updates").glob("*.npz")):
            ups[f.stem] = _flat(_load(f), keys) - prev
        updates.append(ups)
        weights.append({s["dataset-id"]: float(s["num_examples"]) for s in rec["sites"]})
        prev = _flat(_load(rdir / "global.npz"), keys)
    contrib = contributions(
        updates, weights, _flat(g0, keys), val.loss, permutations=permutations, seed=0
    )
    contrib = {str(k): float(v) for k, v in contrib.items()}
    result = {
        "contribution": contrib,
        "split": {str(k): float(v) for k, v in revenue_split(contrib).items()},
        "validation_mse": {"initial": val.loss(_flat(g0, keys)), "final": val.loss(prev)},
        "method": "GTG-Shapley over rounds, consumer's validation MSE",
    }
    (out / CONTRIBUTION).write_text(json.dumps(contrib, indent=2, sort_keys=True))
    (out / "value.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return result
