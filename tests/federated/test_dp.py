"""DP-SGD really adds the planned noise; the accountant's epsilon is the contract's."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from dataspace.federated import RunSpec, SimulationEngine, dp, normalize, train
from dataspace.federated.client_app import app as client_app
from dataspace.federated.local_grid import LocalGrid
from dataspace.federated.noise import NoiseSource
from dataspace.federated.server_app import RunError
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
    bounds = np.concatenate(
        [
            normalize.dp_bound(x[:, :3], x[:, 3:], plan.stats_noise, NoiseSource.seeded(s))
            for s in range(400)
        ]
    )
    # noise alone never passes for data far above it (a fixed 3-sigma rule did), and never
    # hides the data's top bin; the bin just above the data's passes at 3 sigma (the thin
    # tail rule, ADJACENT_SIGMAS): 0.13 % of coordinates, a bound twice the data's unit
    assert set(bounds.tolist()) <= {expected, 2 * expected}
    assert (bounds == expected).mean() >= 0.99


def test_dp_bound_clips_at_most_a_sliver_and_ignores_a_rare_outlier():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20000, 4, generator=g) * 0.3
    x[:5] = 1000.0  # five glitched frames must not set the scale of 20,000
    b = normalize.dp_bound(x[:, :2], x[:, 2:], 5.0, NoiseSource.seeded(0))
    assert b.shape == (4,) and (b <= 2.0).all()
    assert ((x[5:].abs() > torch.from_numpy(b).float()).float().mean(0) <= 0.01).all()


def test_dp_bound_of_a_site_too_small_for_the_noise_falls_back_to_all_coordinates():
    """A coordinate whose own histogram shows nothing above the noise takes the bound of
    the D histograms summed (D times the counts, sqrt(D) times the noise); when that
    shows nothing either, its fullest bin."""
    x = torch.rand(40, 4, generator=torch.Generator().manual_seed(3)) * 1.5 + 0.6  # (0.6, 2.1]
    counts = normalize.bound_histograms(x[:, :2], x[:, 2:])
    top = 2 - normalize.BOUND_EXPONENTS.start  # the bin (2, 4]: the values above 2
    # noise 3: a coordinate's bin stands out above 5 * 3 * sqrt(4) = 30 counts, the
    # sum's above 60; each coordinate holds at most 25 in (1, 2], the sum 92 there
    assert counts.max() < 30 and counts.sum(0).max() > 60 and counts.sum(0)[top] < 60
    b = normalize.dp_bound(x[:, :2], x[:, 2:], 3.0, NoiseSource.seeded(0))
    assert b.tolist() == [2.0] * 4
    b = normalize.dp_bound(x[:, :2], x[:, 2:], 100.0, NoiseSource.seeded(0))
    assert len(set(b.tolist())) == 1  # noise only: one bound, still a power of two
    assert b[0] in {2.0**k for k in normalize.BOUND_EXPONENTS}


def _sites(n: int = 3100, sites: int = 3):
    """The reacher's federation in shape (3 sites x 3,100 frames, 10 + 2 coordinates): a
    target-like coordinate of scale 0.05 next to a velocity-like one of scale 16."""
    g = torch.Generator().manual_seed(5)
    for _ in range(sites):
        s, a = torch.randn(n, 10, generator=g), torch.randn(n, 2, generator=g) * 0.2
        s[:, 0] *= 0.05
        s[:, 1] *= 16.0
        yield s, a


@pytest.mark.parametrize("share", [dp.STATS_SHARE, 0.05], ids=["default-share", "5%"])
def test_a_small_coordinate_keeps_its_scale_next_to_a_large_one(share):
    """Per-coordinate bounds: the scale-0.05 coordinate's DP std is within 20 % of the
    true one at the plan's real noise (epsilon 8; also at the noisier 5 % share of
    before); one bound for all (the largest coordinate's) gave it a std 70 times too
    large, below DP-SGD's noise."""
    z = dp.make_plan(8.0, 1e-5, 10, 3100, dp.TrainingSettings(stats_share=share)).stats_noise
    assert z > (15 if share == 0.05 else 4)  # 4 releases in that share of epsilon 8
    data = list(_sites())
    rng = NoiseSource.seeded(0)
    bounds = [normalize.dp_bound(s, a, z, rng) for s, a in data]
    assert all(b[0] <= 0.25 and b[1] >= 32 for b in bounds)  # each coordinate its own unit
    per = normalize.combine(
        [normalize.dp_sums(s, a, b, z, rng) for (s, a), b in zip(data, bounds, strict=True)], 10
    )
    one = normalize.combine(
        [
            normalize.dp_sums(s, a, float(b.max()), z, rng)
            for (s, a), b in zip(data, bounds, strict=True)
        ],
        10,
    )
    true = torch.cat([torch.cat([s, a], 1) for s, a in data]).std(0).numpy()
    got = np.concatenate([per.state_std, per.action_std])
    assert np.abs(got / true - 1).max() < 0.2, got / true
    assert abs(per.state_mean[0]) < 0.2 * true[0]  # the mean too, within its noise
    assert one.state_std[0] / true[0] > 10  # what the single bound did


@pytest.mark.parametrize("unit", ["frame", "episode"])
def test_each_release_moves_by_at_most_its_stated_sensitivity(unit):
    """Removing one unit (a frame, or an episode) with zero noise moves the count by <= 1
    and the histograms, ``sum x_j / B_j`` and ``sum (x_j / B_j)^2`` by <= sqrt(D) in L2
    (module docstring of normalize); an extreme unit attains it. With noise ``z`` each
    coordinate's sums then differ from the exact ones by ``N(0, (z sqrt(D) B_j)^2)``."""
    g = torch.Generator().manual_seed(6)
    n, d = 60, 5
    s, a = torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g) * 0.1
    s[4:8] = torch.tensor([1e3, -1e3, 1e3])  # extreme units: every coordinate clipped
    a[4:8] = torch.tensor([-1e3, 1e3])  # (frames 4-7, the whole of episode 1)
    ep = torch.arange(n) // 4 if unit == "episode" else None
    units = n // 4 if unit == "episode" else n
    bound = np.array([0.5, 2.0, 4.0, 0.125, 0.25])
    zero = NoiseSource.seeded(0)
    full = normalize.dp_sums(s, a, bound, 0.0, zero, episode=ep)
    hist = normalize.bound_histograms(s, a, ep)
    assert full.count == units and (hist.sum(1) == units).all()  # one count a row
    moves = []
    for u in range(units):
        keep = (ep != u) if ep is not None else (torch.arange(n) != u)
        part = normalize.dp_sums(
            s[keep], a[keep], bound, 0.0, zero, episode=None if ep is None else ep[keep]
        )
        moves.append(
            (
                full.count - part.count,
                np.linalg.norm((full.sum - part.sum) / bound),
                np.linalg.norm((full.sumsq - part.sumsq) / bound**2),
                float(
                    (
                        hist
                        - normalize.bound_histograms(
                            s[keep], a[keep], None if ep is None else ep[keep]
                        )
                    ).norm()
                ),
            )
        )
    moves = np.array(moves)
    assert (moves[:, 0] == 1).all()
    assert (moves[:, 1:] <= math.sqrt(d) + 1e-9).all()
    extreme = 1 if unit == "episode" else 7
    assert moves[extreme, 1:] == pytest.approx([math.sqrt(d)] * 3)  # attained: tight
    # the noise is the sensitivity times z, per coordinate in the data's units
    z, draws = 2.5, []
    for seed in range(300):
        noisy = normalize.dp_sums(s, a, bound, z, NoiseSource.seeded(seed), episode=ep)
        draws.append((noisy.sum - full.sum) / (z * math.sqrt(d) * bound))
        draws.append((noisy.sumsq - full.sumsq) / (z * math.sqrt(d) * bound**2))
    draws = np.array(draws)
    assert abs(draws.std() - 1) < 0.05 and abs(draws.mean()) < 0.05


def test_released_statistics_from_the_wire_are_checked():
    """A reply (or a ledger entry) is read back only when well formed: exactly D sums,
    D finite positive bounds (or one: a release of the older format, the same bound for
    every coordinate, whose numbers read unchanged), finite count and noise."""
    d = 4
    ok = {
        "count": 10.0,
        "sum": [1.0] * d,
        "sumsq": [2.0] * d,
        "bound": [1.0, 2.0, 4.0, 8.0],
        "noise": 3.0,
    }
    got = normalize.NoisySums.from_lists(ok, d)
    assert got.bound.tolist() == [1.0, 2.0, 4.0, 8.0] and got.to_lists() == ok
    old = normalize.NoisySums.from_lists(ok | {"bound": 4.0}, d)
    assert old.bound.tolist() == [4.0] * d and old.sum.tolist() == ok["sum"]
    # the older format's numbers mean what they meant: one bound B, sums in data units
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(8))
    now = normalize.dp_sums(x[:, :2], x[:, 2:], 4.0, 1.0, NoiseSource.seeded(1))
    before = now.to_lists() | {"bound": 4.0}
    a = normalize.combine([normalize.NoisySums.from_lists(before, d)], 2)
    b = normalize.combine([now], 2)
    for f in ("state_mean", "state_std", "action_mean", "action_std"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    bad = [
        {"bound": [1.0, 2.0, 4.0]},  # one short
        {"bound": [1.0] * (d + 1)},  # one too many
        {"bound": [1.0, 2.0, float("nan"), 8.0]},
        {"bound": [1.0, -2.0, 4.0, 8.0]},
        {"bound": [1.0, 0.0, 4.0, 8.0]},
        {"bound": 1e300},  # a scale that would overflow
        {"bound": [[1.0, 2.0], [4.0, 8.0]]},
        {"bound": ["1", "2", "4", "8"]},
        {"bound": [True, 1.0, 1.0, 1.0]},
        {"sum": [1.0] * (d - 1)},
        {"sumsq": [1.0, 2.0, float("inf"), 1.0]},
        {"count": float("nan")},
        {"noise": -1.0},
        {"noise": [1.0, 2.0]},
    ]
    for change in bad:
        with pytest.raises(normalize.StatsFormatError):
            normalize.NoisySums.from_lists(ok | change, d)
    with pytest.raises(normalize.StatsFormatError, match="without bound"):
        normalize.NoisySums.from_lists({k: v for k, v in ok.items() if k != "bound"}, d)


def test_a_site_toml_stats_bound_is_checked_before_anything_is_charged():
    assert dp.TrainingSettings.from_config({"training": {"stats_bound": 4}}).stats_bound == 4
    for b in (0, -1.0, float("inf"), "4", 1e30, True):
        with pytest.raises(dp.PrivacyPlanError, match="stats_bound"):
            dp.TrainingSettings.from_config({"training": {"stats_bound": b}})


def test_fixed_bound_costs_three_releases_auto_four_within_the_same_share():
    fixed = dp.make_plan(8.0, 1e-5, 4, 5000, dp.TrainingSettings(stats_bound=2.0))
    auto = dp.make_plan(8.0, 1e-5, 4, 5000, dp.TrainingSettings())
    assert (fixed.stats_releases, auto.stats_releases) == (3, 4)
    assert auto.stats_noise > fixed.stats_noise  # one more release in the same share
    for plan in (fixed, auto):
        assert math.isclose(
            dp.epsilon_of([plan.history(0)[0]], 1e-5), dp.STATS_SHARE * 8.0, rel_tol=0.02
        ), plan
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


class _TamperingGrid(LocalGrid):
    """A LocalGrid whose first statistics reply is rewritten by ``tamper`` (a hostile or
    broken site, or a release of the older format)."""

    def __init__(self, *a, tamper, **k) -> None:
        super().__init__(*a, **k)
        self.tamper = tamper
        self.done = False

    def push_messages(self, messages):
        ids = list(super().push_messages(messages))
        for i in ids:
            r = self._replies[i]
            if not self.done and not r.has_error() and "sums" in r.content:
                self.tamper(r.content["sums"])
                self.done = True
        return ids


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad",
    [
        {"bound": [4.0, 4.0]},
        {"bound": "4"},
        {"bound": [float("nan")] * 52},
        {"sum": [0.0] * 51},
        {"sumsq": [float("inf")] * 52},
    ],
)
def test_the_server_refuses_a_sites_malformed_statistics(federation, tmp_path, bad):
    """Wrong widths or values that are not finite positive numbers stop the run at the
    statistics round (a RunError naming the site), never enter a model."""
    fed = federation(
        epsilon=3.0, rounds=1, n_sites=2, episodes_per_site=[range(0, 2), range(40, 42)]
    )

    def tamper(sums):
        for k, v in bad.items():
            sums[k] = v

    grid = _TamperingGrid(client_app, [s.root for s in fed.sites], tamper=tamper)
    out = tmp_path / "run"
    spec = RunSpec(contracts=fed.contract_ids, rounds=1, out_dir=out, seed=1)
    with pytest.raises(RunError, match="malformed statistics"):
        train(spec, fed.sites, SimulationEngine(grid=grid))
    assert not (out / "stats.json").exists() and not (out / "rounds").exists()


@pytest.mark.slow
def test_a_release_of_the_older_format_is_still_read(federation, tmp_path):
    """A site's ledger may hold statistics released before per-coordinate bounds (one
    scalar bound, sums in data units): re-sent to a new run, the server and the site read
    it as that bound for every coordinate, and the run trains."""
    fed = federation(
        epsilon=3.0, rounds=2, n_sites=2, episodes_per_site=[range(0, 2), range(40, 42)]
    )
    first = train(
        RunSpec(contracts=fed.contract_ids, rounds=1, out_dir=tmp_path / "a", seed=1),
        fed.sites,
        "simulation",
    )
    assert first["status"] == "finished"
    site = fed.sites[0]
    with site.db() as con:
        (payload,) = con.execute("SELECT payload FROM ledger WHERE release = 'stats'").fetchone()
        new = json.loads(payload)
        assert isinstance(new["bound"], list) and len(new["bound"]) == 52
        old = new | {"bound": max(new["bound"])}  # what the older release looked like
        con.execute("UPDATE ledger SET payload = ? WHERE release = 'stats'", [json.dumps(old)])
    second = train(
        RunSpec(contracts=fed.contract_ids, rounds=1, out_dir=tmp_path / "b", seed=2),
        fed.sites,
        "simulation",
    )
    assert second["status"] == "finished"
    with site.db(read_only=True) as con:  # re-sent, not released again
        assert con.execute("SELECT count(*) FROM ledger WHERE release = 'stats'").fetchone() == (1,)
    # the pooled statistics are the older release read with the broadcast bound
    parts = [
        normalize.NoisySums.from_lists(old if site_ is site else json.loads(_payload(site_)), 52)
        for site_ in fed.sites
    ]
    expected = normalize.combine(parts, 26)
    with np.load(tmp_path / "b" / "rounds" / "000" / "global.npz") as z:
        assert np.allclose(z["state_std"], expected.state_std)
        assert np.allclose(z["action_mean"], expected.action_mean)


def _payload(site) -> str:
    with site.db(read_only=True) as con:
        return con.execute("SELECT payload FROM ledger WHERE release = 'stats'").fetchone()[0]
