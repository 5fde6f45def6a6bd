"""Does the state respond to a one-frame action spike? An action-to-state model (issue 18).

On the action alone, an operator's one-frame joystick flick between pauses and
a recorded glitch (one frame of the action set to the far end of its range) are
the same values. The state tells them apart: the robot moves after a flick, and
nothing moves after a glitch in the *recording* (the robot was never sent it).

:func:`fit_response` learns, over a sample of the dataset's episodes (pooled, one
ridge regression per dataset), how the state changes from a frame t through
t + ``HORIZON`` given the actions around t and the state before it (an ARX
model: velocity, torque and position-target commands alike are linear enough
over a few frames; a robot that records its state after applying a frame's
command responds at t, one that records it before at t + 1).
:func:`spike_evidence` then compares, at a spike, how well the observed state
change is explained with the spike and with the spike replaced by its
neighbours' mean; spikes on several actions at one frame (a joystick pushed
diagonally) are replaced together, since each explains only its share of the
motion. A spike is *excused* (:func:`excused`) only when it explains
the state significantly better: by more than ``MIN_EVIDENCE`` squared residual
standard deviations, and at least ``MIN_SHARE`` of what the state did beyond the
no-spike prediction. When the model has no predictive power for that action
(slow sensors, targets the controller ignores) the two explanations tie and
nothing is excused, so a glitch is still flagged.

A channel with a few discrete levels (a 0/1 laser, an on/off gripper: at most
``MAX_LEVELS`` values over the sample) moves only by jumps between its levels,
so a one-frame toggle is that channel's normal motion, not an excursion beyond
it. When no state joint observes such a channel (the model's response to a
full-range pulse on it is below ``MIN_EVIDENCE``), a toggle between its levels
carries no evidence of a defect and is excused; a value off its levels is never
excused. A discrete channel the state does observe (a bang-bang axis drive) is
judged by the response like any other.

Pure functions over numpy arrays; suite.py reads the candidate episodes (those
whose largest spike exceeds the joint's threshold) and calls :func:`excused`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: the state change is predicted over this many frames after the spike's frame
HORIZON = 2
#: ridge penalty, relative to the number of frames (features are standardised)
RIDGE = 1e-3
#: a spike is excused when it lowers the state's squared standardised residual by
#: more than this (5 residual standard deviations, squared; set a priori) ...
MIN_EVIDENCE = 25.0
#: ... and by at least this share of the residual left without it
MIN_SHARE = 0.5
#: a channel is discrete when at most this many values (its levels) ...
MAX_LEVELS = 3
#: ... each held in at least this share of the sample's frames (a rare glitch value
#: is no level) ...
LEVEL_SHARE = 0.005
#: ... together hold at least this share of them: a dataset with a few defective
#: episodes (noise on their actions) keeps its discrete channels
LEVEL_COVERAGE = 0.95
#: frames (anchors) the model needs before it is fitted at all
MIN_FRAMES = 200
#: the fit leaves out anchors whose state changes in one frame, or lies from the joint's
#: mean, by more than this many times its usual range (q01..q99): a glitch, not a
#: response (a target entering a camera's view moves the pixel error by ~2 ranges)
LEAP_RANGES = 4.0
#: frames of the scales' sample the model is fitted on (whole episodes)
FIT_FRAMES = 50_000
#: anchors per matrix product while the moments are accumulated (memory vs. calls)
_CHUNK = 16_384


@dataclass(frozen=True)
class ResponseModel:
    """A ridge ARX model of the state's changes at frames t .. t + ``HORIZON`` (module doc)."""

    state_cols: tuple[str, ...]
    action_cols: tuple[str, ...]
    #: feature means and scales (standardisation); scale 0 marks a constant feature
    mean: np.ndarray
    scale: np.ndarray
    #: [features + 1, targets] coefficients on standardised features (last row: intercept)
    coef: np.ndarray
    #: per target (state joint x horizon step), the residual standard deviation
    sigma: np.ndarray
    #: action column -> its levels, for discrete channels only
    levels: Mapping[str, tuple[float, ...]]
    #: action column -> standardised response (squared) to a full-range one-frame pulse
    gain: Mapping[str, float]

    def observed(self, col: str) -> bool:
        """Whether the state responds measurably to a full-range pulse on ``col``."""
        return self.gain.get(col, 0.0) > MIN_EVIDENCE


#: the action frames, relative to the anchor t, among the features (a_t's slot: 1)
ACTION_LAGS = tuple(range(-1, HORIZON + 1))
_SPIKE_SLOT = ACTION_LAGS.index(0)


def _features(state: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets of every anchor frame t of one episode (t-2 .. t+HORIZON exist).

    Features: a_{t-1} .. a_{t+HORIZON}, s_{t-1}, s_{t-1} - s_{t-2}. Targets: the state's
    changes s_{t+m} - s_{t+m-1} for m = 0 .. HORIZON (joint-major blocks per step):
    from the frame before t on, since a robot may record its state after applying the
    frame's command (the response shows at t) or before it (at t + 1), or lag more.
    """
    n = state.shape[0]
    t = np.arange(2, n - HORIZON)
    if t.size == 0:
        p = len(ACTION_LAGS) * action.shape[1] + 2 * state.shape[1]
        return np.zeros((0, p)), np.zeros((0, (HORIZON + 1) * state.shape[1]))
    x = np.concatenate(
        [action[t + d] for d in ACTION_LAGS] + [state[t - 1], state[t - 1] - state[t - 2]],
        axis=1,
    )
    y = np.concatenate([state[t + m] - state[t + m - 1] for m in range(HORIZON + 1)], axis=1)
    return x, y


def discrete_levels(values: np.ndarray) -> tuple[float, ...] | None:
    """The channel's levels when it is discrete (``MAX_LEVELS``, ``LEVEL_*``), else None.

    Levels are measured, never declared: a continuous channel cannot be passed off
    as discrete without quantising all of it, and a rare value (a glitch) is no level.
    """
    fin = values[np.isfinite(values)]
    if fin.size == 0:
        return None
    lv, count = np.unique(fin, return_counts=True)
    keep = count >= LEVEL_SHARE * fin.size
    if not 2 <= keep.sum() <= MAX_LEVELS or count[keep].sum() < LEVEL_COVERAGE * fin.size:
        return None
    return tuple(float(v) for v in lv[keep])


def _moments(
    state: np.ndarray, action: np.ndarray, cuts: np.ndarray, leap: np.ndarray, far: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(anchors, [x,1]'[x,1], [x,1]'y, sum of y^2 per target) over every episode.

    Accumulated in chunks of episodes, so a 200,000-frame sample with a hundred
    features never becomes one feature matrix (quality_speed's memory bound).
    An anchor whose state changes by more than ``leap`` (per joint) in one frame,
    or lies further than ``far`` from the joint's mean, is left out: a glitch (an
    out-of-range stretch, a reset) is not a response, and one such leap of 5 m
    would swamp a joint's residual scale and hide every response of that joint.
    """
    p = len(ACTION_LAGS) * action.shape[1] + 2 * state.shape[1] + 1
    q = (HORIZON + 1) * state.shape[1]
    gram, cross, ysq, n = np.zeros((p, p)), np.zeros((p, q)), np.zeros(q), 0
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []

    def flush() -> None:
        nonlocal gram, cross, ysq, n
        if xs:
            x1, y = np.concatenate(xs), np.concatenate(ys)
            gram += x1.T @ x1
            cross += x1.T @ y
            ysq += (y**2).sum(axis=0)
            n += x1.shape[0]
            xs.clear()
            ys.clear()

    rows = 0
    for s, a in zip(np.split(state, cuts), np.split(action, cuts), strict=True):
        x, y = _features(s, a)
        ok = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
        d_prev = x[:, -state.shape[1] :]  # s_{t-1} - s_{t-2}
        level = x[:, -2 * state.shape[1] : -state.shape[1]]  # s_{t-1}, centred
        ok &= (np.abs(y) <= np.tile(leap, HORIZON + 1)).all(axis=1)
        ok &= (np.abs(d_prev) <= leap).all(axis=1)
        ok &= (np.abs(level) <= far).all(axis=1)
        xs.append(np.concatenate([x[ok], np.ones((int(ok.sum()), 1))], axis=1))
        ys.append(y[ok])
        rows += int(ok.sum())
        if rows >= _CHUNK:  # one product per chunk of episodes, not one per episode
            flush()
            rows = 0
    flush()
    return n, gram, cross, ysq


def fit_response(
    episode: np.ndarray,
    values: Mapping[str, np.ndarray],
    state_cols: Sequence[str],
    action_cols: Sequence[str],
) -> ResponseModel | None:
    """Fit the model on a sample (frames sorted by episode, then frame); None if too few."""
    if not state_cols or not action_cols or episode.size == 0:
        return None
    # every k-th episode of the sample, about FIT_FRAMES frames: plenty for a linear
    # model of a few hundred coefficients, and a fixed cost however large the dataset
    rank = np.concatenate([[0], np.cumsum(np.diff(episode) != 0)])
    keep = rank % max(1, -(-episode.size // FIT_FRAMES)) == 0
    episode = episode[keep]
    state = np.stack([values[c][keep] for c in state_cols], axis=1)
    action = np.stack([values[c][keep] for c in action_cols], axis=1)
    # centred first: raw moments of a channel far from 0 (odometry at 5 m) lose digits
    s_off = _offsets(state)
    a_off = _offsets(action)
    cuts = np.flatnonzero(np.diff(episode) != 0) + 1
    # a one-frame change far beyond a joint's usual range (q01..q99) is no response
    leap = LEAP_RANGES * np.array([_usual_range(values[c]) for c in state_cols])
    # and a state that far from the joint's mean is no usual state
    far = leap
    n, gram, cross, ysq = _moments(state - s_off, action - a_off, cuts, leap, far)
    if n < MIN_FRAMES:
        return None
    p = gram.shape[0] - 1
    mean = gram[-1, :p] / n
    scale = np.sqrt(np.maximum(np.diag(gram)[:p] / n - mean**2, 0.0))
    scale[scale <= 1e-12 * (1.0 + np.abs(mean))] = 0.0  # constant: no feature
    # [z, 1] = [x, 1] @ tr, z the standardised features (0 for a constant one)
    inv = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 0.0)
    tr = np.zeros((p + 1, p + 1))
    tr[:p, :p] = np.diag(inv)
    tr[p, :p] = -mean * inv
    tr[p, p] = 1.0
    gz, hz = tr.T @ gram @ tr, tr.T @ cross
    penalty = RIDGE * n * np.eye(p + 1)
    penalty[p, p] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(gz + penalty, hz)
    rss = ysq - 2.0 * np.sum(coef * hz, axis=0) + np.sum(coef * (gz @ coef), axis=0)
    sigma = np.sqrt(np.maximum(rss, 0.0) / n)
    # a target that never changes (a joint at rest throughout) says nothing: no weight
    sigma = np.where(sigma > 1e-12 * (1.0 + np.sqrt(ysq / n)), sigma, np.inf)
    # the features' means in the data's own units (Delta s has no offset)
    offset = np.concatenate([a_off] * len(ACTION_LAGS) + [s_off, np.zeros_like(s_off)])
    levels = {}
    gain = {}
    n_a = len(action_cols)
    for k, c in enumerate(action_cols):
        lv = discrete_levels(values[c])
        if lv is not None:
            levels[c] = lv
        # a full-range pulse: between the extreme levels, or over q01..q99 (a few noisy
        # or glitched frames must not widen it)
        fin = values[c][np.isfinite(values[c])]
        lo, hi = (lv[0], lv[-1]) if lv else np.quantile(fin, (0.01, 0.99)) if fin.size else (0, 0)
        span = float(hi - lo)
        col = _SPIKE_SLOT * n_a + k  # a_t's slot among the features
        b = coef[col] * inv[col] * span
        gain[c] = float(np.sum((b / sigma) ** 2))
    return ResponseModel(
        tuple(state_cols), tuple(action_cols), mean + offset, scale, coef, sigma, levels, gain
    )


def _usual_range(v: np.ndarray) -> float:
    """q99 - q01 of the finite values (inf when there are none or they never vary)."""
    fin = v[np.isfinite(v)]
    if fin.size == 0:
        return np.inf
    lo, hi = np.quantile(fin, (0.01, 0.99))
    return float(hi - lo) if hi > lo else np.inf


def _offsets(x: np.ndarray) -> np.ndarray:
    """Each column's mean over its finite values (0 for a column with none)."""
    fin = np.isfinite(x)
    total = np.where(fin, x, 0.0).sum(axis=0)
    return total / np.maximum(fin.sum(axis=0), 1)


def spike_frames(a: np.ndarray, threshold: float) -> np.ndarray:
    """Frames t whose out-and-back excursion (profile spike_a_j) exceeds ``threshold``."""
    if a.size < 3:
        return np.zeros(0, dtype=int)
    d0 = a[1:-1] - a[:-2]
    d1 = a[2:] - a[1:-1]
    height = np.where(d0 * d1 < 0, np.minimum(np.abs(d0), np.abs(d1)), 0.0)
    return np.flatnonzero(np.nan_to_num(height, nan=np.inf) > threshold) + 1


def spike_evidence(
    model: ResponseModel, state: np.ndarray, action: np.ndarray, t: int, ks: Sequence[int]
) -> tuple[float, float]:
    """(evidence, share) for spikes on actions ``ks`` at frame ``t`` of one episode.

    evidence: how much the spikes lower the sum of squared standardised
    residuals of the state's changes at frames t .. t + HORIZON; share: that
    drop over the sum without them. (0, 0) when the frame has no full context.
    """
    if t < 2 or t + HORIZON >= state.shape[0]:
        return 0.0, 0.0
    x, y = _features(state[t - 2 : t + HORIZON + 1], action[t - 2 : t + HORIZON + 1])
    x, y = x[:1].copy(), y[:1]
    x_alt = x.copy()
    n_a = action.shape[1]
    for k in ks:  # each spike replaced by its neighbours' mean
        before, after = (_SPIKE_SLOT - 1) * n_a + k, (_SPIKE_SLOT + 1) * n_a + k
        x_alt[0, _SPIKE_SLOT * n_a + k] = 0.5 * (x[0, before] + x[0, after])

    def resid(feat: np.ndarray) -> np.ndarray:
        s = np.where(model.scale > 0, model.scale, 1.0)
        z = np.where(model.scale > 0, (feat - model.mean) / s, 0.0)
        return (y - np.concatenate([z, np.ones((1, 1))], axis=1) @ model.coef) / model.sigma

    # a target with no weight (sigma inf) or a NaN in the window contributes nothing
    r, r_alt = resid(x), resid(x_alt)
    with_spike = float(np.nansum(np.where(np.isfinite(r), r**2, 0.0)))
    without = float(np.nansum(np.where(np.isfinite(r_alt), r_alt**2, 0.0)))
    drop = without - with_spike
    return drop, (drop / without if without > 0 else 0.0)


def excused(
    model: ResponseModel | None,
    state: np.ndarray,
    action: np.ndarray,
    col: str,
    spikes: Mapping[str, float],
) -> bool:
    """Whether every spike of action ``col`` above its threshold in this episode is excused.

    ``spikes``: every action column's threshold (suite.spike_thresholds). Excused:
    the state's response explains it, together with the other actions' spikes
    at the same frame (module docstring), or, on a discrete channel the state
    does not observe, it only toggles between levels.
    """
    if model is None or col not in model.action_cols or col not in spikes:
        return False
    k = model.action_cols.index(col)
    a = action[:, k]
    frames = spike_frames(a, spikes[col])
    if frames.size == 0:
        return False
    at = {
        j: set(spike_frames(action[:, j], spikes[c]).tolist())
        for j, c in enumerate(model.action_cols)
        if c in spikes and j != k
    }
    lv = model.levels.get(col)
    for t in frames:
        if lv is not None and not model.observed(col) and float(a[t]) in lv:
            continue
        ks = [k, *sorted(j for j, f in at.items() if int(t) in f)]
        drop, share = spike_evidence(model, state, action, int(t), ks)
        if not (drop > MIN_EVIDENCE and share >= MIN_SHARE):
            return False
    return True
