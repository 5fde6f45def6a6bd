"""Known corruptions of canonical episodes, for tests and bench/quality_detect.py.

Each function returns a corrupted copy of an :class:`Episode` (never changes
its input). :func:`write_dataset` stores a list of episodes as a new dataset in
a site (canonical Parquet + ``datasets``/``episodes`` rows), bypassing the
enrollment validator on purpose: the point is to store data that is wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from dataspace.quality.profile import MOTION_SHARE
from dataspace.quality.ranges import DECLARED_RANGES_KEY
from dataspace.schema import Episode, dataset_id_for, episode_hash, fingerprint
from dataspace.site import store
from dataspace.site.folder import Site

KINDS = (
    "nan",
    "time_reversal",
    "dropped_frames",
    "frozen_joint",
    "action_jump",
    "action_noise",
    "duplicate",
    "near_duplicate",
    "out_of_range",
    "missing_task",
)
#: the check that should flag each kind
CHECK_FOR = {
    "nan": "nonfinite",
    "time_reversal": "timestamps_increasing",
    "dropped_frames": "frame_interval",
    "frozen_joint": "frozen_joint",
    "action_jump": "action_jump",
    "action_noise": "action_noise",
    "duplicate": "duplicate",
    "near_duplicate": "near_duplicate",
    "out_of_range": "out_of_range",
    "missing_task": "missing_task",
}

#: checks that a kind of corruption may rightly trip besides its own: noise on every
#: action also makes frame-to-frame jumps larger than the joint's usual ones, commands
#: a drive away from 0 while its joint holds still (frozen_joint's commands), and
#: pushes a command that sits at its limit beyond the range a robot declares for it
ALSO_FLAGGED_BY = {"action_noise": ("action_jump", "frozen_joint", "out_of_range")}


def read_episodes(site: Site, dataset_id: str) -> Iterator[Episode]:
    """The canonical episodes of an enrolled dataset, one at a time."""
    folder = store.frames_dir(site, dataset_id)
    ds = pads.dataset(str(folder), format="parquet")
    eps = sorted(set(ds.to_table(columns=["episode_index"])["episode_index"].to_pylist()))
    for e in eps:
        t = ds.to_table(filter=pads.field("episode_index") == e).sort_by("frame_index")
        yield _episode(t)


def _episode(t: pa.Table) -> Episode:
    ts = t["timestamp"].to_numpy()
    s = t["observation.state"].combine_chunks()
    a = t["action"].combine_chunks()
    n = t.num_rows
    return Episode(
        timestamps_us=np.rint((ts - ts[0]) * 1e6).astype(np.int64),
        state=s.values.to_numpy().reshape(n, -1).copy(),
        action=a.values.to_numpy().reshape(n, -1).copy(),
        task_index=int(t["task_index"][0].as_py()),
    )


def _copy(ep: Episode, **kw: Any) -> Episode:
    return dataclasses.replace(
        ep,
        **{
            "timestamps_us": ep.timestamps_us.copy(),
            "state": ep.state.copy(),
            "action": ep.action.copy(),
        }
        | kw,
    )


def nan(ep: Episode, rng: np.random.Generator) -> Episode:
    out = _copy(ep)
    t = int(rng.integers(ep.frames))
    out.state[t, int(rng.integers(ep.state.shape[1]))] = np.nan
    return out


def time_reversal(ep: Episode, rng: np.random.Generator) -> Episode:
    """The clock resets to 0 at a random frame (a real LeRobot failure)."""
    out = _copy(ep)
    t = int(rng.integers(ep.frames // 4, 3 * ep.frames // 4))
    out.timestamps_us[t:] -= out.timestamps_us[t]
    return out


def dropped_frames(ep: Episode, rng: np.random.Generator) -> Episode:
    """1 to 3 consecutive frames vanish (timestamps keep their gap)."""
    k = int(rng.integers(1, 4))
    t = int(rng.integers(ep.frames // 4, 3 * ep.frames // 4))
    keep = np.r_[0:t, t + k : ep.frames]
    return _copy(
        ep,
        timestamps_us=ep.timestamps_us[keep],
        state=ep.state[keep],
        action=ep.action[keep],
    )


def frozen_joint(
    ep: Episode,
    rng: np.random.Generator,
    joints: Sequence[int],
    travel: Sequence[float] | None = None,
) -> Episode:
    """A live state joint sticks at its value from 15 % of the episode to its end.

    One of ``joints`` that still moves after that point: by more than
    ``travel[j]`` (``MOTION_SHARE`` of its usual range in :func:`corrupt_dataset`) if
    given, else at all. When none does (the robot holds still from there on) a
    stuck reading cannot be told from a working one and changes nothing a
    policy learns from: the episode is returned unchanged, no defect.
    """
    out = _copy(ep)
    t = int(0.15 * ep.frames)
    moving = [
        j for j in joints if np.ptp(ep.state[t:, j]) > (travel[j] if travel is not None else 0.0)
    ]
    if not moving:
        return out
    j = int(rng.choice(moving))
    out.state[t:, j] = out.state[t, j]
    return out


def action_jump(ep: Episode, rng: np.random.Generator, joint: int, lo: float, hi: float) -> Episode:
    """One frame's action on ``joint`` jumps to the far end of its usual range and back.

    The frame is one whose neighbours both lie at least half the range away from
    the end it jumps to: on an on/off or bang-bang command, setting the frame
    just before a switch to the value after it moves the switch by one frame,
    which is no glitch (issue 18). Smooth joints accept any frame.
    """
    out = _copy(ep)
    a = out.action[:, joint].astype(float)
    frames = 1 + rng.permutation(max(ep.frames - 2, 1))
    t, end = int(frames[0]), lo
    for cand in frames:
        near = (a[cand - 1], a[min(cand + 1, ep.frames - 1)])
        t, end = (
            int(cand),
            lo if min(abs(x - lo) for x in near) > min(abs(x - hi) for x in near) else hi,
        )
        if min(abs(x - end) for x in near) >= 0.5 * (hi - lo):
            break
    out.action[t, joint] = end
    return out


def action_noise(ep: Episode, rng: np.random.Generator, scale: np.ndarray) -> Episode:
    """Gaussian noise of ``scale`` (per joint) on every action: a noisy command channel."""
    out = _copy(ep)
    out.action[:] = ep.action + (rng.normal(0, 1, ep.action.shape) * scale).astype(np.float32)
    return out


def out_of_range(ep: Episode, rng: np.random.Generator, lo: float, hi: float, j: int) -> Episode:
    """A short stretch of one state joint far beyond the data's range."""
    out = _copy(ep)
    t = int(rng.integers(0, ep.frames - 5))
    out.state[t : t + 5, j] = hi + 4.0 * (hi - lo) + 1.0
    return out


def missing_task(ep: Episode, rng: np.random.Generator) -> Episode:
    return _copy(ep, task_index=-1)


def near_duplicate(ep: Episode, rng: np.random.Generator) -> Episode:
    """A copy with tiny noise: a different hash, the same demonstration."""
    out = _copy(ep)
    scale = 1e-5 * (np.nanstd(ep.state, axis=0) + 1e-6)
    out.state[:] = ep.state + rng.normal(0, 1, ep.state.shape).astype(np.float32) * scale
    return out


def write_dataset(
    site: Site,
    name: str,
    episodes: Sequence[Episode],
    *,
    fps: float,
    tasks: Sequence[str] = ("task",),
    state_names: Sequence[str] | None = None,
    action_names: Sequence[str] | None = None,
    license: str | None = None,
    declared_ranges: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> str:
    """Store ``episodes`` as a new dataset (no validation); returns its dataset_id.

    ``declared_ranges`` ({"observation.state": {name: [lo, hi]}, "action": ...})
    goes into the catalog, where quality/check.py reads a robot's declared ranges.
    """
    hashes = [episode_hash(ep) for ep in episodes]
    fp = fingerprint(hashes).hex() if hashes else "00" * 32
    dataset_id = dataset_id_for(bytes.fromhex(fp)) if hashes else f"ds-empty-{name}"
    s_dim = episodes[0].state.shape[1] if episodes else 6
    a_dim = episodes[0].action.shape[1] if episodes else 6
    with store.staging(site) as st:
        if episodes:
            w = store.FrameWriter(st.directory, s_dim, a_dim)
            for i, ep in enumerate(episodes):
                w.add(i, ep)
            w.close()
        row = {
            "dataset_id": dataset_id,
            "name": name,
            "fingerprint": fp,
            "format": "synthetic",
            "robot_type": "test",
            "fps": fps,
            "state_dim": s_dim,
            "action_dim": a_dim,
            "episodes": len(episodes),
            "frames": sum(ep.frames for ep in episodes),
            "state_names": list(state_names or [str(i) for i in range(s_dim)]),
            "action_names": list(action_names or [str(i) for i in range(a_dim)]),
            "tasks": list(tasks),
            "license": license,
            "source_path": None,
            "catalog": (
                {DECLARED_RANGES_KEY: {f: {n: list(b) for n, b in r.items()} for f, r in d.items()}}
                if (d := declared_ranges)
                else {}
            ),
            "attachments": [],
        }
        table = pa.table(
            {
                "dataset_id": pa.array([dataset_id] * len(episodes), pa.string()),
                "episode_index": pa.array(range(len(episodes)), pa.int64()),
                "hash": pa.array([h.hex() for h in hashes], pa.string()),
                "frames": pa.array([ep.frames for ep in episodes], pa.int64()),
                "task_index": pa.array([ep.task_index for ep in episodes], pa.int64()),
                "duration_s": pa.array(
                    [float(ep.timestamps_us[-1]) / 1e6 if ep.frames else 0.0 for ep in episodes],
                    pa.float64(),
                ),
            }
        )
        store.commit(site, st, row, table)
    return dataset_id


def _same(a: Episode, b: Episode) -> bool:
    return (
        a.task_index == b.task_index
        and np.array_equal(a.timestamps_us, b.timestamps_us)
        and np.array_equal(a.state, b.state, equal_nan=True)
        and np.array_equal(a.action, b.action, equal_nan=True)
    )


def corrupt_dataset(
    episodes: Sequence[Episode], plan: dict[int, str], seed: int = 0
) -> tuple[list[Episode], dict[int, str], dict[int, int]]:
    """Apply ``plan`` {episode_index: kind} to clean episodes.

    ``duplicate`` and ``near_duplicate`` *append* a copy of the planned episode
    (the copy is the corrupted one). Returns the episodes, ``truth`` (final
    index of every corrupted episode -> kind; a corruption that changed nothing,
    e.g. freezing a joint while the robot holds still, is left out) and ``sources`` (index of each
    appended copy -> the episode it copies: a copy of an episode that was
    already an outlier is one too).
    """
    rng = np.random.default_rng(seed)
    eps = list(episodes)
    st = np.concatenate([e.state for e in episodes])
    ac = np.concatenate([e.action for e in episodes])
    s_lo, s_hi = np.nanquantile(st, 0.01, axis=0), np.nanquantile(st, 0.99, axis=0)
    a_lo, a_hi = np.nanquantile(ac, 0.01, axis=0), np.nanquantile(ac, 0.99, axis=0)
    # the smoothest action joint: largest usual range relative to its frame-to-frame change
    da = np.concatenate([np.abs(np.diff(e.action, axis=0)) for e in episodes if e.frames > 1])
    rough = np.nanquantile(da, 0.999, axis=0) / np.maximum(a_hi - a_lo, 1e-9)
    rough[(a_hi - a_lo) <= 1e-6] = np.inf
    jump_joint = int(np.argmin(rough))
    # live joints: change in almost every frame; a robot with none (every joint rests
    # at times) gets the joint that changes most often, not an arbitrary one
    ds = np.concatenate([np.diff(e.state, axis=0) != 0 for e in episodes if e.frames > 1])
    rate = ds.mean(axis=0)
    live = [j for j in range(st.shape[1]) if rate[j] > 0.85] or [int(np.argmax(rate))]
    # out-of-range joint: the one with the widest usual range
    oor_joint = int(np.argmax(s_hi - s_lo))
    truth: dict[int, str] = {}
    sources: dict[int, int] = {}
    for idx, kind in sorted(plan.items()):
        ep = episodes[idx]
        if kind in ("duplicate", "near_duplicate"):
            eps.append(_copy(ep) if kind == "duplicate" else near_duplicate(ep, rng))
            truth[len(eps) - 1] = kind
            sources[len(eps) - 1] = idx
            continue
        if kind == "nan":
            new = nan(ep, rng)
        elif kind == "time_reversal":
            new = time_reversal(ep, rng)
        elif kind == "dropped_frames":
            new = dropped_frames(ep, rng)
        elif kind == "frozen_joint":
            new = frozen_joint(ep, rng, live, MOTION_SHARE * (s_hi - s_lo))
        elif kind == "action_jump":
            new = action_jump(ep, rng, jump_joint, float(a_lo[jump_joint]), float(a_hi[jump_joint]))
        elif kind == "action_noise":
            new = action_noise(ep, rng, np.nanstd(ac, axis=0))
        elif kind == "out_of_range":
            new = out_of_range(ep, rng, float(s_lo[oor_joint]), float(s_hi[oor_joint]), oor_joint)
        elif kind == "missing_task":
            new = missing_task(ep, rng)
        else:
            raise ValueError(f"unknown corruption {kind!r}")
        eps[idx] = new
        if not _same(new, ep):  # a corruption that changed nothing is no defect
            truth[idx] = kind
    return eps, truth, sources
