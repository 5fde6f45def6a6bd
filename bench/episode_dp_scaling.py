"""How many episodes does a per-episode guarantee need? (issue 5, privacy_unit analysis)

Analysis, not a target: one DP-SGD training (``dataspace.federated.dp.train_dp``,
bk mode) on the pooled train episodes of the fl_utility split (Unitree G1, 3 sites),
with the unit of privacy varied: frames (``privacy_unit = "frame"``), the real
episodes, and the real episodes cut into pseudo-episodes of 128 and 32 frames
(the same data seen as more, shorter units). Normalisation uses the exact
statistics (never at a site; here to isolate DP-SGD from the DP statistics, which
fl_utility shows fail first). eps 8, delta 1e-5, the holders' fl_utility settings
(expected batch 1024 frames or 1024 / 32 = 32 units, 4 epochs a round, 10 rounds);
the learning rate is the best of a small sweep on the held-out set (optimistic for
every unit alike). Held-out MSE in raw action units over the held-out episodes.
Last stdout line: ``{"ratio": episode MSE / frame MSE, ...}``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fl_utility import UNITREE, central, frames, mse

from dataspace.demo.federation import make_federation
from dataspace.federated import dp, normalize
from dataspace.federated.noise import NoiseSource
from dataspace.federated.templates import get_template

torch.set_num_threads(1)
LRS = (0.01, 0.05, 0.2, 1.0, 2.0)
ROUNDS, EPOCHS, BATCH = 10, 4, 1024


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def pseudo(episode: torch.Tensor, length: int | None) -> torch.Tensor:
    """Episode ids cut into consecutive pieces of ``length`` frames (None: as recorded)."""
    if length is None:
        return episode
    _, counts = torch.unique_consecutive(episode, return_counts=True)
    pos = torch.cat([torch.arange(int(c)) for c in counts]) // length
    _, ids = torch.unique_consecutive(episode * 100_000 + pos, return_inverse=True)
    return ids


def train(train_fr, held, unit: str, length: int | None, lr: float) -> tuple[float, dp.PrivacyPlan]:
    tmpl = get_template("bc-mlp")
    policy = tmpl.build(train_fr.state.shape[1], train_fr.action.shape[1], seed=0)
    normalize.apply_stats(policy, normalize.exact_stats(train_fr.state, train_fr.action))
    xs, ys = normalize.normalised(policy, train_fr.state, train_fr.action)
    x, y = tmpl.pairs(xs, ys, train_fr.episode)
    ep = pseudo(train_fr.episode, length)
    n_units = int(torch.unique_consecutive(ep).numel())
    s = dp.TrainingSettings(batch_size=BATCH, max_epochs=EPOCHS, privacy_unit=unit, local_steps=0)
    plan = dp.make_plan(8.0, 1e-5, ROUNDS, x.shape[0], s, episodes=n_units)
    gen = NoiseSource.seeded(0)
    for _ in range(ROUNDS):
        dp.train_dp(policy.net, x, y, plan, lr=lr, rng=gen, episode=ep)
    return mse(policy, held), plan


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ref = make_federation(Path(tmp) / "ref", UNITREE, epsilon=1.0, rounds=1)
        train_fr, held = frames(ref, "train"), frames(ref, "heldout")
    base = mse(central(train_fr), held)
    log(f"central non-private {base:.5f}; train frames {len(train_fr)}")
    out: dict = {"central_mse": base, "units": {}}
    for name, unit, length in (
        ("frame", "frame", None),
        ("episode", "episode", None),
        ("pseudo-128", "episode", 128),
        ("pseudo-32", "episode", 32),
    ):
        t = time.perf_counter()
        best = None
        for lr in LRS:
            m, plan = train(train_fr, held, unit, length, lr)
            m = m if m == m else float("inf")  # NaN: diverged
            if best is None or m < best[0]:
                best = (m, lr)
        out["units"][name] = {
            "mse": best[0],
            "lr": best[1],
            "ratio_central": round(best[0] / base, 3),
            "units": plan.units,
            "noise_multiplier": round(plan.noise_multiplier, 3),
            "expected_batch": round(plan.sample_rate * plan.units, 1),
        }
        log(f"{name}: {out['units'][name]} ({time.perf_counter() - t:.0f}s)")
    out["ratio"] = round(out["units"]["episode"]["mse"] / out["units"]["frame"]["mse"], 3)
    out.update(epsilon=8.0, delta=1e-5, rounds=ROUNDS, epochs=EPOCHS, batch_frames=BATCH, lrs=LRS)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
