"""The action-to-state response test behind action_jump's excuses (quality/response.py)."""

from __future__ import annotations

import numpy as np

from dataspace.quality import response as R


def _sample(episodes: list[tuple[np.ndarray, np.ndarray]]):
    """(episode ids, values by column, state cols, action cols) as dataset_scales reads them."""
    state = np.concatenate([s for s, _ in episodes])
    action = np.concatenate([a for _, a in episodes])
    ids = np.concatenate([np.full(len(s), i) for i, (s, _) in enumerate(episodes)])
    s_cols = [f"s_{j}" for j in range(state.shape[1])]
    a_cols = [f"a_{j}" for j in range(action.shape[1])]
    values = {c: state[:, j] for j, c in enumerate(s_cols)}
    values |= {c: action[:, j] for j, c in enumerate(a_cols)}
    return ids, values, s_cols, a_cols


def _integrator(rng: np.random.Generator, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """A velocity-commanded joint (with pauses) and a 0/1 channel nothing observes."""
    v = np.where(rng.random(n) < 0.3, 0.0, np.cumsum(rng.normal(0, 0.02, n)))
    lamp = (rng.random(n) < 0.2).astype(float)
    pos = np.cumsum(v) + rng.normal(0, 1e-4, n)
    return pos[:, None], np.stack([v, lamp], axis=1)


def test_a_flick_that_moves_the_joint_is_excused_a_recorded_glitch_is_not():
    rng = np.random.default_rng(0)
    eps = [_integrator(rng) for _ in range(20)]
    model = R.fit_response(*_sample(eps))
    assert model is not None and model.observed("a_0") and not model.observed("a_1")
    state, action = eps[0]
    spikes = {"a_0": 0.5, "a_1": 0.3}
    flick = action.copy()
    flick[100:103, 0] = [0.0, 2.0, 0.0]
    moved = state.copy()
    moved[101:] += 2.0  # the joint moved with the flick (recorded after the command)
    assert R.excused(model, moved, flick, "a_0", spikes)
    assert not R.excused(model, state, flick, "a_0", spikes)  # nothing moved: a glitch


def test_a_model_without_power_excuses_nothing():
    """State unrelated to the actions (a sensor slower than the recording): no excuse."""
    rng = np.random.default_rng(1)
    eps = [(rng.normal(0, 1, (300, 2)), rng.normal(0, 1, (300, 2))) for _ in range(10)]
    model = R.fit_response(*_sample(eps))
    assert model is not None and not model.observed("a_0")
    state, action = eps[0]
    glitch = action.copy()
    glitch[50, 0] = 25.0
    assert not R.excused(model, state, glitch, "a_0", {"a_0": 5.0, "a_1": 5.0})


def test_unobserved_discrete_toggles_are_excused_off_level_values_are_not():
    rng = np.random.default_rng(2)
    eps = [_integrator(rng) for _ in range(20)]
    model = R.fit_response(*_sample(eps))
    assert model is not None and model.levels["a_1"] == (0.0, 1.0)
    state, action = eps[0]
    action = action.copy()
    action[:, 1] = 0.0
    action[60, 1] = 1.0  # a one-frame toggle between its levels
    assert R.excused(model, state, action, "a_1", {"a_1": 0.3})
    action[60, 1] = 0.6  # no level
    assert not R.excused(model, state, action, "a_1", {"a_1": 0.3})


def test_levels_are_measured_and_rare_values_are_no_level():
    laser = np.r_[np.zeros(900), np.ones(99), 0.5]
    assert R.discrete_levels(laser) == (0.0, 1.0)  # the glitch value 0.5 holds 0.1 %
    assert R.discrete_levels(np.linspace(0, 1, 1000)) is None
    assert R.discrete_levels(np.zeros(10)) is None  # one value: a constant, not a switch


def test_spike_frames_are_out_and_back_not_steps():
    a = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert R.spike_frames(a, 0.5).tolist() == [2]  # the step at frame 5 is no spike


def test_too_few_frames_fit_no_model():
    rng = np.random.default_rng(3)
    assert R.fit_response(*_sample([_integrator(rng, 50)])) is None


def test_an_out_of_range_stretch_does_not_hide_the_response():
    """One episode with a 5-frame leap far beyond the joint's range (inject.out_of_range)
    would swamp the joint's residual scale; such leaps are left out of the fit."""
    rng = np.random.default_rng(4)
    eps = [_integrator(rng) for _ in range(20)]
    clean = R.fit_response(*_sample(eps))
    state, action = eps[3]
    state = state.copy()
    state[100:105, 0] = 1e3
    eps[3] = (state, action)
    model = R.fit_response(*_sample(eps))
    assert clean is not None and model is not None
    assert model.gain["a_0"] > 0.5 * clean.gain["a_0"]
