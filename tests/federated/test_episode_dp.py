"""The episode as privacy unit (site.toml [training] privacy_unit = "episode").

User-level DP-SGD over real Unitree G1 episodes: one whole episode moves the
clipped sum by at most C (a per-frame clipped sum does not hold that), the
noise is sigma C over the expected number of episodes, the accountant counts
episodes, statistics and losses are bounded per episode, and a simulated run
records the unit in every round.finished.
"""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from opacus.accountants import RDPAccountant

from dataspace.errors import DataspaceError
from dataspace.federated import dp, normalize
from dataspace.federated.noise import NoiseSource
from dataspace.federated.templates import get_template
from tests.conftest import UNITREE

#: real episodes of the G1 recording, of 290-504 frames each
EPISODES = list(range(0, 12))


@pytest.fixture(scope="module")
def g1() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """State, action and episode index of 12 real G1 episodes (sorted by episode, frame)."""
    states, actions, eps = [], [], []
    for e in EPISODES:
        t = pq.read_table(UNITREE / "data" / "chunk-000" / f"episode_{e:06d}.parquet")
        states.append(torch.tensor(t.column("observation.state").to_pylist()))
        actions.append(torch.tensor(t.column("action").to_pylist()))
        eps.append(torch.full((t.num_rows,), e, dtype=torch.long))
    state, action = torch.cat(states), torch.cat(actions)
    # normalised as a policy would see them (exact stats: fine in a test, never at a site)
    s = normalize.exact_stats(state, action)
    x = (state - torch.from_numpy(s.state_mean)) / torch.from_numpy(s.state_std)
    y = (action - torch.from_numpy(s.action_mean)) / torch.from_numpy(s.action_std)
    return x, y, torch.cat(eps)


def _settings(**kw) -> dp.TrainingSettings:
    kw.setdefault("privacy_unit", "episode")
    return dp.TrainingSettings(**kw)


def _flat(sums) -> torch.Tensor:
    return torch.cat([t.flatten() for pair in sums for t in pair])


def test_unknown_privacy_unit_is_a_typed_error():
    with pytest.raises(dp.PrivacyUnitError, match="privacy_unit='patient'") as e:
        dp.TrainingSettings.from_config({"training": {"privacy_unit": "patient"}})
    assert isinstance(e.value, DataspaceError)
    assert dp.TrainingSettings.from_config({}).privacy_unit == "frame"  # the default
    s = dp.TrainingSettings.from_config({"training": {"privacy_unit": "episode"}})
    assert (s.privacy_unit, s.frames_per_episode) == ("episode", 32)
    # a message states no unit: the site's setting alone decides it
    assert s.privacy_unit == "episode"
    with pytest.raises(dp.PrivacyPlanError, match="episode count"):
        dp.make_plan(8.0, 1e-5, 2, 5000, s)  # an episode plan needs the episodes


def test_one_episode_moves_the_clipped_sum_by_at_most_c(g1):
    """Zero noise, fixed draws: removing a whole episode changes the sum by <= C.

    Per frame, each of an episode's hundreds of frames is clipped to C on its own,
    so removing the episode moves the sum by far more than C: the frame-level
    guarantee says nothing about a whole episode.
    """
    x, y, ep = g1
    clip = 0.5
    net = get_template("bc-mlp").build(x.shape[1], y.shape[1], seed=3).net
    index = dp.EpisodeIndex.of(ep)
    assert len(index) == len(EPISODES) and int(index.lengths.min()) > 100
    everyone = torch.arange(len(index))
    idx, w = dp.episode_batch(index, everyone, 32, NoiseSource.seeded(0))
    assert idx.shape == (len(EPISODES), 32)  # long episodes: m frames drawn from each
    assert torch.allclose(w.sum(1), torch.ones(len(EPISODES)))
    assert all(ep[idx[j]].eq(ep[index.starts[j]]).all() for j in range(len(EPISODES)))
    full, losses = dp.episode_clipped_sums(net, x[idx], y[idx], w, clip)
    assert losses.shape == (len(EPISODES),)
    full = _flat(full)
    frame_full = _flat(
        dp.episode_clipped_sums(net, x[:, None], y[:, None], torch.ones(len(x), 1), clip)[0]
    )
    clipped_any = False
    for j in range(len(EPISODES)):
        keep = torch.tensor([i for i in range(len(EPISODES)) if i != j])
        without = _flat(dp.episode_clipped_sums(net, x[idx[keep]], y[idx[keep]], w[keep], clip)[0])
        moved = float((full - without).norm())
        assert moved <= clip * (1 + 1e-4), (j, moved)
        clipped_any |= moved > 0.99 * clip
        # the same episode removed from a per-frame clipped sum
        rest = ep != EPISODES[j]
        frame_without = _flat(
            dp.episode_clipped_sums(
                net, x[rest][:, None], y[rest][:, None], torch.ones(int(rest.sum()), 1), clip
            )[0]
        )
        assert float((frame_full - frame_without).norm()) > 5 * clip, j
    assert clipped_any  # the bound is the clip, not a gradient that happened to be small


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ghost"])
def test_bookkeeping_episode_clipping_equals_opacus(g1, mode):
    """Opacus, fed each episode as one [m, D] sample, clips exactly as our Gram norms do."""
    x, y, ep = g1
    plan = dp.make_plan(8.0, 1e-5, 1, x.shape[0], _settings(episodes_per_batch=6), len(EPISODES))
    params = {}
    for m in ("bk", mode):
        net = get_template("bc-mlp").build(x.shape[1], y.shape[1], seed=1).net
        gen = NoiseSource.seeded(5)
        r = dp.train_dp(
            net,
            x,
            y,
            plan,
            lr=0.1,
            rng=gen,
            mode=m,
            noise_multiplier=0.0,
            steps=2,
            episode=ep,
        )
        assert r.steps == 2 and 0 < r.samples <= 2 * len(EPISODES)  # samples are episodes
        params[m] = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert torch.allclose(params["bk"], params[mode], atol=1e-5)


def test_noise_is_sigma_c_over_the_expected_episodes(g1):
    """Same seed, same episodes drawn: DP minus clean update ~ N(0, (lr sigma C / (q E))^2)."""
    x, y, ep = g1
    plan = dp.make_plan(8.0, 1e-5, 1, x.shape[0], _settings(episodes_per_batch=4), len(EPISODES))
    assert plan.units == len(EPISODES) and plan.sample_rate == pytest.approx(1 / 3)
    out = {}
    for sigma in (1.7, 0.0):
        net = get_template("bc-mlp").build(x.shape[1], y.shape[1], seed=1).net
        gen = NoiseSource.seeded(11)
        dp.train_dp(net, x, y, plan, lr=0.1, rng=gen, noise_multiplier=sigma, steps=1, episode=ep)
        out[sigma] = torch.cat([p.detach().flatten() for p in net.parameters()])
    diff = out[1.7] - out[0.0]
    expected = 0.1 * 1.7 * plan.clip_norm / (plan.sample_rate * len(EPISODES))
    assert abs(diff.std().item() / expected - 1) < 0.05
    assert abs(diff.mean().item()) < 4 * expected / math.sqrt(diff.numel())


def test_accountant_counts_episodes_and_meets_the_contract():
    s = _settings(batch_size=256, frames_per_episode=32, local_steps=0)  # 8 a batch, by epochs
    plan = dp.make_plan(8.0, 1e-5, 4, 36_000, s, episodes=80)
    assert (plan.privacy_unit, plan.units, plan.batch_size) == ("episode", 80, 8)
    assert plan.sample_rate == pytest.approx(8 / 80) and plan.steps_per_round == 10
    total = plan.epsilon_after(4)
    assert 8.0 * 0.99 <= total <= 8.0
    assert sorted(plan.stats_release() + plan.round_release() * 4) == sorted(plan.history(4))
    acc = RDPAccountant()
    acc.history = plan.history(4)
    assert (plan.noise_multiplier, plan.sample_rate, 10) in acc.history
    assert math.isclose(acc.get_epsilon(1e-5, alphas=list(dp.ALPHAS)), total, rel_tol=1e-9)
    # far fewer units than frames: the same budget needs much more noise per step
    frames = dp.make_plan(8.0, 1e-5, 4, 36_000, dp.TrainingSettings())
    assert plan.noise_multiplier > frames.noise_multiplier


def test_statistics_and_losses_are_bounded_per_episode(g1):
    x, y, ep = g1
    state, action = x * 0.3, y * 0.3
    bound, d = 2.0, x.shape[1] + y.shape[1]
    zero = NoiseSource.seeded(0)
    full = normalize.dp_sums(state, action, bound, 0.0, zero, episode=ep)
    assert full.count == len(EPISODES)  # the count is in episodes
    net = get_template("bc-mlp").build(x.shape[1], y.shape[1], seed=0).net
    loss_full = dp.noisy_mean_loss(net, x, y, len(EPISODES), 1.0, 0.0, zero, episode=ep)
    for e in EPISODES:
        rest = ep != e
        part = normalize.dp_sums(state[rest], action[rest], bound, 0.0, zero, episode=ep[rest])
        assert float(torch.tensor(full.sum - part.sum).norm()) <= bound * math.sqrt(d) + 1e-9
        assert float(torch.tensor(full.sumsq - part.sumsq).norm()) <= bound**2 * math.sqrt(d)
        loss_part = dp.noisy_mean_loss(
            net, x[rest], y[rest], len(EPISODES) - 1, 1.0, 0.0, zero, episode=ep[rest]
        )
        assert abs(loss_full * len(EPISODES) - loss_part * (len(EPISODES) - 1)) <= 1.0 + 1e-9
    # the bound's histogram counts each episode once, in the bin of its largest |x|: one
    # glitched frame is 1 of ~5,000 frames (ignored) but makes its episode 1 of 12
    # (per coordinate: the glitched coordinate's bound only, every other keeps its own)
    glitch = state.clone()
    glitch[5, 0] = 900.0
    clean = normalize.dp_bound(state, action, 0.0, zero, episode=ep)
    assert clean.shape == (d,) and clean.max() <= 4.0
    assert normalize.dp_bound(glitch, action, 0.0, zero).max() <= 4.0
    per_episode = normalize.dp_bound(glitch, action, 0.0, zero, episode=ep)
    assert per_episode[0] == 1024.0 and (per_episode[1:] == clean[1:]).all()
    # each episode counts once in each coordinate's histogram: removing one moves the
    # D histograms by exactly sqrt(D) in L2, whatever its length (290-504 frames)
    hist = normalize.bound_histograms(state, action, ep)
    assert (hist.sum(1) == len(EPISODES)).all()
    for e in EPISODES[:3]:
        rest = ep != e
        part = normalize.bound_histograms(state[rest], action[rest], ep[rest])
        assert float((hist - part).norm()) == pytest.approx(math.sqrt(d))
    stats = normalize.combine([full], x.shape[1])
    assert abs(stats.state_mean - (state.mean(0)).numpy()).max() < 0.2  # episodes weigh equally


@pytest.mark.slow
def test_simulated_episode_run_charges_within_contract_and_records_the_unit(tmp_path):
    from dataspace.audit.events import parse_event
    from dataspace.audit.log import TransparencyLog
    from dataspace.cli import cli
    from dataspace.demo.federation import make_federation
    from dataspace.federated import RunSpec, train
    from dataspace.federated.report import write_report

    fed = make_federation(
        tmp_path / "fed", UNITREE, n_sites=2, epsilon=3.0, rounds=2,
        episodes_per_site=[range(0, 6), range(40, 46)],
    )  # fmt: skip
    for site in fed.sites:
        with open(site.config_path, "a") as f:
            f.write('\n[training]\nprivacy_unit = "episode"\nframes_per_episode = 16\n')
    spec = RunSpec(contracts=fed.contract_ids, rounds=2, out_dir=tmp_path / "run", seed=3)
    h = train(spec, fed.sites, "simulation")
    assert h["status"] == "finished"
    assert all(s["privacy_unit"] == "episode" for r in h["rounds"] for s in r["sites"])
    report = write_report(tmp_path / "run")
    assert report["privacy_unit"] == {d: "episode" for d in fed.dataset_ids}
    for site, dsid, cid in zip(fed.sites, fed.dataset_ids, fed.contract_ids, strict=True):
        with site.db(read_only=True) as con:
            charged = [r[0] for r in con.execute("SELECT epsilon FROM ledger").fetchall()]
        assert len(charged) == 3 and 0 < sum(charged) <= 3.0  # statistics and 2 rounds
        assert sum(charged) == pytest.approx(h["rounds"][-1]["epsilon"][dsid])
        # every round's reply counts episodes (metadata), not frames
        assert all(s["num_examples"] <= 6 for r in h["rounds"] for s in r["sites"])
        log = TransparencyLog.open(site.log_dir)
        finished = [
            e for e in map(parse_event, log.entries(0, log.size)) if e.kind == "round.finished"
        ]
        assert [e.fields["privacy_unit"] for e in finished] == ["episode"] * 3
        # the audit still verifies, and `audit show` states the unit
        res = CliRunner().invoke(
            cli, ["audit", "show", str(site.root), "--contract", cid, "--json"]
        )
        assert res.exit_code == 0, res.output
        shown = json.loads(res.output.strip().splitlines()[-1])
        assert shown["log_verifies"]
        # the statistics (round 0) and the two rounds, each a release with its unit
        assert [r["round"] for r in shown["rounds"]] == [0, 1, 2]
        assert [r["privacy_unit"] for r in shown["rounds"]] == ["episode"] * 3
        assert all(r["verifies"] for r in shown["rounds"])
