"""Synthetic LeRobot v3.0 datasets of any size, for benchmarks and crash tests.

Smooth random-walk joint trajectories (not real data: for throughput and
failure testing only). Written file by file, so memory stays bounded by
``frames_per_file``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_lerobot_v3(
    root: Path,
    episodes: int,
    frames_per_episode: int,
    state_dim: int = 14,
    action_dim: int = 14,
    fps: int = 30,
    episodes_per_file: int = 100,
    seed: int = 0,
) -> int:
    """Write a LeRobot v3.0 folder at ``root``; returns the number of frames."""
    rng = np.random.default_rng(seed)
    data = root / "data" / "chunk-000"
    data.mkdir(parents=True, exist_ok=True)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    n = frames_per_episode
    meta_rows = []
    index = 0
    for file_index, first in enumerate(range(0, episodes, episodes_per_file)):
        eps = range(first, min(first + episodes_per_file, episodes))
        rows = len(eps) * n
        state = np.cumsum(rng.normal(0, 0.01, size=(rows, state_dim)), axis=0).astype(np.float32)
        action = state[:, :action_dim] + rng.normal(0, 0.001, size=(rows, action_dim)).astype(
            np.float32
        )
        ts = np.tile((np.arange(n) / fps).astype(np.float32), len(eps))
        table = pa.table(
            {
                "observation.state": pa.FixedSizeListArray.from_arrays(
                    pa.array(state.reshape(-1)), state_dim
                ),
                "action": pa.FixedSizeListArray.from_arrays(
                    pa.array(action.reshape(-1)), action_dim
                ),
                "timestamp": pa.array(ts),
                "frame_index": pa.array(np.tile(np.arange(n), len(eps))),
                "episode_index": pa.array(np.repeat(np.array(list(eps)), n)),
                "index": pa.array(np.arange(index, index + rows)),
                "task_index": pa.array(np.zeros(rows, dtype=np.int64)),
            }
        )
        pq.write_table(table, data / f"file-{file_index:03d}.parquet")
        for e in eps:
            meta_rows.append(
                {
                    "episode_index": e,
                    "tasks": ["synthetic reach"],
                    "length": n,
                    "data/chunk_index": 0,
                    "data/file_index": file_index,
                    "dataset_from_index": index + (e - first) * n,
                    "dataset_to_index": index + (e - first + 1) * n,
                }
            )
        index += rows
    pq.write_table(
        pa.Table.from_pylist(meta_rows), root / "meta/episodes/chunk-000/file-000.parquet"
    )
    pq.write_table(
        pa.table({"task_index": [0], "task": ["synthetic reach"]}), root / "meta/tasks.parquet"
    )
    features = {
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
        "action": {"dtype": "float32", "shape": [action_dim], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {
        "codebase_version": "v3.0",
        "robot_type": "synthetic",
        "total_episodes": episodes,
        "total_frames": index,
        "total_tasks": 1,
        "chunks_size": 1000,
        "fps": fps,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "features": features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return index
