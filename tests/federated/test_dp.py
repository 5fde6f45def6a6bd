"""DP-SGD really adds the planned noise; the accountant's epsilon is the contract's."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from dataspace.federated import dp, normalize
from dataspace.federated.noise import NoiseSource
from dataspace.federated.templates import get_template


def _data(n=2000, s=8, a=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, s, generator=g)
    y = torch.tanh(x[:, :a] * 2) + 0.1 * torch.randn(n, a, generator=g)
    return x, y


@pytest.mark.parametrize("eps", [8.0, 1.0])
def test_plan_epsilon_matches_contract_and_opacus(eps):
    plan = dp.make_plan(eps, 1e-5, 4, 5000, dp.TrainingSettings())
    total = plan.epsilon_after(4)
    assert eps * 0.99 <= total <= eps
    # the history is the statistics and four rounds, as the ledger charges them
    releases = plan.stats_release() + plan.round_release() * 4
    assert sorted(releases) == sorted(plan.history(4))
    # the same history in Opacus's own RDP accountant gives the same epsilon
    acc = RDPAccountant()
    acc.history = plan.history(4)
    assert math.isclose(acc.get_epsilon(1e-5, alphas=list(dp.ALPHAS)), total, rel_tol=1e-9)
    # and its default orders give a (slightly tighter) bound within the contract
    assert acc.get_epsilon(1e-5) <= eps


def test_a_message_may_repeat_the_sites_mechanism_never_change_it():
    s = dp.TrainingSettings(max_epochs=2, clip_norm=1.0)
    s.check_request(epochs=2, clip_norm=1.0)
    s.check_request(epochs=None, clip_norm=0)  # not stated
    for epochs, clip in [(1, None), (5, None), (None, 0.5), (None, 3.0), (True, None), (2.0, 1)]:
        with pytest.raises(dp.MechanismError):
            s.check_request(epochs=epochs, clip_norm=clip)


def _one_step(mode, sigma, seed=7):
    x, y = _data()
    net = get_template("bc-mlp").build(8, 4, seed=1).net
    plan = dp.make_plan(8.0, 1e-5, 1, x.shape[0], dp.TrainingSettings(batch_size=200))
    rng = NoiseSource.seeded(seed)
    dp.train_dp(net, x, y, plan, lr=0.1, rng=rng, mode=mode, noise_multiplier=sigma, steps=1)
    return torch.cat([p.detach().flatten() for p in net.parameters()]), plan


def test_dp_update_differs_by_the_expected_noise_scale():
    """Same seed, same Poisson batch: DP minus non-private update ~ N(0, (lr sigma C / B)^2)."""
    sigma = 1.3
    private, plan = _one_step("bk", sigma)
    clean, _ = _one_step("bk", 0.0)
    diff = private - clean
    expected = 0.1 * sigma * plan.clip_norm / (plan.sample_rate * 2000)
    assert diff.abs().max() > 0
    assert abs(diff.std().item() / expected - 1) < 0.05
    assert abs(diff.mean().item()) < 4 * expected / math.sqrt(diff.numel())


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_bookkeeping_clipping_equals_opacus(mode):
    """Without noise our book-keeping clipping gives Opacus's clipped update exactly."""
    bk, _ = _one_step("bk", 0.0)
    op, _ = _one_step(mode, 0.0)
    assert torch.allclose(bk, op, atol=1e-5), (bk - op).abs().max()


def test_dp_normalisation_is_noised_but_close():
    x, y = _data(n=20000)
    rng = NoiseSource.seeded(0)
    a = normalize.dp_sums(x, y, bound=10.0, noise_multiplier=5.0, rng=rng)
    b = normalize.dp_sums(x, y, bound=10.0, noise_multiplier=5.0, rng=rng)
    assert a.count != 20000 and a.count != b.count  # never exact
    stats = normalize.combine([a], 8)
    exact = normalize.exact_stats(x, y)
    assert abs(stats.state_mean - exact.state_mean).max() < 0.05
    assert abs(stats.state_std / exact.state_std - 1).max() < 0.3


@pytest.mark.parametrize(("scale", "expected"), [(1.36, 2.0), (99.5, 128.0), (250.0, 256.0)])
def test_dp_bound_finds_the_datas_unit(scale, expected):
    """The units of the shared recordings: G1 in radians, SO-101 in +-100, bimanual +-250."""
    g = torch.Generator().manual_seed(1)
    n = 1500  # the size of the SO-101 recording
    x = (torch.rand(n, 6, generator=g) * 2 - 1) * scale
    x[0, 0] = scale  # the data reaches its extreme
    plan = dp.make_plan(8.0, 1e-5, 5, n, dp.TrainingSettings())
    assert plan.stats_releases == 4  # the histogram is paid for
    bounds = {
        normalize.dp_bound(x[:, :3], x[:, 3:], plan.stats_noise, NoiseSource.seeded(s))
        for s in range(400)  # noise alone must never pass for data (a fixed 3-sigma rule did)
    }
    assert bounds == {expected}


def test_dp_bound_clips_at_most_a_sliver_and_ignores_a_rare_outlier():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20000, 4, generator=g) * 0.3
    x[:5] = 1000.0  # five glitched frames must not set the scale of 20,000
    b = normalize.dp_bound(x[:, :2], x[:, 2:], 20.0, NoiseSource.seeded(0))
    assert b <= 2.0
    assert (x[5:].abs().amax(1) > b).float().mean() <= 0.01


def test_dp_bound_of_a_site_too_small_for_the_noise_is_its_fullest_bin():
    x = torch.rand(40, 4, generator=torch.Generator().manual_seed(3)) * 1.5 + 0.6  # (0.6, 2.1]
    b = normalize.dp_bound(x[:, :2], x[:, 2:], 1.0, NoiseSource.seeded(0))
    assert b == 4.0  # 5 sigma = 5 frames; about 10 frames peak in (2, 4], above 1 % of 40
    b = normalize.dp_bound(x[:, :2], x[:, 2:], 100.0, NoiseSource.seeded(0))
    assert b in {2.0**k for k in normalize.BOUND_EXPONENTS}  # noise only: still a bound


def test_fixed_bound_costs_three_releases_auto_four_within_the_same_share():
    fixed = dp.make_plan(8.0, 1e-5, 4, 5000, dp.TrainingSettings(stats_bound=2.0))
    auto = dp.make_plan(8.0, 1e-5, 4, 5000, dp.TrainingSettings())
    assert (fixed.stats_releases, auto.stats_releases) == (3, 4)
    assert auto.stats_noise > fixed.stats_noise  # one more release in the same 5 % share
    for plan in (fixed, auto):
        assert math.isclose(dp.epsilon_of([plan.history(0)[0]], 1e-5), 0.05 * 8.0, rel_tol=0.02), (
            plan
        )
        assert 8.0 * 0.99 <= plan.epsilon_after(4) <= 8.0


def test_a_unit_that_overflows_contributes_nothing_and_decides_for_no_other():
    """Crafted weights can overflow some frames only: such a unit (frame, or episode) adds
    nothing to the clipped sum, and no other unit's contribution changes, not even the
    padding rows of short episodes, which repeat the batch's frame 0 (here the bad one)."""
    net = get_template("bc-mlp").build(4, 2, seed=0).net
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(9, 4, generator=g), torch.randn(9, 2, generator=g)
    x[0] = 1e30  # overflows the first layer: inf activations, NaN gradients
    # episodes: [0, 1, 2] (holds the bad frame 0), [3, 4], [5, 6, 7, 8]; m = 4 pads the short
    index = dp.EpisodeIndex.of(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2]))
    idx, w = dp.episode_batch(index, torch.arange(3), 4, NoiseSource.seeded(0))
    assert (idx[1, 2:] == 0).all() and (w[1, 2:] == 0).all()  # padding points at frame 0

    def flat(sums):
        return torch.cat([torch.cat([a.ravel(), b.ravel()]) for a, b in sums])

    everyone, _ = dp.episode_clipped_sums(net, x[idx], y[idx], w, 1.0)
    without, _ = dp.episode_clipped_sums(net, x[idx[1:]], y[idx[1:]], w[1:], 1.0)
    assert torch.isfinite(flat(everyone)).all()
    # equal up to float summation order (a batch of another shape may block its matmuls
    # differently: last-bit differences); a contribution of the bad unit would be >= 1e-3
    assert torch.allclose(flat(everyone), flat(without), rtol=1e-4, atol=1e-6)
    # per frame (m = 1): the bad frame alone is left out
    ones = torch.ones(9, 1)
    frames, _ = dp.episode_clipped_sums(net, x[:, None], y[:, None], ones, 1.0)
    rest, _ = dp.episode_clipped_sums(net, x[1:, None], y[1:, None], ones[1:], 1.0)
    assert torch.isfinite(flat(frames)).all() and torch.allclose(flat(frames), flat(rest))
