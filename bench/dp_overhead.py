"""DP-SGD step time / non-private step time for ``bc-mlp`` (issue 5 benchmark).

Same model (26 -> 256 -> 256 -> 26, the Unitree G1 shape), same batch (256
frames), same process, one torch thread. Modes: our book-keeping clipping
("bk", the default at sites, its noise from the site's secret ChaCha20 source as
in a real round), the same with torch's Mersenne Twister noise ("bk-mt": what the
secret noise costs; predictable noise, never used at a site), Opacus hooks,
functorch and ghost clipping (Opacus's default noise, torch's generator).
Prints progress on stderr and, last on stdout, one JSON object:
``{"ratio": bk / plain (what a site runs), "best_mode": ..., "modes": {mode: ratio}, ...}``
(Opacus's modes draw torch's predictable noise, so their ratios are not what a
site would pay with them).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from dataspace.federated import dp
from dataspace.federated.noise import NoiseSource
from dataspace.federated.templates import get_template

torch.set_num_threads(1)
B, S, A, STEPS, REPEATS = 256, 26, 26, 60, 5


class TorchNoise:
    """torch's Mersenne Twister behind NoiseSource's interface: the bench's comparison of
    what secret noise costs (predictable from its seed: never at a site)."""

    def __init__(self) -> None:
        self.g = torch.Generator().manual_seed(0)

    def normal(self, shape, dtype=torch.float32, draws=1):
        return torch.randn(tuple(shape), generator=self.g, dtype=dtype)


def _time(step, steps=STEPS) -> float:
    for _ in range(5):
        step()
    best = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best.append((time.perf_counter() - t) / steps)
    return statistics.median(best)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    xb, yb = torch.randn(B, S, generator=g), torch.randn(B, A, generator=g)
    tmpl = get_template("bc-mlp")

    net = tmpl.build(S, A, seed=1).net
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def plain():
        opt.zero_grad(set_to_none=True)
        ((net(xb) - yb) ** 2).mean().backward()
        opt.step()

    results = {"plain": _time(plain)}
    print(f"plain: {results['plain'] * 1e3:.3f} ms/step", file=sys.stderr)

    bk_net = tmpl.build(S, A, seed=1).net
    rng = NoiseSource.seeded(0)  # the site's secret ChaCha20 noise, as in a real round

    def bk():
        dp.bk_step(bk_net, xb, yb, 1.0, 1.0, 0.1, float(B), rng)

    results["bk"] = _time(bk)
    print(f"bk: {results['bk'] * 1e3:.3f} ms/step", file=sys.stderr)

    mt_net = tmpl.build(S, A, seed=1).net
    mt = TorchNoise()

    def bk_mt():
        dp.bk_step(mt_net, xb, yb, 1.0, 1.0, 0.1, float(B), mt)

    results["bk-mt"] = _time(bk_mt)
    print(f"bk-mt: {results['bk-mt'] * 1e3:.3f} ms/step", file=sys.stderr)

    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    for mode in ("hooks", "functorch", "ghost"):
        m = tmpl.build(S, A, seed=1).net
        if mode == "ghost":
            gsm = GradSampleModuleFastGradientClipping(
                m, max_grad_norm=1.0, use_ghost_clipping=True, loss_reduction="mean"
            )
            o = DPOptimizerFastGradientClipping(
                torch.optim.SGD(gsm.parameters(), lr=0.1), noise_multiplier=1.0,
                max_grad_norm=1.0, expected_batch_size=B, loss_reduction="mean",
            )  # fmt: skip
            crit = DPLossFastGradientClipping(gsm, o, dp.PerSampleMSE("mean"), "mean")
        else:
            gsm = GradSampleModule(m, force_functorch=mode == "functorch")
            o = DPOptimizer(
                torch.optim.SGD(gsm.parameters(), lr=0.1), noise_multiplier=1.0,
                max_grad_norm=1.0, expected_batch_size=B,
            )  # fmt: skip
            crit = dp.PerSampleMSE("mean")

        def step(gsm=gsm, o=o, crit=crit):
            o.zero_grad(set_to_none=True)
            crit(gsm(xb), yb).backward()
            o.step()

        results[mode] = _time(step, steps=20)
        print(f"{mode}: {results[mode] * 1e3:.3f} ms/step", file=sys.stderr)

    ratios = {k: v / results["plain"] for k, v in results.items() if k != "plain"}
    best = min((k for k in ratios if k != "bk-mt"), key=ratios.get)
    print(
        json.dumps(
            {
                "ratio": round(ratios["bk"], 3),
                "best_mode": best,
                "modes": {k: round(v, 3) for k, v in ratios.items()},
                "ms_per_step": {k: round(v * 1e3, 4) for k, v in results.items()},
                "batch": B,
                "model": f"bc-mlp {S}-256-256-{A}",
                "threads": 1,
            }
        )
    )


if __name__ == "__main__":
    main()
