"""Bad input: a typed error naming the file, the episode and the problem; the site unchanged."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataspace.connectors.enroll import enroll
from dataspace.connectors.reader import (
    ColumnError,
    CorruptFileError,
    DimensionError,
    EnrollError,
    FpsError,
    MissingFileError,
    NonFiniteError,
    OutsideFolderError,
    TimestampError,
    UnknownFormatError,
)
from dataspace.errors import DataspaceError
from dataspace.site import Site, create_site
from tests.conftest import SO101
from tests.connectors import writers
from tests.connectors.conftest import copy_so101, small_v21, snapshot


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site that already holds one dataset (so a failure has something to disturb)."""
    site = create_site(tmp_path_factory.mktemp("tpl") / "site", org="Holder")
    enroll(site, SO101)
    return site.root


@pytest.fixture
def busy_site(template: Path, tmp_path: Path) -> Site:
    return Site.open(shutil.copytree(template, tmp_path / "site"))


def refused(site: Site, run: Callable[[], object], kind: type[EnrollError], *words: str) -> str:
    """Run an enrollment that must fail with ``kind``; the message names ``words``;
    the site's files and rows are exactly as before."""
    before = snapshot(site)
    with pytest.raises(kind) as info:
        run()
    msg = str(info.value)
    assert isinstance(info.value, DataspaceError)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert snapshot(site) == before
    return msg


def rewrite(path: Path, column: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Rewrite one column of a LeRobot Parquet file through numpy."""
    t = pq.read_table(path)
    col = t[column]
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        arr = np.stack(col.to_numpy(zero_copy_only=False)).astype(np.float32)
        new = change(arr)
        new_col = pa.FixedSizeListArray.from_arrays(pa.array(new.reshape(-1)), new.shape[1])
    else:
        new_col = pa.array(change(col.to_numpy()).astype(col.type.to_pandas_dtype()))
    pq.write_table(t.set_column(t.schema.get_field_index(column), column, new_col), path)


EP1 = "episode_000001.parquet"


def test_truncated_parquet(busy_site: Site, tmp_path: Path) -> None:
    root = small_v21(tmp_path / "g1")
    f = root / "data/chunk-000" / EP1
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    refused(busy_site, lambda: enroll(busy_site, root), CorruptFileError, str(f))


def test_corrupt_parquet_footer(busy_site: Site, tmp_path: Path) -> None:
    root = copy_so101(tmp_path / "so")
    f = root / "data/chunk-000/file-000.parquet"
    data = bytearray(f.read_bytes())
    data[-200:-8] = b"\xff" * 192
    f.write_bytes(bytes(data))
    refused(busy_site, lambda: enroll(busy_site, root), CorruptFileError, str(f))


@pytest.mark.parametrize("meta", ["info.json", "episodes.jsonl", "tasks.jsonl"])
def test_missing_meta_file(busy_site: Site, tmp_path: Path, meta: str) -> None:
    root = small_v21(tmp_path / "g1")
    (root / "meta" / meta).unlink()
    refused(busy_site, lambda: enroll(busy_site, root), MissingFileError, meta, "missing")


def test_missing_v3_episode_metadata(busy_site: Site, tmp_path: Path) -> None:
    root = copy_so101(tmp_path / "so")
    shutil.rmtree(root / "meta/episodes")
    refused(busy_site, lambda: enroll(busy_site, root), MissingFileError, "meta/episodes")


def test_missing_data_file(busy_site: Site, tmp_path: Path) -> None:
    root = small_v21(tmp_path / "g1")
    (root / "data/chunk-000" / EP1).unlink()
    refused(busy_site, lambda: enroll(busy_site, root), MissingFileError, EP1)


def test_wrong_state_dimension(busy_site: Site, tmp_path: Path) -> None:
    root = small_v21(tmp_path / "g1")
    rewrite(root / "data/chunk-000" / EP1, "observation.state", lambda a: a[:, :25])
    refused(
        busy_site, lambda: enroll(busy_site, root), DimensionError, EP1, "episode 1", "25", "26"
    )


def test_inconsistent_dimensions_between_demos(busy_site: Site, tmp_path: Path) -> None:
    eps = writers.read_lerobot(SO101, "observation.state", "action", [0, 1])
    eps[1].state = np.concatenate([eps[1].state, eps[1].state[:, :1]], axis=1)
    path = tmp_path / "x.h5"
    writers.write_hdf5(path, eps, fps=30.0)
    refused(busy_site, lambda: enroll(busy_site, path), DimensionError, "demo_1", "7/6", "6/6")


def test_truncated_episode_against_metadata(busy_site: Site, tmp_path: Path) -> None:
    root = copy_so101(tmp_path / "so")
    f = root / "data/chunk-000/file-000.parquet"
    t = pq.read_table(f)
    pq.write_table(t.slice(0, t.num_rows - 10), f)
    refused(busy_site, lambda: enroll(busy_site, root), DimensionError, str(f), "episode 3")


def test_declared_totals_must_match(busy_site: Site, tmp_path: Path) -> None:
    root = small_v21(tmp_path / "g1")
    info = json.loads((root / "meta/info.json").read_text())
    info["total_frames"] += 1
    (root / "meta/info.json").write_text(json.dumps(info))
    refused(busy_site, lambda: enroll(busy_site, root), DimensionError, "frames")


@pytest.mark.parametrize(
    ("column", "value", "what"),
    [("observation.state", math.nan, "observation.state"), ("action", math.inf, "action")],
)
def test_nan_or_inf_values(
    busy_site: Site, tmp_path: Path, column: str, value: float, what: str
) -> None:
    root = small_v21(tmp_path / "g1")

    def poison(a: np.ndarray) -> np.ndarray:
        a = a.copy()
        a[17, 3] = value
        return a

    rewrite(root / "data/chunk-000" / EP1, column, poison)
    msg = refused(busy_site, lambda: enroll(busy_site, root), NonFiniteError, EP1, "episode 1")
    assert f"{what}[3] of frame 17" in msg


def test_non_monotonic_timestamps(busy_site: Site, tmp_path: Path) -> None:
    root = small_v21(tmp_path / "g1")

    def swap(t: np.ndarray) -> np.ndarray:
        t = t.copy()
        t[[10, 11]] = t[[11, 10]]
        return t

    rewrite(root / "data/chunk-000" / EP1, "timestamp", swap)
    refused(
        busy_site, lambda: enroll(busy_site, root), TimestampError, EP1, "episode 1", "frame 11"
    )


def test_nan_timestamp(busy_site: Site, tmp_path: Path) -> None:
    root = small_v21(tmp_path / "g1")

    def hole(t: np.ndarray) -> np.ndarray:
        t = t.copy()
        t[5] = np.nan
        return t

    rewrite(root / "data/chunk-000" / EP1, "timestamp", hole)
    refused(busy_site, lambda: enroll(busy_site, root), TimestampError, EP1, "nan")


def test_mixed_fps_between_episodes(busy_site: Site, tmp_path: Path) -> None:
    root = small_v21(tmp_path / "g1")
    rewrite(root / "data/chunk-000" / EP1, "timestamp", lambda t: t * 2)
    refused(busy_site, lambda: enroll(busy_site, root), FpsError, EP1, "15 fps", "30 fps")


def test_mixed_fps_between_files(busy_site: Site, tmp_path: Path) -> None:
    eps = writers.read_lerobot(SO101, "observation.state", "action", [0, 1])
    folder = tmp_path / "demos"
    folder.mkdir()
    writers.write_hdf5(folder / "a.h5", eps[:1], fps=30.0)
    writers.write_hdf5(folder / "b.h5", eps[1:], fps=15.0)
    refused(busy_site, lambda: enroll(busy_site, folder), FpsError, "a.h5: 30", "b.h5: 15")


def test_unknown_format(busy_site: Site, tmp_path: Path) -> None:
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    refused(busy_site, lambda: enroll(busy_site, folder), UnknownFormatError, str(folder))
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00" * 64)
    refused(busy_site, lambda: enroll(busy_site, blob), UnknownFormatError, str(blob))
    refused(
        busy_site,
        lambda: enroll(busy_site, folder, format="rosbag1"),
        UnknownFormatError,
        "rosbag1",
    )


def test_symlink_outside_the_folder(busy_site: Site, tmp_path: Path) -> None:
    root = small_v21(tmp_path / "g1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    f = root / "data/chunk-000" / EP1
    shutil.move(f, elsewhere / EP1)
    f.symlink_to(elsewhere / EP1)
    refused(busy_site, lambda: enroll(busy_site, root), OutsideFolderError, EP1, "outside")
    # a symlink that stays inside the folder is fine
    inner = root / "data/chunk-000/real.parquet"
    f.unlink()
    shutil.move(elsewhere / EP1, inner)
    f.symlink_to(inner)
    assert enroll(busy_site, root).episodes == 3


def test_truncated_mcap(busy_site: Site, tmp_path: Path) -> None:
    eps = writers.read_lerobot(SO101, "observation.state", "action", [0])
    path = tmp_path / "x.mcap"
    writers.write_mcap(path, eps)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    refused(busy_site, lambda: enroll(busy_site, path), CorruptFileError, str(path))


def test_corrupt_hdf5(busy_site: Site, tmp_path: Path) -> None:
    eps = writers.read_lerobot(SO101, "observation.state", "action", [0])
    path = tmp_path / "x.h5"
    writers.write_hdf5(path, eps, fps=30.0)
    with h5py.File(path) as h:
        assert "data" in h
    path.write_bytes(path.read_bytes()[:2048])
    refused(busy_site, lambda: enroll(busy_site, path), CorruptFileError, str(path))


def test_option_that_does_not_apply(busy_site: Site) -> None:
    refused(
        busy_site,
        lambda: enroll(busy_site, SO101, state_topic="/x"),
        EnrollError,
        "--state-topic",
        "lerobot",
    )


def test_tabular_episode_rows_not_contiguous(busy_site: Site, tmp_path: Path) -> None:
    eps = writers.read_lerobot(SO101, "observation.state", "action", [0, 1])
    t = writers.flat_table(eps, list_columns=True)
    n0 = len(eps[0].timestamps)
    shuffled = pa.concat_tables([t.slice(0, 100), t.slice(n0), t.slice(100, n0 - 100)])
    path = tmp_path / "x.parquet"
    pq.write_table(shuffled, path, row_group_size=50)
    refused(busy_site, lambda: enroll(busy_site, path), EnrollError, str(path), "contiguous")


def test_csv_frames_out_of_order(busy_site: Site, tmp_path: Path) -> None:
    eps = writers.read_lerobot(SO101, "observation.state", "action", [0])
    t = writers.flat_table(eps, list_columns=False)
    import pyarrow.csv as pacsv

    path = tmp_path / "x.csv"
    pacsv.write_csv(pa.concat_tables([t.slice(1, 5), t.slice(0, 1), t.slice(6)]), path)
    refused(busy_site, lambda: enroll(busy_site, path), TimestampError, str(path), "frame_index")


def test_mcap_ambiguous_action_topic(busy_site: Site, tmp_path: Path) -> None:
    from mcap_ros2.writer import Writer

    path = tmp_path / "x.mcap"
    with path.open("wb") as f:
        w = Writer(f)
        js = w.register_msgdef("sensor_msgs/msg/JointState", writers.JOINT_STATE_MSGDEF)
        fa = w.register_msgdef("std_msgs/msg/Float64MultiArray", writers.FLOAT64_ARRAY_MSGDEF)
        head = {"stamp": {"sec": 1, "nanosec": 0}, "frame_id": ""}
        w.write_message(
            "/joint_states",
            js,
            {"header": head, "name": [], "position": [0.0], "velocity": [], "effort": []},
            log_time=10**9,
        )
        for topic in ("/cmd_a", "/cmd_b"):
            w.write_message(topic, fa, {"layout": {"dim": [], "data_offset": 0}, "data": [1.0]})
        w.finish()
    refused(
        busy_site,
        lambda: enroll(busy_site, path),
        ColumnError,
        str(path),
        "['/cmd_a', '/cmd_b']",
        "--action-topic",
    )


def test_hdf5_unknown_state_key(busy_site: Site, tmp_path: Path) -> None:
    eps = writers.read_lerobot(SO101, "observation.state", "action", [0])
    path = tmp_path / "x.h5"
    writers.write_hdf5(path, eps, fps=30.0)
    refused(
        busy_site,
        lambda: enroll(busy_site, path, state_keys="joint_pos,gripper"),
        ColumnError,
        "demo_0",
        "'gripper'",
    )
