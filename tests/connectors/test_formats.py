"""The same real episodes in HDF5, MCAP, flat Parquet and CSV enroll with the same fingerprint."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from dataspace.connectors.detect import detect
from dataspace.connectors.enroll import enroll
from dataspace.connectors.hdf5 import demo_names
from dataspace.schema import fingerprint
from dataspace.site import Site, create_site, store
from tests.conftest import BIMANUAL, SO101, UNITREE
from tests.connectors import writers

#: (dataset, state column, action column, episodes used); None = all
CASES = {
    "so101": (SO101, "observation.state", "action", None),
    "bimanual": (BIMANUAL, "state", "actions", list(range(12))),
    "unitree": (UNITREE, "observation.state", "action", [0, 1, 2]),
}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, list]]:
    """Per dataset: the fingerprint the LeRobot original gives for the episodes used,
    and those episodes read straight from its Parquet files."""
    site = create_site(tmp_path_factory.mktemp("ref") / "site", org="Ref")
    out = {}
    for key, (root, s, a, subset) in CASES.items():
        r = enroll(site, root)
        hashes = [bytes.fromhex(e["hash"]) for e in store.episode_rows(site, r.dataset_id)]
        if subset is not None:
            hashes = [hashes[i] for i in subset]
        out[key] = (fingerprint(hashes).hex(), writers.read_lerobot(root, s, a, subset))
    return out


@pytest.mark.parametrize("key", list(CASES))
@pytest.mark.parametrize("fmt", ["hdf5", "mcap", "parquet", "csv"])
def test_same_fingerprint_in_every_format(
    site: Site, tmp_path: Path, references: dict, key: str, fmt: str
) -> None:
    expected, episodes = references[key]
    path = tmp_path / f"{key}.{ {'hdf5': 'h5'}.get(fmt, fmt) }"
    if fmt == "hdf5":
        writers.write_hdf5(path, episodes, fps=30.0)
    elif fmt == "mcap":
        writers.write_mcap(path, episodes, action_as_joint_state=(key == "unitree"))
    elif fmt == "parquet":
        writers.write_parquet(path, episodes, list_columns=(key != "bimanual"))
    else:
        writers.write_csv(path, episodes)
    r = enroll(site, path)
    assert r.fingerprint == expected
    assert r.episodes == len(episodes)
    assert r.frames == sum(len(e.timestamps) for e in episodes)
    assert r.fps == 30.0
    assert r.format == {"csv": "parquet"}.get(fmt, fmt)


def test_hdf5_demos_in_numeric_order(tmp_path: Path, references: dict) -> None:
    _, episodes = references["bimanual"]
    path = tmp_path / "b.h5"
    writers.write_hdf5(path, episodes, fps=30.0)
    with h5py.File(path) as h:
        names = demo_names(h["data"])
    assert names[:3] == ["demo_0", "demo_1", "demo_2"] and names[-2:] == ["demo_10", "demo_11"]


def test_hdf5_state_keys_and_fps_option(site: Site, tmp_path: Path, references: dict) -> None:
    expected, episodes = references["so101"]
    path = tmp_path / "a.h5"
    writers.write_hdf5(path, episodes, fps=None)
    with pytest.raises(Exception, match="--fps"):
        enroll(site, path)
    # reversed key order is different content; the documented sorted order is the original
    r_rev = enroll(site, path, fps=30.0, state_keys="joint_rest,joint_pos")
    assert r_rev.fingerprint != expected
    r = enroll(site, path, fps=30.0, state_keys="joint_pos,joint_rest")
    assert r.fingerprint == expected
    assert store.get_dataset(site, r.dataset_id).state_names[:2] == ["joint_pos[0]", "joint_pos[1]"]


def test_mcap_one_file_per_episode_and_gap_option(
    site: Site, tmp_path: Path, references: dict
) -> None:
    expected, episodes = references["so101"]
    folder = tmp_path / "rec"
    folder.mkdir()
    for i, e in enumerate(episodes):
        writers.write_mcap(
            folder / f"part{i}.mcap", [e], state_topic="/arm/joints", action_topic="/arm/cmd"
        )
    assert detect(folder) == "mcap"
    r = enroll(site, folder, state_topic="/arm/joints")
    assert (r.fingerprint, r.episodes) == (expected, len(episodes))
    # one file, episodes 0.5 s apart: a pause longer than --episode-gap splits them, a
    # shorter one does not (the median interval of the merged episode is still 30 fps)
    one = tmp_path / "one.mcap"
    writers.write_mcap(one, episodes[:2], gap_s=0.5)
    r1 = enroll(site, one, episode_gap=0.25)
    assert r1.episodes == 2
    r2 = enroll(site, one, episode_gap=2.0)
    assert r2.episodes == 1 and r2.frames == r1.frames


def test_mcap_aligns_latest_action_and_drops_frames_before_first(
    site: Site, tmp_path: Path
) -> None:
    from mcap_ros2.writer import Writer

    path = tmp_path / "x.mcap"
    base = 1_000_000_000_000
    with path.open("wb") as f:
        w = Writer(f)
        js = w.register_msgdef("sensor_msgs/msg/JointState", writers.JOINT_STATE_MSGDEF)
        fa = w.register_msgdef("std_msgs/msg/Float64MultiArray", writers.FLOAT64_ARRAY_MSGDEF)
        for k in range(10):  # states at 10 Hz
            ns = base + k * 100_000_000
            head = {"stamp": {"sec": ns // 10**9, "nanosec": ns % 10**9}, "frame_id": ""}
            w.write_message(
                "/joint_states",
                js,
                {
                    "header": head,
                    "name": ["a", "b"],
                    "position": [float(k), 0.0],
                    "velocity": [],
                    "effort": [],
                },
                log_time=ns,
            )
            if k >= 2:  # actions start at the third frame, 30 ms after it
                w.write_message(
                    "/cmd",
                    fa,
                    {"layout": {"dim": [], "data_offset": 0}, "data": [float(k)]},
                    log_time=ns + 30_000_000,
                )
        w.finish()
    r = enroll(site, path)
    # frames 0..2 have no action at or before them (the first comes 30 ms after frame 2)
    assert r.frames == 7 and r.fps == 10.0
    assert any("3 frames before the first action dropped" in n for n in r.notes)
    rec = store.get_dataset(site, r.dataset_id)
    assert rec.state_names == ["a", "b"]
    import pyarrow.parquet as pq

    t = pq.read_table(store.frames_dir(site, r.dataset_id))
    state = np.stack(t["observation.state"].to_numpy(zero_copy_only=False))[:, 0]
    action = np.stack(t["action"].to_numpy(zero_copy_only=False))[:, 0]
    np.testing.assert_array_equal(state, np.arange(3, 10))
    np.testing.assert_array_equal(action, np.arange(2, 9))  # the latest one before each


def test_tabular_named_columns(site: Site, tmp_path: Path, references: dict) -> None:
    import pyarrow.parquet as pq

    expected, episodes = references["so101"]
    t = writers.flat_table(episodes, list_columns=False)
    names = {"episode_index": "ep", "frame_index": "step", "timestamp": "t"}
    t = t.rename_columns([names.get(c, c).replace("state_", "q.") for c in t.column_names])
    path = tmp_path / "t.parquet"
    pq.write_table(t, path)
    r = enroll(
        site,
        path,
        episode_column="ep",
        frame_column="step",
        timestamp_column="t",
        state_column="q",
    )
    assert r.fingerprint == expected
