"""Write real LeRobot episodes out again as robomimic HDF5, ROS 2 MCAP, flat Parquet and CSV.

The episodes are read straight from the LeRobot Parquet files with pyarrow
(not through our reader), so a fingerprint match between formats tests the
readers, not a shared code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from mcap_ros2.writer import Writer as Ros2Writer

JOINT_STATE_MSGDEF = """std_msgs/Header header
string[] name
float64[] position
float64[] velocity
float64[] effort
================================================================================
MSG: std_msgs/Header
builtin_interfaces/Time stamp
string frame_id
================================================================================
MSG: builtin_interfaces/Time
int32 sec
uint32 nanosec
"""

FLOAT64_ARRAY_MSGDEF = """std_msgs/MultiArrayLayout layout
float64[] data
================================================================================
MSG: std_msgs/MultiArrayLayout
std_msgs/MultiArrayDimension[] dim
uint32 data_offset
================================================================================
MSG: std_msgs/MultiArrayDimension
string label
uint32 size
uint32 stride
"""


@dataclass
class RawEpisode:
    index: int
    timestamps: np.ndarray  # seconds, as stored (float32 in these datasets)
    state: np.ndarray  # float32 [N, S]
    action: np.ndarray  # float32 [N, A]


def read_lerobot(
    root: Path, state: str, action: str, episodes: list[int] | None = None
) -> list[RawEpisode]:
    """Episodes of a LeRobot dataset (either layout), straight from its data files."""
    out: dict[int, list[pa.Table]] = {}
    for f in sorted(root.glob("data/chunk-*/*.parquet")):
        t = pq.read_table(f, columns=["episode_index", "frame_index", "timestamp", state, action])
        for ep in sorted(set(t["episode_index"].to_pylist())):
            if episodes is None or ep in episodes:
                mask = pa.compute.equal(t["episode_index"], ep)
                out.setdefault(ep, []).append(t.filter(mask))
    result = []
    for ep in sorted(out):
        t = pa.concat_tables(out[ep]).sort_by("frame_index")
        s = np.stack(t[state].to_numpy(zero_copy_only=False)).astype(np.float32)
        a = np.stack(t[action].to_numpy(zero_copy_only=False)).astype(np.float32)
        result.append(RawEpisode(ep, t["timestamp"].to_numpy(), s, a))
    return result


def write_hdf5(path: Path, episodes: list[RawEpisode], fps: float | None, split: int = 3) -> None:
    """robomimic layout; the state is split over two obs keys whose sorted order restores it.

    ``timestamps`` per demo carries the original clock (our documented extension).
    """
    with h5py.File(path, "w") as h:
        data = h.create_group("data")
        if fps is not None:
            data.attrs["fps"] = fps
        data.attrs["total"] = sum(len(e.timestamps) for e in episodes)
        for i, e in enumerate(episodes):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = len(e.timestamps)
            obs = g.create_group("obs")
            obs["joint_pos"] = e.state[:, :split]
            obs["joint_rest"] = e.state[:, split:].astype(np.float64)
            g["actions"] = e.action
            g["timestamps"] = e.timestamps
            g["rewards"] = np.zeros(len(e.timestamps), np.float32)
            g["dones"] = np.zeros(len(e.timestamps), np.uint8)


def stamps_ns(e: RawEpisode, base_ns: int) -> np.ndarray:
    """The episode clock as integer ns: whole microseconds of the original, so that
    ns -> us conversion gives exactly the microseconds the original hashes as."""
    ts = e.timestamps.astype(np.float64)
    us = np.rint((ts - ts[0]) * 1e6).astype(np.int64)
    return base_ns + us * 1000


def write_mcap(
    path: Path,
    episodes: list[RawEpisode],
    state_topic: str = "/joint_states",
    action_topic: str = "/action",
    action_as_joint_state: bool = False,
    gap_s: float = 5.0,
    base_ns: int = 1_700_000_000_000_000_000,
) -> None:
    """State as sensor_msgs/JointState, action as Float64MultiArray (or JointState), one
    message each per frame at the frame's stamp; episodes separated by ``gap_s``."""
    with path.open("wb") as f:
        w = Ros2Writer(f)
        js = w.register_msgdef("sensor_msgs/msg/JointState", JOINT_STATE_MSGDEF)
        fa = w.register_msgdef("std_msgs/msg/Float64MultiArray", FLOAT64_ARRAY_MSGDEF)
        t0 = base_ns
        for e in episodes:
            stamps = stamps_ns(e, t0)
            names = [f"j{k}" for k in range(e.state.shape[1])]
            for k, ns in enumerate(stamps.tolist()):
                header = {"stamp": {"sec": ns // 10**9, "nanosec": ns % 10**9}, "frame_id": ""}
                w.write_message(
                    state_topic,
                    js,
                    {
                        "header": header,
                        "name": names,
                        "position": e.state[k].tolist(),
                        "velocity": [],
                        "effort": [],
                    },
                    log_time=ns,
                    publish_time=ns,
                )
                if action_as_joint_state:
                    msg = {
                        "header": header,
                        "name": [],
                        "position": e.action[k].tolist(),
                        "velocity": [],
                        "effort": [],
                    }
                    w.write_message(action_topic, js, msg, log_time=ns, publish_time=ns)
                else:
                    msg = {"layout": {"dim": [], "data_offset": 0}, "data": e.action[k].tolist()}
                    w.write_message(action_topic, fa, msg, log_time=ns, publish_time=ns)
            t0 = int(stamps[-1]) + int(gap_s * 1e9)
        w.finish()


def flat_table(episodes: list[RawEpisode], list_columns: bool) -> pa.Table:
    """One row per frame: episode_index, frame_index, timestamp, state, action."""
    ep = np.concatenate([np.full(len(e.timestamps), i) for i, e in enumerate(episodes)])
    fr = np.concatenate([np.arange(len(e.timestamps)) for e in episodes])
    ts = np.concatenate([e.timestamps.astype(np.float64) for e in episodes])
    state = np.concatenate([e.state for e in episodes])
    action = np.concatenate([e.action for e in episodes])
    cols: dict[str, pa.Array] = {
        "episode_index": pa.array(ep, pa.int64()),
        "frame_index": pa.array(fr, pa.int64()),
        "timestamp": pa.array(ts),
    }
    if list_columns:
        cols["observation.state"] = pa.FixedSizeListArray.from_arrays(
            pa.array(state.reshape(-1)), state.shape[1]
        )
        cols["action"] = pa.FixedSizeListArray.from_arrays(
            pa.array(action.reshape(-1)), action.shape[1]
        )
    else:
        for k in range(state.shape[1]):
            cols[f"state_{k}"] = pa.array(state[:, k].astype(np.float64))
        for k in range(action.shape[1]):
            cols[f"action_{k}"] = pa.array(action[:, k].astype(np.float64))
    return pa.table(cols)


def write_parquet(path: Path, episodes: list[RawEpisode], list_columns: bool = True) -> None:
    pq.write_table(flat_table(episodes, list_columns), path, row_group_size=1000)


def write_csv(path: Path, episodes: list[RawEpisode]) -> None:
    pacsv.write_csv(flat_table(episodes, list_columns=False), path)
