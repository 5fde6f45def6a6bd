"""Synthetic stand-ins for the two LeRobot v3.0 recordings the repository may not ship.

The SO-101 recording (SamueleSandrini/record-test) and the bimanual one
(yipiandanxinxiangyangkai/open_50) state no licence, so they are not in the
repository; tests run against these stand-ins instead (and, where ../shared is
present, also against the real ones: tests/conftest.py). The Unitree G1
recording is MIT and is committed as it is (tests/data).

What a stand-in keeps from its original (what the tests exercise):

* the LeRobot v3.0 layout file for file: ``meta/info.json`` (same keys, same
  features including the declared but absent videos, same robot type, fps 30,
  chunk/file templates), ``meta/stats.json``, ``meta/tasks.parquet`` (pandas
  index column, as LeRobot writes it), ``meta/episodes/chunk-000/file-000.parquet``
  (episode index, tasks, length, data and video chunk/file indices, dataset
  from/to indices, video from/to timestamps, per-episode ``stats/*`` columns,
  meta chunk/file indices) and the data Parquet files with the same column
  order, Arrow types and schema metadata kind;
* so101: one data file, one row group per episode, ``observation.state`` /
  ``action`` as ``fixed_size_list<float>[6]``, 4 episodes of 373, 374, 372 and
  373 frames (1,492), the joint names and units (LeRobot's normalised +-100,
  gripper 0-100), two absent camera videos in one file;
* bimanual: the non-standard ``state`` / ``actions`` columns as
  ``list<float>`` of 34 (two 7-DoF arms, two 10-DoF hands), one data file and
  one absent video file per episode, 50 episodes of 296 to 582 frames (20,225
  in all; the original has 20,814); the left arm barely moves, the left hand
  reads 0 throughout, the right hand is integer-valued within [5, 250] with
  two joints that never move, arm actions are quantised to 0.1;
* float32 timestamps ``frame_index / 30`` restarting at 0 in each episode, a
  global ``index`` and ``task_index`` 0 (one task).

The values are smooth: each joint is a rest pose plus a slowly varying sum of
sinusoids under an envelope that starts and ends at rest (a reach and return),
the state follows the action a few frames late, with small noise and encoder
quantisation. They lie in the ranges of the originals, so the quality checks,
the DP bound search and training behave as on recorded data. They are not
recorded data: no test may read them as evidence about a real robot.

Deterministic: the same seed gives the same bytes (for this pyarrow version).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 30
SO101_NAME = "so101-record-test-lerobot-v3"
BIMANUAL_NAME = "bimanual-open50-lerobot-v3"
SO101_LENGTHS = (373, 374, 372, 373)
BIMANUAL_EPISODES = 50
STAT_KEYS = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)

SO101_JOINTS = (
    "shoulder_pan.pos",
    "shoulder_lift.pos",
    "elbow_flex.pos",
    "wrist_flex.pos",
    "wrist_roll.pos",
    "gripper.pos",
)
#: right hand joints: the value at rest (open) and how far each closes on a grasp
HAND_OPEN = np.array([60.0, 250.0, 240.0, 70.0, 5.0, 100.0, 250.0, 250.0, 120.0, 250.0])
HAND_TRAVEL = np.array([55.0, 90.0, 120.0, 65.0, 0.0, 95.0, 245.0, 0.0, 115.0, 80.0])
BIMANUAL_JOINTS = tuple(
    [f"left.joint_{i}.pos" for i in range(1, 8)]
    + [f"right.joint_{i}.pos" for i in range(1, 8)]
    + [f"left_hand.joint_{i}.pos" for i in range(1, 11)]
    + [f"right_hand.joint_{i}.pos" for i in range(1, 11)]
)


# --- meta/info.json -----------------------------------------------------------------


def _video_feature(codec: str) -> dict:
    return {
        "dtype": "video",
        "shape": [480, 640, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": 480,
            "video.width": 640,
            "video.codec": codec,
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": FPS,
            "video.channels": 3,
            "has_audio": False,
        },
    }


def _scalar(dtype: str) -> dict:
    return {"dtype": dtype, "shape": [1], "names": None}


_INDEX_FEATURES = {
    "timestamp": _scalar("float32"),
    "frame_index": _scalar("int64"),
    "episode_index": _scalar("int64"),
    "index": _scalar("int64"),
    "task_index": _scalar("int64"),
}


def _info(
    robot_type: str,
    episodes: int,
    frames: int,
    data_mb: int,
    video_mb: int,
    features: dict,
) -> dict:
    return {
        "codebase_version": "v3.0",
        "robot_type": robot_type,
        "total_episodes": episodes,
        "total_frames": frames,
        "total_tasks": 1,
        "chunks_size": 1000,
        "data_files_size_in_mb": data_mb,
        "video_files_size_in_mb": video_mb,
        "fps": FPS,
        "splits": {"train": f"0:{episodes}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features,
    }


# --- trajectories -----------------------------------------------------------------


def _envelope(n: int, rng: np.random.Generator) -> np.ndarray:
    """0 at rest, rising to 1 while the arm works, back to 0: a reach and return."""
    t = np.linspace(0.0, 1.0, n)
    lo, hi = rng.uniform(0.04, 0.12), rng.uniform(0.86, 0.95)
    up = np.clip((t - lo) / 0.15, 0, 1)
    down = np.clip((hi - t) / 0.15, 0, 1)
    return (np.sin(0.5 * np.pi * up) * np.sin(0.5 * np.pi * down)) ** 2


def _smooth(n: int, dims: int, rng: np.random.Generator, max_hz: float) -> np.ndarray:
    """(n, dims) sums of three sinusoids per joint, each of unit amplitude overall."""
    t = np.arange(n)[:, None] / FPS
    out = np.zeros((n, dims))
    for k in range(3):
        f = rng.uniform(0.03, max_hz, dims) / (k + 1)
        phase = rng.uniform(0, 2 * np.pi, dims)
        out += rng.uniform(0.3, 1.0, dims) * np.sin(2 * np.pi * f * t + phase)
    return out / 2.0


def _follow(action: np.ndarray, lag: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """The measured state: the commanded action ``lag`` frames late, low-passed, noisy."""
    state = np.concatenate([np.repeat(action[:1], lag, axis=0), action[:-lag]])
    kernel = np.ones(5) / 5
    pad = np.pad(state, ((2, 2), (0, 0)), mode="edge")
    state = np.stack([np.convolve(pad[:, j], kernel, mode="valid") for j in range(state.shape[1])])
    return state.T + rng.normal(0, noise, state.T.shape)


def so101_episode(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(state, action), (n, 6) each: an SO-101 pick-and-place in LeRobot's +-100 units."""
    rest = np.array([-17.8, -98.3, 99.2, 72.0, -56.3, 2.0])
    # how far each joint travels away from rest while working (sign: the way it goes)
    reach = np.array([rng.uniform(-15, 15), 75.0, -55.0, -20.0, rng.uniform(-10, 10), 0.0])
    swing = np.array([16.0, 30.0, 30.0, 16.0, 12.0, 0.0])
    env = _envelope(n, rng)[:, None]
    action = rest + env * (reach + swing * _smooth(n, 6, rng, 0.35))
    # the gripper opens to grasp and closes on the object, twice, smoothly
    t = np.linspace(0, 1, n)
    centres = np.sort(rng.uniform(0.2, 0.8, 2))
    grip = sum(np.exp(-(((t - c) / 0.06) ** 2)) for c in centres)
    action[:, 5] = 1.0 + rng.uniform(28, 38) * np.clip(grip, 0, 1) * env[:, 0]
    action = np.clip(action, [-100, -100, -100, -100, -100, 0], [100, 100, 100, 100, 100, 100])
    state = _follow(action, 3, rng, 0.05)
    step = 0.0907  # one encoder step in LeRobot's normalised units (as the original moves)
    state = np.round(state / step) * step
    state = np.clip(state, [-100, -100, -100, -100, -100, 0], [100, 100, 100, 100, 100, 100])
    return state.astype(np.float32), action.astype(np.float32)


def bimanual_episode(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(state, action), (n, 34) each: right arm and hand work, the left ones hold still."""
    left_rest = np.array([0.0, 2.5, 43.0, 2.5, 152.5, -0.5, -4.8])
    right_rest = np.array([-4.0, -2.0, -26.0, 3.0, -164.0, 1.0, 42.0])
    right_reach = np.array([30.0, 12.0, -8.0, 55.0, 10.0, -15.0, -30.0])
    right_swing = np.array([12.0, 10.0, 10.0, 25.0, 8.0, 12.0, 20.0])
    env = _envelope(n, rng)[:, None]
    action = np.zeros((n, 34))
    action[:, :7] = left_rest + 0.4 * _smooth(n, 7, rng, 0.1)
    action[:, 7:14] = right_rest + env * (
        right_reach * rng.uniform(0.6, 1.0) + right_swing * _smooth(n, 7, rng, 0.3)
    )
    action[:, 14:24] = 0.0  # the left hand reports nothing
    # the right hand: open at rest, closes on the object in the middle of the episode;
    # two of its joints never move (one reads 5, one 250), as in the original
    t = np.linspace(0, 1, n)
    c, w = rng.uniform(0.35, 0.65), rng.uniform(0.12, 0.2)
    grasp = np.clip(1.6 * np.exp(-(((t - c) / w) ** 4)), 0, 1)[:, None]
    travel = HAND_TRAVEL * rng.uniform(0.7, 1.0, 10)
    wobble = 6.0 * env * _smooth(n, 10, rng, 0.4) * (HAND_TRAVEL > 0)
    action[:, 24:34] = HAND_OPEN - grasp * travel + wobble
    action[:, 7:14] = np.clip(action[:, 7:14], -250, 250)
    state = _follow(action, 2, rng, 0.02)
    action[:, :14] = np.round(action[:, :14], 1)  # the teleoperation commands, to 0.1
    state[:, 14:24] = 0.0
    action[:, 24:34] = np.clip(np.round(action[:, 24:34]), 5, 250)
    state[:, 24:34] = np.clip(np.round(state[:, 24:34]), 5, 250)
    return state.astype(np.float32), action.astype(np.float32)


# --- statistics ---------------------------------------------------------------------


def _stats(x: np.ndarray, integer: bool = False) -> dict[str, list]:
    """LeRobot's per-feature statistics of an (n, d) array."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    xf = x.astype(np.float64)
    out: dict[str, list] = {
        "min": (x.min(0).astype(np.int64) if integer else xf.min(0)).tolist(),
        "max": (x.max(0).astype(np.int64) if integer else xf.max(0)).tolist(),
        "mean": xf.mean(0).tolist(),
        "std": xf.std(0).tolist(),
        "count": [len(x)],
    }
    for q, v in zip(QUANTILES, np.quantile(xf, QUANTILES, axis=0), strict=True):
        out[f"q{round(q * 100):02d}"] = v.tolist()
    return out


def _image_stats(rng: np.random.Generator, count: int) -> dict[str, list]:
    """Placeholder per-channel image statistics (the videos are absent, as in the originals)."""
    mean = rng.uniform(0.4, 0.7, 3)
    std = rng.uniform(0.15, 0.25, 3)

    def nest(v: np.ndarray) -> list:
        return [[[float(x)]] for x in v]

    out = {
        "min": nest(np.clip(mean - 3 * std, 0, 1)),
        "max": nest(np.clip(mean + 3 * std, 0, 1)),
        "mean": nest(mean),
        "std": nest(std),
        "count": [count],
    }
    for q, z in zip(QUANTILES, (-2.3, -1.3, 0.0, 1.3, 2.3), strict=True):
        out[f"q{round(q * 100):02d}"] = nest(np.clip(mean + z * std, 0, 1))
    return out


def _stat_type(values: list) -> pa.DataType:
    depth, v = 0, values
    while isinstance(v, list):
        depth, v = depth + 1, v[0]
    t: pa.DataType = pa.int64() if isinstance(v, int) else pa.float64()
    for _ in range(depth):
        t = pa.list_(t)
    return t


# --- writing ---------------------------------------------------------------------------


def _vector_array(x: np.ndarray, fixed: bool) -> pa.Array:
    flat = pa.array(x.reshape(-1), pa.float32())
    if fixed:
        return pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    offsets = pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _frames(
    columns: tuple[str, str], state: np.ndarray, action: np.ndarray, episode: np.ndarray,
    frame: np.ndarray, first_index: int, fixed: bool,
) -> pa.Table:  # fmt: skip
    """The data table with LeRobot's column order: action, state, then the indices."""
    state_col, action_col = columns
    return pa.table(
        {
            action_col: _vector_array(action, fixed),
            state_col: _vector_array(state, fixed),
            "timestamp": pa.array((frame / FPS).astype(np.float32)),
            "frame_index": pa.array(frame.astype(np.int64)),
            "episode_index": pa.array(episode.astype(np.int64)),
            "index": pa.array(np.arange(first_index, first_index + len(frame), dtype=np.int64)),
            "task_index": pa.array(np.zeros(len(frame), dtype=np.int64)),
        }
    )


def _hf_metadata(features: dict, columns: list[str], digest: str) -> dict[bytes, bytes]:
    """The ``huggingface`` schema metadata LeRobot's datasets writer leaves (so101 files)."""
    hf = {}
    for c in columns:
        f = features[c]
        if f["shape"] == [1]:
            hf[c] = {"dtype": f["dtype"], "_type": "Value"}
        else:
            hf[c] = {
                "feature": {"dtype": f["dtype"], "_type": "Value"},
                "length": f["shape"][0],
                "_type": "List",
            }
    meta = {"info": {"features": hf}, "fingerprint": digest[:16]}
    return {b"huggingface": json.dumps(meta).encode()}


def _pandas_metadata(table: pa.Table) -> dict[bytes, bytes]:
    """The ``pandas`` schema metadata a DataFrame written with pyarrow carries (bimanual)."""
    return table.to_pandas().pipe(pa.Table.from_pandas, preserve_index=False).schema.metadata


def _write_tasks(root: Path, task: str) -> None:
    import pandas as pd

    df = pd.DataFrame({"task_index": [0]}, index=pd.Index([task]))
    t = pa.Table.from_pandas(df)
    # string, not large_string, whichever string dtype this pandas uses
    fields = [f.with_type(pa.string()) if f.type == pa.large_string() else f for f in t.schema]
    t = t.cast(pa.schema(fields, metadata=t.schema.metadata))
    pq.write_table(t, root / "meta" / "tasks.parquet")


def _write_lerobot_v3(
    root: Path,
    *,
    rng: np.random.Generator,
    lengths: list[int],
    make_episode: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]],
    columns: tuple[str, str],
    names: tuple[str, ...],
    videos: dict[str, str],
    robot_type: str,
    task: str,
    one_file_per_episode: bool,
    fixed: bool,
    sizes_mb: tuple[int, int],
) -> Path:
    state_col, action_col = columns
    dim = len(names)
    vector = {"dtype": "float32", "names": list(names), "shape": [dim]}
    features = {action_col: dict(vector), state_col: dict(vector)}
    features.update({k: _video_feature(codec) for k, codec in videos.items()})
    features.update(json.loads(json.dumps(_INDEX_FEATURES)))
    info = _info(robot_type, len(lengths), sum(lengths), *sizes_mb, features)

    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    eps = [make_episode(n, rng) for n in lengths]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)

    # data files: one per episode (bimanual) or one with a row group per episode (so101)
    groups = (
        [[i] for i in range(len(lengths))] if one_file_per_episode else [list(range(len(lengths)))]
    )
    digest = hashlib.sha256()
    for file_index, group in enumerate(groups):
        parts = []
        for e in group:
            n = lengths[e]
            state, action = eps[e]
            digest.update(state.tobytes() + action.tobytes())
            parts.append(
                _frames(columns, state, action, np.full(n, e), np.arange(n), int(starts[e]), fixed)
            )
        table = pa.concat_tables(parts)
        if fixed:
            meta = _hf_metadata(features, table.column_names, digest.hexdigest())
        else:
            meta = _pandas_metadata(table)
        table = table.replace_schema_metadata(meta)
        path = root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet"
        with pq.ParquetWriter(path, table.schema) as w:  # a row group per episode
            for part in parts:
                w.write_table(part.replace_schema_metadata(meta))

    # meta/episodes: one row per episode, LeRobot's column order
    rows: dict[str, list] = {
        "episode_index": [], "tasks": [], "length": [], "data/chunk_index": [],
        "data/file_index": [], "dataset_from_index": [], "dataset_to_index": [],
    }  # fmt: skip
    for key in videos:
        for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
            rows[f"videos/{key}/{c}"] = []
    stat_rows: dict[str, list] = {}
    for e, n in enumerate(lengths):
        file_index = e if one_file_per_episode else 0
        rows["episode_index"].append(e)
        rows["tasks"].append([task])
        rows["length"].append(n)
        rows["data/chunk_index"].append(0)
        rows["data/file_index"].append(file_index)
        rows["dataset_from_index"].append(int(starts[e]))
        rows["dataset_to_index"].append(int(starts[e + 1]))
        # videos: from/to timestamps within the video file that holds the episode
        t0 = 0.0 if one_file_per_episode else starts[e] / FPS
        for key in videos:
            rows[f"videos/{key}/chunk_index"].append(0)
            rows[f"videos/{key}/file_index"].append(file_index)
            rows[f"videos/{key}/from_timestamp"].append(float(t0))
            rows[f"videos/{key}/to_timestamp"].append(float(t0 + n / FPS))
        state, action = eps[e]
        frame = np.arange(n)
        per = {
            action_col: _stats(action),
            state_col: _stats(state),
            **{k: _image_stats(rng, min(100 + n // 25, n)) for k in videos},
            "timestamp": _stats((frame / FPS).astype(np.float32)),
            "frame_index": _stats(frame, integer=True),
            "episode_index": _stats(np.full(n, e), integer=True),
            "index": _stats(np.arange(starts[e], starts[e + 1]), integer=True),
            "task_index": _stats(np.zeros(n, dtype=np.int64), integer=True),
        }
        for feat, st in per.items():
            for k in STAT_KEYS:
                stat_rows.setdefault(f"stats/{feat}/{k}", []).append(st[k])
    rows.update(stat_rows)
    rows["meta/episodes/chunk_index"] = [0] * len(lengths)
    rows["meta/episodes/file_index"] = [0] * len(lengths)
    arrays = {}
    for k, v in rows.items():
        if k.startswith("stats/"):
            arrays[k] = pa.array(v, _stat_type(v[0]))
        elif k == "tasks":
            arrays[k] = pa.array(v, pa.list_(pa.string()))
        elif k.endswith("_timestamp"):
            arrays[k] = pa.array(v, pa.float64())
        else:
            arrays[k] = pa.array(v, pa.int64())
    episodes = pa.table(arrays)
    if not fixed:
        episodes = episodes.replace_schema_metadata(_pandas_metadata(episodes))
    pq.write_table(episodes, root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")

    # meta/stats.json: the same statistics over the whole dataset
    state = np.concatenate([s for s, _ in eps])
    action = np.concatenate([a for _, a in eps])
    frame = np.concatenate([np.arange(n) for n in lengths])
    episode = np.concatenate([np.full(n, e) for e, n in enumerate(lengths)])
    total = {
        action_col: _stats(action),
        state_col: _stats(state),
        **{k: _image_stats(rng, 100 * len(lengths)) for k in videos},
        "timestamp": _stats((frame / FPS).astype(np.float32)),
        "frame_index": _stats(frame, integer=True),
        "episode_index": _stats(episode, integer=True),
        "index": _stats(np.arange(sum(lengths)), integer=True),
        "task_index": _stats(np.zeros(sum(lengths), dtype=np.int64), integer=True),
    }
    (root / "meta" / "stats.json").write_text(json.dumps(total, indent=4))
    _write_tasks(root, task)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    return root


def make_so101(root: Path, seed: int = 101) -> Path:
    """The SO-101 stand-in at ``root`` (created; must not exist)."""
    return _write_lerobot_v3(
        root,
        rng=np.random.default_rng(seed),
        lengths=list(SO101_LENGTHS),
        make_episode=so101_episode,
        columns=("observation.state", "action"),
        names=SO101_JOINTS,
        videos={"observation.images.front": "av1", "observation.images.top": "av1"},
        robot_type="so101_follower",
        task="Pick the orange cube and place it in the box",
        one_file_per_episode=False,
        fixed=True,
        sizes_mb=(100, 500),
    )


def make_bimanual(root: Path, seed: int = 50) -> Path:
    """The bimanual stand-in at ``root`` (created; must not exist)."""
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in np.clip(rng.normal(416, 70, BIMANUAL_EPISODES), 296, 582)]
    return _write_lerobot_v3(
        root,
        rng=rng,
        lengths=lengths,
        make_episode=bimanual_episode,
        columns=("state", "actions"),
        names=BIMANUAL_JOINTS,
        videos={"image": "h264"},
        robot_type="lingzu_highcam_pi05",
        task="lingzu teleoperation",
        one_file_per_episode=True,
        fixed=False,
        sizes_mb=(20, 20),
    )


def make_all(root: Path, seed: int = 0) -> dict[str, Path]:
    """Both stand-ins under ``root`` (created if missing), by dataset folder name."""
    root.mkdir(parents=True, exist_ok=True)
    return {
        SO101_NAME: make_so101(root / SO101_NAME, seed=101 + seed),
        BIMANUAL_NAME: make_bimanual(root / BIMANUAL_NAME, seed=50 + seed),
    }


def ensure(root: Path, seed: int = 0) -> dict[str, Path]:
    """``make_all`` into ``root`` unless it is already complete; safe between processes.

    Generates into a private sibling folder and renames it into place: a
    concurrent caller (another pytest-xdist worker) either finds the finished
    folder or loses the rename and drops its own copy.
    """
    done = root / ".complete"
    if not done.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
        try:
            make_all(tmp, seed)
            (tmp / ".complete").write_text(f"seed {seed}\n")
            try:
                os.rename(tmp, root)
            except OSError:
                if not done.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {name: root / name for name in (SO101_NAME, BIMANUAL_NAME)}
