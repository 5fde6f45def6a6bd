"""Issue 18: quality checks that hold on data nobody tuned them on.

The statistical checks' floors and fractions (quality/suite.py) were chosen on
the shared recordings (so101, unitree-g1, bimanual). Here they run on simulated
robots with scripted experts that none of them was chosen on
(dataspace.quality.synthetic: a planar arm under PD torque control, a mobile
base with saturated commands, a bang-bang gantry, a joystick-teleoperated arm, a
visual-servo pan-tilt head, a quadruped leg under impedance control):
idle phases, slow motions, saturated and on/off commands and command jitter
must raise (almost) no flag, and every planted defect must be found. The same
sources, with more episodes and seeds, are bench/quality_detect.py's held-out
sources (bench/RESULTS.md, issue 18).

The adversary is a holder gaming its own score; what was tried is at the end,
with the attempts that did not hold marked ``xfail(strict=True)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dataspace.quality import inject, synthetic
from dataspace.quality.check import _dataset, layout_for, run_checks
from dataspace.quality.suite import (
    CHECKS,
    HARD_CHECKS,
    MAX_ACTION_ROUGHNESS,
    QualityError,
    declared_ranges,
    run_suites,
)
from dataspace.quality.value import quality_adjusted, report_usable_share, usable_share
from dataspace.schema import Episode
from dataspace.site import create_site

#: a seed no benchmark run uses (bench/quality_detect.py: 0, 1, 2)
SEED = 7
EPISODES = 40
STATISTICAL = [c for c in CHECKS if c not in HARD_CHECKS]
#: every held-out source (quadruped_leg, session 7, was left out here while that
#: session's rules changed, and added once they were settled)
HELDOUT = tuple(synthetic.SOURCES)


def _plan(n: int) -> dict[int, str]:
    """Two episodes per corruption kind, disjoint."""
    order = [int(i) for i in np.random.default_rng(SEED).permutation(n)]
    return {order[i]: inject.KINDS[i % len(inject.KINDS)] for i in range(2 * len(inject.KINDS))}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Each held-out source: clean episodes, their check, the corrupted copy and its check."""
    site = create_site(tmp_path_factory.mktemp("heldout") / "site", org="heldout")
    out = {}
    for name in HELDOUT:
        src = synthetic.SOURCES[name]
        eps = synthetic.episodes(name, EPISODES, SEED)
        declared = src.declared  # what its maker states (pan_tilt: the image's extent)
        clean = run_checks(
            site,
            inject.write_dataset(site, f"{name}-clean", eps, fps=src.fps, declared_ranges=declared),
            publish=False,
        )
        bad, truth, _ = inject.corrupt_dataset(eps, _plan(len(eps)), seed=SEED)
        checked = run_checks(
            site,
            inject.write_dataset(site, f"{name}-bad", bad, fps=src.fps, declared_ranges=declared),
            publish=False,
        )
        out[name] = {"eps": eps, "clean": clean, "truth": truth, "bad": checked}
    return site, out


#: (source, check) pairs known to break the false-alarm bound (bench/RESULTS.md, issue 18)
KNOWN_FALSE_ALARMS: set[tuple[str, str]] = set()


def test_clean_heldout_data_raises_almost_no_statistical_flag(heldout):
    """At most 1 % of clean episodes flagged by any statistical check (all sources pooled),
    the known false alarms left out (asserted apart, below)."""
    _, sources = heldout
    flagged = total = 0
    for name, r in sources.items():
        total += len(r["eps"])
        flagged += len(
            {
                f.episode_index
                for f in r["clean"].suite.flags
                if f.check in STATISTICAL and (name, f.check) not in KNOWN_FALSE_ALARMS
            }
        )
        # nor does a deterministic check, but for duplicates: two idle episodes of a digital
        # gantry of one length are the same bytes, which is what a duplicate is
        assert not [f for f in r["clean"].suite.flags if f.check in HARD_CHECKS - {"duplicate"}]
    assert total == EPISODES * len(HELDOUT)
    assert flagged <= math.floor(0.01 * total)


def test_on_off_chatter_is_no_action_jump(heldout):
    """The pan-tilt head's laser pointer turns on after 5 frames locked on the target and
    off when the pixel error leaves 6 px; with 1.5 px of measurement noise it chatters,
    on for one frame between offs: a one-frame pulse of the whole range of a 0/1 channel
    (8 % of its episodes were flagged until session 7). The channel is discrete (two
    levels) and no state joint observes it (the response model's gain for a full pulse is
    under MIN_EVIDENCE), so a toggle between its levels is its normal motion
    (quality/response.py); a value off its levels is still a glitch (below)."""
    _, sources = heldout
    r = sources["pan_tilt"]
    discrete = r["clean"].suite.thresholds["dataset_scales"]["discrete_actions"]
    assert discrete["a_2"] == {"levels": [0.0, 1.0], "observed": False}
    assert r["clean"].suite.flagged_by("action_jump") == set()


#: (kind, source) where the target is known not to hold (bench/RESULTS.md, issue 18)
KNOWN_MISSES: set[tuple[str, str]] = set()


def test_pixel_error_far_out_of_range_is_flagged(heldout):
    """The pan-tilt head's widest channel is its pixel error, up to +-899.9 px; its maker
    declares that extent (900 px from the image centre; synthetic.Source.declared), and
    inject.out_of_range's value (q99 + 4 x (q99 - q01) + 1, about 2,300 px) is outside."""
    _, sources = heldout
    r = sources["pan_tilt"]
    planted = {e for e, k in r["truth"].items() if k == "out_of_range"}
    assert planted and planted <= r["bad"].suite.flagged_by("out_of_range")
    assert r["bad"].suite.thresholds["limits_source"] == "declared+robust"


@pytest.mark.xfail(strict=True, reason="did not hold: per-episode extremes spread too widely")
def test_pixel_error_out_of_range_is_flagged_without_a_declared_range(heldout, tmp_path):
    """Without the declaration only the robust fences judge: the pixel error is exactly 0
    in episodes that never see a target and reaches +-890 px in others, so the limits
    (the extremes' quartiles +- 5 spreads, about +-3,700 px) lie beyond the planted
    2,300 px. Narrowing the fences for one heavy-tailed channel would flag clean
    episodes of another; a declared range is what the issue allows here."""
    site, sources = heldout
    r = sources["pan_tilt"]
    ds, hashes = _dataset(site, r["bad"].dataset_id)
    res = run_suites(tmp_path, layout_for(site, ds), hashes)
    planted = {e for e, k in r["truth"].items() if k == "out_of_range"}
    assert planted and planted <= res.flagged_by("out_of_range")


@pytest.mark.parametrize("kind", inject.KINDS)
def test_every_planted_defect_is_found_on_heldout_sources(heldout, kind):
    """Recall >= 0.95 per defect type, pooled over the held-out sources."""
    _, sources = heldout
    want = hit = 0
    for name, r in sources.items():
        if (kind, name) in KNOWN_MISSES:
            continue
        planted = {e for e, k in r["truth"].items() if k == kind}
        want += len(planted)
        hit += len(planted & r["bad"].suite.flagged_by(inject.CHECK_FOR[kind]))
    # a freeze planted where the robot holds still changes nothing and is no defect
    assert want >= len(sources) - 1
    assert hit / want >= 0.95


def test_gantry_axis_frozen_after_its_first_move_is_flagged(heldout):
    """The gantry's x is frozen at 15 % of the cycle, when about half of its partner y's
    travel is done: the frozen share of partner motion is 0.5-0.6, under the 60 % that
    the shared recordings allow (a clean bimanual episode reaches 0.55). Its *command*
    sees it: x's drive is commanded (a_0 away from 0) for seconds in which x's reading
    does not change (profile.command_partners), which a working drive never does."""
    _, sources = heldout
    r = sources["gantry"]
    commands = r["clean"].suite.thresholds["dataset_scales"]["commands"]
    assert commands.get("s_0") == ["a_0"]  # learnt: x's drive command drives x
    planted = {e for e, k in r["truth"].items() if k == "frozen_joint"}
    assert planted and planted <= r["bad"].suite.flagged_by("frozen_joint")


def test_pan_tilt_pixel_error_frozen_while_the_head_fixates_is_flagged(tmp_path):
    """bench/quality_detect.py's 3 missed pan-tilt freezes of 51 (recall 0.941, sessions 5
    and 7): the pixel error y frozen from 15 % of the episode at a non-zero value (10.5,
    -69, -122.5 px). Its partner reference counts windows in which the head travels, and
    a head that fixates (deadband) travels in few windows after the freeze (frozen share
    0.26-0.57 < 0.6); its command reference saw 0-8 windows (< 20); it rests at exactly 0
    whenever no target is in view, so it is no restless channel. What holds (session 7,
    part 2): the channel's rest value (0, the value of most windows in which it kept its
    value) is measured, and off it the channel is never constant over a window, so the
    windows that end off 0 are its reference (profile.rest_values, suite's ``off_rest``).
    Until the rest value was a majority rather than 95 % of the kept windows, the planted
    freezes themselves (all 6 of them kept at their own values) hid it."""
    site = create_site(tmp_path / "site", org="pan-tilt")
    eps = synthetic.episodes("pan_tilt", 200, 5)
    # bench/quality_detect.py's plan for seed 5: 6 episodes of each kind
    order = [int(i) for i in np.random.default_rng(5).permutation(len(eps))]
    plan = {order[6 * n + i]: kind for n, kind in enumerate(inject.KINDS) for i in range(6)}
    bad, truth, _ = inject.corrupt_dataset(eps, plan, seed=5)
    assert {113, 164} <= {e for e, k in truth.items() if k == "frozen_joint"}
    out = _check(site, "pan-tilt-frozen", bad, synthetic.SOURCES["pan_tilt"].fps)
    assert {113, 164} <= out.suite.flagged_by("frozen_joint")


def test_rest_value_survives_stuck_episodes_and_needs_a_majority():
    """profile.rest_values: a channel that reads 0 at rest and is noisy otherwise rests
    at 0 even when a tenth of the episodes are stuck each at its own value (the stuck
    windows outnumber no single value); a joint that holds still wherever it stopped
    (a different value each episode) has none."""
    from dataspace.quality.profile import rest_values

    rng = np.random.default_rng(0)
    episode, err, held = [], [], []
    for e in range(40):
        n = 200
        v = np.round(rng.normal(0, 30, n), 1)
        v[rng.random(n) < 0.4] = 0.0  # nothing in view: exactly 0
        v[:50] = 0.0
        if e % 10 == 0:
            v[30:] = 12.3 + e  # stuck at its own value
        episode.append(np.full(n, e))
        err.append(v)
        h = np.full(n, float(rng.integers(0, 1000)))  # held wherever it stopped
        h[:20] = np.linspace(0, h[20], 20)
        held.append(h)
    ep = np.concatenate(episode)
    rest = rest_values(
        ep, {"err": np.concatenate(err), "held": np.concatenate(held)}, ["err", "held"], 10
    )
    assert rest == {"err": 0.0}


def test_position_targets_command_nothing(real_site):
    """A robot driven by position targets (the real G1: the action is where the joint
    should be, away from 0 while it holds still) gets no command reference: only the
    partner and restless references judge its joints, as before."""
    site, ids = real_site
    out = run_checks(site, ids["unitree"], publish=False)
    assert out.suite.thresholds["dataset_scales"]["commands"] == {}


@pytest.mark.xfail(strict=True, reason="did not hold: dither breaks 'kept exactly its value'")
def test_stuck_axis_with_dither_is_flagged(heldout):
    """A holder hides a stuck gantry axis by adding one encoder count of dither to it:
    every frozen reference counts windows in which the joint kept *exactly* its value,
    so a dithered stuck joint changes in every window and passes. A tolerance would
    need the joint's resolution (here 0.1 mm) and is defeated by a larger dither;
    what remains is a joint that does not travel when commanded, not measured yet."""
    site, sources = heldout
    r = sources["gantry"]
    rng = np.random.default_rng(SEED)
    bad = list(r["eps"])
    planted = []
    for i, e in enumerate(r["eps"]):
        stuck = inject.frozen_joint(e, rng, [0], [1e-3] * e.state.shape[1])
        if inject._same(stuck, e):
            continue
        t = int(0.15 * e.frames)
        dither = rng.choice([-1e-4, 0.0, 1e-4], size=e.frames - t).astype(np.float32)
        stuck.state[t:, 0] += dither
        bad[i] = stuck
        planted.append(i)
        if len(planted) == 4:
            break
    out = _check(site, "gantry-dither", bad, synthetic.SOURCES["gantry"].fps)
    assert set(planted) <= out.suite.flagged_by("frozen_joint")


def test_joystick_flicks_are_no_action_jump(tmp_path):
    """The teleoperated arm: an operator who pauses, pushes the stick for one frame and
    pauses again leaves a one-frame command at full deflection between zeros, which is
    what inject.action_jump plants (1.7 % of its episodes were flagged until session 7).
    Only the state tells them apart: the arm moves with a flick. The response model
    (quality/response.py: ridge over the dataset, the state's change over the next two
    frames on the actions around a frame and the state) explains the observed motion
    with the flick far better than with the flick replaced by its neighbours, so it is
    excused; a planted glitch moves nothing and is not (recall below)."""
    site = create_site(tmp_path / "site", org="teleop")
    eps = synthetic.episodes("teleop_arm", 200, 0)
    out = _check(site, "teleop", eps, synthetic.SOURCES["teleop_arm"].fps)
    assert out.suite.flagged_by("action_jump") == set()
    assert out.suite.thresholds["action_jump_excused"]  # flicks there were, and excused
    bad, truth, _ = inject.corrupt_dataset(eps, {i: "action_jump" for i in range(0, 200, 10)})
    checked = _check(site, "teleop-glitched", bad, synthetic.SOURCES["teleop_arm"].fps)
    assert set(truth) <= checked.suite.flagged_by("action_jump")


def test_idle_episodes_with_command_jitter_are_not_noise(heldout):
    """The issue's case: a robot holding still under a little command jitter.

    Measured against the episode's own variance (the old rule) its roughness is
    near 1; against the dataset's, near 0, and no episode is flagged.
    """
    _, sources = heldout
    r = sources["planar_arm"]
    p = r["clean"].suite.profile
    idle = np.asarray(p["n_motion"]) == 0  # the "wait" episodes: no joint travels
    assert idle.any() and (~idle).any()
    own = np.array([_own_variance_roughness(e.action) for e in r["eps"]])
    assert np.nanmin(own[idle]) > MAX_ACTION_ROUGHNESS  # what the old rule flagged
    assert np.nanmax(p["action_roughness"][idle]) < 0.1  # far under the threshold
    assert r["clean"].suite.flagged_by("action_noise") == set()


def _own_variance_roughness(action: np.ndarray) -> float:
    a = action.astype(float)
    var = a.var(axis=0)
    d = np.diff(a, axis=0)
    terms = [(d[:, j] ** 2).mean() / (2 * var[j]) for j in range(a.shape[1]) if var[j] > 0]
    return float(np.median(terms)) if terms else float("nan")


def test_frozen_joint_learns_which_joints_move_together(heldout):
    """A mobile base's x moves with its y, not with its heading: it turns on the spot."""
    _, sources = heldout
    scales = sources["mobile_base"]["clean"].suite.thresholds["dataset_scales"]
    x_partners = scales["partners"]["s_0"]
    assert x_partners and "s_2" not in x_partners
    # the gyro changes whenever anything moves: any motion is its reference
    assert scales["partners"]["s_4"] == ["*"]


def test_synthetic_sources_are_deterministic():
    a = synthetic.episodes("gantry", 3, 5)
    b = synthetic.episodes("gantry", 3, 5)
    assert all(np.array_equal(x.action, y.action) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].action, synthetic.episodes("gantry", 3, 6)[0].action)
    with pytest.raises(synthetic.UnknownSourceError):
        synthetic.episodes("hexapod", 1, 0)


# --- value that reflects quality ----------------------------------------------------------


def test_quality_adjusted_credits_the_usable_share_and_charges_the_rest():
    c = {"clean": 0.12, "noisy": 0.15, "hurt": -0.05, "unchecked": 0.08}
    u = {"clean": 0.99, "noisy": 0.0, "hurt": 1.0}
    m = (0.12 + 0.15 + 0.05 + 0.08) / 4  # the run's mean |contribution|
    adj = quality_adjusted(c, u)
    # all flagged: no credit, charged a typical dataset's effect: below a clean site that hurt
    assert adj["noisy"] == pytest.approx(-m) and min(adj, key=adj.get) == "noisy"
    assert adj["hurt"] == -0.05  # no flags: its contribution, harm included, as it is
    assert adj["clean"] == pytest.approx(0.99 * 0.12 - 0.01 * m)
    assert adj["unchecked"] == 0.08  # no report: no change
    # a harmful dataset is not excused by its flags either
    assert quality_adjusted({"a": -0.2, "b": 0.2}, {"a": 0.5})["a"] == pytest.approx(-0.3)


def test_usable_share_counts_motion_so_idle_padding_does_not_dilute():
    motion = [120, 80, 0, 0, 0, 0]  # two noisy episodes that move, four idle ones
    flagged = [True, True, False, False, False, False]
    assert usable_share(motion, flagged) == 0.0
    assert usable_share([0, 0, 0, 0], [True, False, False, False]) == 0.75
    assert usable_share([], []) == 1.0
    assert report_usable_share({"value": {"usable_share": 0.25}}) == 0.25
    # a report from before issue 18: the share of unflagged episodes
    assert report_usable_share({"episodes": 10, "episodes_flagged": 4, "value": {}}) == 0.6


def test_report_states_the_usable_share(real_site):
    site, ids = real_site
    eps = list(inject.read_episodes(site, ids["unitree"]))[:12]
    clean = run_checks(
        site, inject.write_dataset(site, "g1-12", eps, fps=30.0, tasks=["t"]), publish=False
    )
    noisy = run_checks(
        site,
        inject.write_dataset(site, "g1-12-noisy", _noisy(eps, 1.0), fps=30.0, tasks=["t"]),
        publish=False,
    )
    assert clean.public["value"]["usable_share"] == 1.0
    assert noisy.public["value"]["usable_share"] == 0.0
    assert "usable_share" in noisy.public["explain"]


# --- a holder gaming its score ------------------------------------------------------------


def _noisy(eps: list[Episode], k: float, smooth: int = 1, joints: slice = slice(None)):
    """Gaussian noise of ``k`` x the action's spread on ``joints`` of every episode;
    ``smooth`` > 1 averages it over that many frames (keeping its spread)."""
    rng = np.random.default_rng(SEED)
    std = np.concatenate([e.action for e in eps]).std(axis=0)
    out = []
    for e in eps:
        n = rng.normal(size=e.action.shape) * k * std
        if smooth > 1:
            ker = np.ones(smooth) / math.sqrt(smooth)
            n = np.stack([np.convolve(n[:, j], ker, mode="same") for j in range(n.shape[1])], 1)
        a = e.action.copy()
        a[:, joints] += n[:, joints].astype(np.float32)
        out.append(inject._copy(e, action=a))
    return out


def _idle(like: Episode, n: int, fps: float, rng: np.random.Generator) -> Episode:
    """An episode of the robot holding ``like``'s first pose, with a little jitter."""
    action = np.repeat(like.action[:1], n, 0) + rng.normal(0, 0.002, (n, like.action.shape[1]))
    return Episode(
        np.rint(np.arange(n) * 1e6 / fps).astype(np.int64),
        np.repeat(like.state[:1], n, 0),
        action.astype(np.float32),
    )


@pytest.fixture(scope="module")
def arm(heldout):
    site, sources = heldout
    return site, sources["planar_arm"]["eps"][:30], synthetic.SOURCES["planar_arm"].fps


def _check(site, name, eps, fps, declared=None):
    did = inject.write_dataset(site, name, eps, fps=fps, declared_ranges=declared)
    return run_checks(site, did, publish=False)


@pytest.mark.parametrize("k", [0.7, 1.0])
def test_noise_on_every_episode_is_flagged(arm, k):
    """A wholly noisy dataset: measured against its own (noisy) scale, still flagged."""
    site, eps, fps = arm
    out = _check(site, f"arm-noisy-{k}", _noisy(eps, k), fps)
    assert out.suite.flagged_by("action_noise") == set(range(len(eps)))


def test_weak_noise_on_every_episode_stays_under_the_threshold(arm):
    """The floor, stated: noise of 0.4 x the action's spread on every episode of a dataset
    passes (roughness about k^2 / (1 + k^2) = 0.14 < 0.25). What held: 0.55 x and more."""
    site, eps, fps = arm
    out = _check(site, "arm-noisy-0.4", _noisy(eps, 0.4), fps)
    assert out.suite.flagged_by("action_noise") == set()


def test_padding_with_idle_clean_episodes_hides_nothing(arm):
    """Four idle clean episodes per noisy one: every noisy episode is still flagged (the
    dataset's pooled variance shrinks, so noise stands out more) and the usable share
    (motion-weighted) stays 0. The check's flag *rate* is diluted, as any share is."""
    site, eps, fps = arm
    rng = np.random.default_rng(SEED)
    noisy = _noisy(eps, 1.0)
    pad = [_idle(eps[i % len(eps)], 250, fps, rng) for i in range(4 * len(eps))]
    out = _check(site, "arm-noisy-padded", noisy + pad, fps)
    assert set(range(len(noisy))) <= out.suite.flagged_by("action_noise")
    assert out.public["value"]["usable_share"] == 0.0
    rate = next(c["flag_rate"] for c in out.public["checks"] if c["check"] == "action_noise")
    assert rate == pytest.approx(0.2, abs=0.01)


def test_declared_ranges_that_lie_cannot_hide_out_of_range(heldout, tmp_path):
    """Declared joint ranges may narrow the robust limits, never widen them."""
    site, sources = heldout
    r = sources["mobile_base"]
    did = r["bad"].dataset_id
    ds, hashes = _dataset(site, did)
    layout = layout_for(site, ds)
    planted = {e for e, k in r["truth"].items() if k == "out_of_range"}
    wide = {c: (-1e9, 1e9) for c in layout.joint_cols}
    res = run_suites(tmp_path, layout, hashes, declared_limits=wide)
    assert planted <= res.flagged_by("out_of_range")
    assert res.thresholds["limits"]["s_0"][1] < 1e9
    # an honest, tighter declaration is used: x declared within 1 m of the room's middle
    tight = {"s_0": (4.0, 6.0)}
    res = run_suites(tmp_path, layout, hashes, declared_limits=tight)
    assert res.thresholds["limits"]["s_0"] == [4.0, 6.0]
    assert len(res.flagged_by("out_of_range")) > len(planted)


def test_declared_ranges_in_the_catalog_only_narrow(heldout):
    """The same through a dataset's catalog (what run_checks reads): a holder declaring
    its pixel error within +-1e9 px hides nothing; a malformed declaration is an error,
    not silently dropped (a declaration the check cannot apply must not read as applied)."""
    site, sources = heldout
    r = sources["pan_tilt"]
    bad = [inject._copy(e) for e in r["eps"]]
    bad[3].state[10:15, 2] = 5000.0  # far beyond any pixel error
    lie = {"observation.state": {"2": (-1e9, 1e9), "3": (-1e9, 1e9)}}
    out = _check(site, "pan-tilt-lie", bad, synthetic.SOURCES["pan_tilt"].fps, declared=lie)
    assert 3 in out.suite.flagged_by("out_of_range")
    for broken in (
        {"observation.state": {"2": (5.0, -5.0)}},  # lo >= hi
        {"observation.state": {"2": (float("nan"), 1.0)}},
        {"observation.state": {"elbow": (0.0, 1.0)}},  # no such name
        {"observation.images": {"2": (0.0, 1.0)}},  # no such feature
        {"observation.state": {"2": "12"}},  # a string would unpack as (1, 2)
        {"observation.state": {"2": ("0", "1")}},
        {"observation.state": {"2": (False, True)}},
        {"observation.state": {"2": (0.0, 1.0, 2.0)}},
        {"observation.state": {"2": (0.0, float("inf"))}},
        {"observation.state": {"2": {"lo": 0, "hi": 1}}},
    ):
        with pytest.raises(QualityError):
            declared_ranges(broken, [str(i) for i in range(5)], [str(i) for i in range(3)])
    named = declared_ranges({"action": {"2": (0, 1)}}, ["2"], ["0", "1", "2"])
    assert named == {"a_2": (0.0, 1.0)}  # by the action's own names, not the state's
    with pytest.raises(QualityError):  # a name two columns share cannot say which
        declared_ranges({"action": {"x": (0, 1)}}, ["s"], ["x", "x"])
    assert declared_ranges({"action": {"x": [np.float32(0), np.int64(2)]}}, [], ["x"]) == {
        "a_0": (0.0, 2.0)
    }


def test_off_level_value_on_a_discrete_channel_is_a_jump(heldout):
    """A holder cannot pass a glitch off as a discrete channel's toggle: levels are
    measured (values holding >= 0.5 % of the sample's frames each), never declared, and a
    one-frame value off the levels (the laser at 0.5) is not excused."""
    site, sources = heldout
    eps = [inject._copy(e) for e in sources["pan_tilt"]["eps"]]
    planted = []
    for i, e in enumerate(eps):
        quiet = np.flatnonzero(
            (e.action[1:-1, 2] == 0) & (e.action[:-2, 2] == 0) & (e.action[2:, 2] == 0)
        )
        if quiet.size:
            e.action[quiet[quiet.size // 2] + 1, 2] = 0.5
            planted.append(i)
        if len(planted) == 3:
            break
    out = _check(site, "pan-tilt-half-laser", eps, synthetic.SOURCES["pan_tilt"].fps)
    assert set(planted) <= out.suite.flagged_by("action_jump")


def test_a_channel_quantised_to_look_discrete_is_still_judged(heldout):
    """A holder quantises the teleoperated arm's lift command to three levels so that it
    reads as discrete: the lift still follows it, so the channel is *observed* and its
    one-frame pulses are judged by the state's response; planted ones move nothing."""
    site, _ = heldout
    eps = synthetic.episodes("teleop_arm", 60, SEED)
    for e in eps:
        a = e.action[:, 2]
        e.action[:, 2] = np.where(np.abs(a) > 0.05, np.sign(a) * 0.15, 0.0)
    rng = np.random.default_rng(SEED)
    bad = list(eps)
    planted = list(range(0, 60, 12))
    for i in planted:
        bad[i] = inject.action_jump(eps[i], rng, 2, -0.15, 0.15)
    out = _check(site, "teleop-quantised", bad, synthetic.SOURCES["teleop_arm"].fps)
    discrete = out.suite.thresholds["dataset_scales"]["discrete_actions"]
    assert discrete["a_2"]["observed"] is True
    assert set(planted) <= out.suite.flagged_by("action_jump")


@pytest.mark.xfail(strict=True, reason="did not hold: smoothed noise is a smooth trajectory")
def test_noise_smoothed_over_three_frames_is_flagged(arm):
    """Noise of 1 x the spread, averaged over 3 frames, lands under the threshold
    (roughness about 0.19): a roughness check cannot tell smooth noise from motion.
    What would: a check that the actions agree with the states (an inverse model fitted
    on the dataset, its residual per episode), since noise in the commands is not in
    the motion; its residual scale differs per robot (a position target is nearly the
    next state, a torque or a joystick velocity is not), so an absolute threshold for a
    wholly noisy dataset would be tuned again. Not built."""
    site, eps, fps = arm
    out = _check(site, "arm-noisy-smooth", _noisy(eps, 1.0, smooth=3), fps)
    assert out.suite.flagged_by("action_noise") == set(range(len(eps)))


@pytest.mark.xfail(strict=True, reason="did not hold: the median over joints ignores one")
def test_noise_on_one_joint_of_four_is_flagged(arm):
    """The median over action joints keeps one jittery channel of a real robot from
    flagging every episode (bimanual: near-constant joints with quantisation flicker),
    so noise on one joint of four passes. Judging each joint against the robot's other
    joints (the median pooled variance as a floor) would hide the flicker, but a joint
    in other units (a gripper 0/1 next to torques of 0.15 N m) is then judged on the
    wrong scale: without declared ranges there is no common scale. Not built."""
    site, eps, fps = arm
    out = _check(site, "arm-noisy-one", _noisy(eps, 1.0, joints=slice(0, 1)), fps)
    assert out.suite.flagged_by("action_noise") == set(range(len(eps)))


# --- replayed episodes ------------------------------------------------------------------


def test_replayed_episodes_are_flagged_as_copies(arm):
    """A holder pads its dataset with replays: an exact copy (duplicate) and a copy with
    noise of 1e-5 x each joint's spread on the states (near_duplicate) are both caught."""
    site, eps, fps = arm
    rng = np.random.default_rng(SEED)
    padded = [*eps, inject._copy(eps[3]), inject.near_duplicate(eps[5], rng)]
    out = _check(site, "arm-replayed", padded, fps)
    assert len(eps) in out.suite.flagged_by("duplicate")
    assert len(eps) + 1 in out.suite.flagged_by("near_duplicate")


@pytest.mark.xfail(strict=True, reason="did not hold: a trimmed replay has other statistics")
def test_replay_trimmed_by_one_frame_is_flagged(arm):
    """A replay with its first frame cut off: a new hash, and its per-joint mean and spread
    (the near-duplicate signature) move by more than 1e-3 of their spread across
    episodes, so it passes. Catching it needs an alignment of frames between episodes
    (a sliding comparison), which the per-episode profile does not make."""
    site, eps, fps = arm
    e = eps[5]
    trimmed = inject._copy(
        e,
        timestamps_us=e.timestamps_us[1:] - e.timestamps_us[1],
        state=e.state[1:],
        action=e.action[1:],
    )
    out = _check(site, "arm-replay-trimmed", [*eps, trimmed], fps)
    flagged = out.suite.flagged_by("near_duplicate") | out.suite.flagged_by("duplicate")
    assert len(eps) in flagged
