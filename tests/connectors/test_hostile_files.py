"""Issue 14: crafted files and metadata give a typed error, never a traceback, a hang,
a huge allocation or a half dataset; the site stays as it was.

One test per finding. Every seed is built here: tiny LeRobot v2.1 folders cut from
the sample shipped in the package, LeRobot v3.0 folders from
``connectors.synthetic``, robomimic HDF5, ROS 2 MCAP and flat Parquet files from
small synthetic episodes (nothing from ``../shared``).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dataspace
from dataspace.connectors import mcap as mcap_reader
from dataspace.connectors import reader as base_reader
from dataspace.connectors.enroll import enroll
from dataspace.connectors.reader import (
    CorruptFileError,
    DimensionError,
    DtypeError,
    EnrollError,
    FpsError,
    OutsideFolderError,
    SizeLimitError,
)
from dataspace.connectors.synthetic import write_lerobot_v3
from dataspace.errors import DataspaceError
from dataspace.site import Site, create_site
from tests.connectors.conftest import fresh_copy, site_holding_one, snapshot
from tests.connectors.writers import RawEpisode, write_mcap

SAMPLE = Path(dataspace.__file__).resolve().parent / "data" / "unitree-g1-sample"
ENV = {**os.environ, "COLUMNS": "1000"}


# --- seeds ------------------------------------------------------------------------------


def tiny_v21(dst: Path, episodes: int = 2, frames: int = 20) -> Path:
    """The first ``episodes`` episodes of the bundled LeRobot v2.1 sample, each cut to
    ``frames`` frames, as a consistent v2.1 folder."""
    (dst / "meta").mkdir(parents=True)
    (dst / "data" / "chunk-000").mkdir(parents=True)
    lines = (SAMPLE / "meta/episodes.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines][:episodes]
    for r in rows:
        name = f"episode_{r['episode_index']:06d}.parquet"
        t = pq.read_table(SAMPLE / "data/chunk-000" / name).slice(0, frames)
        pq.write_table(t, dst / "data/chunk-000" / name)
        r["length"] = t.num_rows
    (dst / "meta/episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(SAMPLE / "meta/tasks.jsonl", dst / "meta/tasks.jsonl")
    info = json.loads((SAMPLE / "meta/info.json").read_text())
    info["total_episodes"] = len(rows)
    info["total_frames"] = sum(r["length"] for r in rows)
    (dst / "meta/info.json").write_text(json.dumps(info, indent=2))
    return dst


def tiny_v3(dst: Path, episodes: int = 2, frames: int = 20, seed: int = 0) -> Path:
    write_lerobot_v3(dst, episodes, frames, state_dim=4, action_dim=3, seed=seed)
    return dst


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def edit_jsonl(path: Path, change: Callable[[list[dict]], object]) -> None:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def synthetic_episodes(n: int = 2, frames: int = 20, s_dim: int = 4, a_dim: int = 3):
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        ts = (np.arange(frames) / 30.0).astype(np.float32)
        state = np.cumsum(rng.normal(0, 0.01, (frames, s_dim)), axis=0).astype(np.float32)
        action = rng.normal(0, 0.1, (frames, a_dim)).astype(np.float32)
        out.append(RawEpisode(i, ts, state, action))
    return out


def robomimic(path: Path, change: Callable[[h5py.File], object] | None = None) -> Path:
    """A two-demo robomimic file (20 frames, state 4, action 3); ``change`` edits it."""
    with h5py.File(path, "w") as h:
        data = h.create_group("data")
        data.attrs["fps"] = 30.0
        data.attrs["total"] = 40
        for i, e in enumerate(synthetic_episodes()):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = len(e.timestamps)
            g.create_group("obs")["joint_pos"] = e.state
            g["actions"] = e.action
        if change is not None:
            change(h)
    return path


def mcap_records(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, opcode, length) of each top-level record of a well-formed MCAP file."""
    out, pos = [], 8
    while pos < len(data) - 8:
        op, length = struct.unpack_from("<BQ", data, pos)
        out.append((pos, op, length))
        pos += 9 + length
    return out


# --- the site ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site that already holds one dataset (so a failure has something to disturb)."""
    root = tmp_path_factory.mktemp("tpl")
    return site_holding_one(root, tiny_v3(root / "held", seed=1))


@pytest.fixture
def site(template: Path, tmp_path: Path) -> Site:
    return fresh_copy(template, tmp_path / "site")


def refused(site: Site, path: Path, kind: type[EnrollError], *words: str, **options) -> str:
    """Enrolling ``path`` fails with ``kind`` whose message names ``words``; the site's
    files, datasets and episodes are exactly as before."""
    before = snapshot(site)
    with pytest.raises(kind) as info:
        enroll(site, path, **options)
    assert isinstance(info.value, DataspaceError)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert snapshot(site) == before
    return msg


# --- LeRobot metadata -------------------------------------------------------------------


@pytest.mark.parametrize(
    "template_",
    [
        "data/{nope}.parquet",
        "data/{0}.parquet",
        "data/{}.parquet",
        "data/{episode_index.real}.parquet",
        "data/{episode_index[0]}.parquet",
        "data/{episode_index!r}.parquet",
        "data/{episode_index:{episode_chunk}}.parquet",
        "data/{episode_index",
        "data/{episode_index:0200000000d}.parquet",
        "data/{episode_index:>9999999}.parquet",
    ],
)
def test_lerobot_data_path_template_is_checked(site: Site, tmp_path: Path, template_: str) -> None:
    src = tiny_v21(tmp_path / "ds")
    edit_json(src / "meta/info.json", lambda o: o.update(data_path=template_))
    tracemalloc.start()
    try:
        refused(site, src, CorruptFileError, "info.json", "data_path")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # no 200 MB path string was built


def test_lerobot_video_path_template_is_checked(site: Site, tmp_path: Path) -> None:
    src = tiny_v21(tmp_path / "ds")  # the sample has a video feature
    edit_json(src / "meta/info.json", lambda o: o.update(video_path="v/{video_key:>999999999}"))
    refused(site, src, CorruptFileError, "info.json", "video_path")


@pytest.mark.parametrize("value", [0, -1, "1000", 1.5, None, [1000], True])
def test_lerobot_chunks_size_must_be_a_positive_integer(
    site: Site, tmp_path: Path, value: object
) -> None:
    src = tiny_v21(tmp_path / "ds")
    edit_json(src / "meta/info.json", lambda o: o.update(chunks_size=value))
    refused(site, src, CorruptFileError, "info.json", "chunks_size")


@pytest.mark.parametrize("value", [0, -30, "30", float("nan"), float("inf"), 1e300, [30], True])
def test_lerobot_fps_must_be_a_positive_number(site: Site, tmp_path: Path, value: object) -> None:
    src = tiny_v21(tmp_path / "ds")
    edit_json(src / "meta/info.json", lambda o: o.update(fps=value))
    refused(site, src, FpsError, "info.json", "fps")


@pytest.mark.parametrize("value", ["20", 1.5, None, -1, [20], {"n": 20}, 10**30])
def test_lerobot_episode_length_must_be_an_integer(
    site: Site, tmp_path: Path, value: object
) -> None:
    src = tiny_v21(tmp_path / "ds")
    edit_jsonl(src / "meta/episodes.jsonl", lambda rows: rows[1].update(length=value))
    refused(site, src, CorruptFileError, "episodes.jsonl", "episode 1", "length")


def test_lerobot_v3_episode_metadata_is_checked(site: Site, tmp_path: Path) -> None:
    src = tiny_v3(tmp_path / "ds")
    path = src / "meta/episodes/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    lengths = pa.array([str(x) for x in t["length"].to_pylist()])
    pq.write_table(t.set_column(t.schema.get_field_index("length"), "length", lengths), path)
    refused(site, src, CorruptFileError, "meta/episodes", "length must be an integer")


@pytest.mark.parametrize("shape", [[10**12], ["26"], [0], [-1], "26", [[26]], [2**70]])
def test_lerobot_declared_shape_is_bounded(site: Site, tmp_path: Path, shape: object) -> None:
    src = tiny_v21(tmp_path / "ds")
    edit_json(src / "meta/info.json", lambda o: o["features"]["action"].update(shape=shape))
    refused(site, src, CorruptFileError, "info.json", "'action'", "shape")


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o.update(total_frames=float("inf")),
        lambda o: o.update(total_episodes="2"),
        lambda o: o.update(features={"observation.state": 3, "action": {}}),
        lambda o: o.update(features=[]),
    ],
)
def test_lerobot_other_info_fields_are_checked(site: Site, tmp_path: Path, change) -> None:
    src = tiny_v21(tmp_path / "ds")
    edit_json(src / "meta/info.json", change)
    refused(site, src, CorruptFileError, "info.json")


def test_lerobot_deeply_nested_or_huge_metadata(site: Site, tmp_path: Path) -> None:
    src = tiny_v21(tmp_path / "ds")
    (src / "meta/tasks.jsonl").write_text("[" * 200_000 + "]" * 200_000 + "\n")
    refused(site, src, CorruptFileError, "tasks.jsonl", "line 1")
    src = tiny_v21(tmp_path / "ds2")
    with (src / "meta/info.json").open("ab") as f:
        f.truncate(base_reader.MAX_META_BYTES + 10)  # a sparse, oversized info.json
    refused(site, src, SizeLimitError, "info.json")


def test_cli_enroll_prints_one_line_not_a_traceback(site: Site, tmp_path: Path) -> None:
    src = tiny_v21(tmp_path / "ds")
    edit_json(src / "meta/info.json", lambda o: o.update(data_path="data/{0}.parquet"))
    before = snapshot(site)
    r = subprocess.run(
        [sys.executable, "-m", "dataspace", "connector", "enroll", str(site.root), str(src)],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "data_path" in lines[0], r.stderr
    assert snapshot(site) == before


def test_demo_splits_a_lerobot_v3_recording(tmp_path: Path) -> None:
    """`dataspace demo --data <v3.0 folder>` gave KeyError 'chunk_index' (demo/sources.py
    assumed v2.1 paths); a v3.0 recording is now exported as v2.1 ranges."""
    from dataspace.demo.sources import export_range, find_source

    src = tiny_v3(tmp_path / "v3", episodes=5, frames=12)
    source = find_source(src)
    assert source.episodes == 5
    out = export_range(source.path, tmp_path / "range", range(2, 4))
    site = create_site(tmp_path / "site", org="x")
    res = enroll(site, out)
    assert (res.episodes, res.frames, res.state_dim, res.action_dim) == (2, 24, 4, 3)
    original = pq.read_table(src / "data/chunk-000/file-000.parquet")
    exported = pq.read_table(out / "data/chunk-000/episode_000000.parquet")
    want = original.filter(pa.compute.equal(original["episode_index"], 2))
    assert exported["observation.state"].to_pylist() == want["observation.state"].to_pylist()
    # a malformed recording is a typed error too
    bad = tiny_v3(tmp_path / "bad")
    edit_json(bad / "meta/info.json", lambda o: o.pop("total_episodes"))
    with pytest.raises(CorruptFileError, match="total_episodes"):
        find_source(bad)


# --- robomimic HDF5 ---------------------------------------------------------------------


def _huge_chunked(h: h5py.File) -> None:
    g = h["data/demo_1"]
    del g["actions"]
    # 10^9 x 100 float64 = 745 GiB declared, not one chunk written
    g.create_dataset("actions", shape=(10**9, 100), dtype="f8", chunks=(1000, 100))


def _huge_obs_partly_written(h: h5py.File) -> None:
    g = h["data/demo_1/obs"]
    del g["joint_pos"]
    d = g.create_dataset(
        "joint_pos", shape=(2 * 10**7, 4), dtype="f4", chunks=(1000, 4), compression="gzip"
    )
    d[:20] = 1.0  # one chunk stored: 16 KB of data for a 320 MB array


def test_hdf5_declared_size_is_bounded_by_the_file(site: Site, tmp_path: Path) -> None:
    for i, change in enumerate((_huge_chunked, _huge_obs_partly_written)):
        path = robomimic(tmp_path / f"huge{i}.h5", change)
        assert path.stat().st_size < 1 << 20
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.monotonic()
        refused(site, path, SizeLimitError, "demo_1", "declares", "stores")
        assert time.monotonic() - t0 < 10
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
        assert grown_kib < 256 << 10  # nothing near the declared size was allocated


def test_hdf5_text_task_index(site: Site, tmp_path: Path) -> None:
    path = robomimic(tmp_path / "x.h5", lambda h: h["data/demo_1"].attrs.update(task_index="3"))
    refused(site, path, CorruptFileError, "demo_1", "episode 1", "task_index")


def test_hdf5_array_num_samples(site: Site, tmp_path: Path) -> None:
    def change(h: h5py.File) -> None:
        h["data/demo_0"].attrs["num_samples"] = np.array([20, 20])

    path = robomimic(tmp_path / "x.h5", change)
    refused(site, path, CorruptFileError, "demo_0", "num_samples")


def test_hdf5_soft_link_loop(site: Site, tmp_path: Path) -> None:
    def change(h: h5py.File) -> None:
        g = h["data/demo_1"]
        del g["actions"]
        g["actions"] = h5py.SoftLink("/data/demo_1/again")
        g["again"] = h5py.SoftLink("actions")

    path = robomimic(tmp_path / "x.h5", change)
    refused(site, path, CorruptFileError, "demo_1", "soft-link loop")


def test_hdf5_soft_link_inside_the_file_is_followed(site: Site, tmp_path: Path) -> None:
    def change(h: h5py.File) -> None:
        g = h["data/demo_1"]
        h["shared_actions"] = g["actions"][()]
        del g["actions"]
        g["actions"] = h5py.SoftLink("/shared_actions")

    res = enroll(site, robomimic(tmp_path / "x.h5", change))
    assert (res.episodes, res.frames) == (2, 40)


@pytest.mark.parametrize("where", ["actions", "obs", "via-soft-link"])
def test_hdf5_external_link_is_refused(site: Site, tmp_path: Path, where: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with h5py.File(outside / "secret.h5", "w") as o:  # readable: following it would work
        o.create_group("obs")["joint_pos"] = np.ones((20, 4), np.float32)
        o["actions"] = np.ones((20, 3), np.float32)

    def change(h: h5py.File) -> None:
        g = h["data/demo_1"]
        link = h5py.ExternalLink(str(outside / "secret.h5"), "/")
        if where == "actions":
            del g["actions"]
            g["actions"] = h5py.ExternalLink(str(outside / "secret.h5"), "/actions")
        elif where == "obs":
            del g["obs"]
            g["obs"] = h5py.ExternalLink(str(outside / "secret.h5"), "/obs")
        else:
            h["elsewhere"] = link
            del g["actions"]
            g["actions"] = h5py.SoftLink("/elsewhere/actions")

    folder = tmp_path / "enrolled"
    folder.mkdir()
    path = robomimic(folder / "x.h5", change)
    refused(site, folder, OutsideFolderError, "demo_1", "external link", "secret.h5")
    refused(site, path, OutsideFolderError, "external link")


def test_hdf5_external_raw_storage_is_refused(site: Site, tmp_path: Path) -> None:
    outside = tmp_path / "raw.bin"
    outside.write_bytes(np.ones((20, 3), np.float32).tobytes())

    def change(h: h5py.File) -> None:
        g = h["data/demo_1"]
        del g["actions"]
        g.create_dataset("actions", shape=(20, 3), dtype="f4", external=[(str(outside), 0, 240)])

    path = robomimic(tmp_path / "x.h5", change)
    refused(site, path, OutsideFolderError, "demo_1/actions", "external storage")


def test_hdf5_virtual_dataset_is_refused(site: Site, tmp_path: Path) -> None:
    with h5py.File(tmp_path / "other.h5", "w") as o:
        o["a"] = np.ones((20, 3), np.float32)

    def change(h: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(20, 3), dtype="f4")
        layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "a", shape=(20, 3))
        g = h["data/demo_1"]
        del g["actions"]
        g.create_virtual_dataset("actions", layout)

    refused(site, robomimic(tmp_path / "x.h5", change), OutsideFolderError, "virtual dataset")


@pytest.mark.parametrize(
    ("value", "word"),
    [
        (np.ones((20, 3), np.complex128), "complex"),
        (np.array([[b"a", b"b", b"c"]] * 20), "string"),
        (np.zeros(20, dtype=[("x", "f4"), ("y", "f4")]), "compound"),
        (np.zeros((20,), dtype=h5py.vlen_dtype(np.float32)), "object"),
    ],
)
def test_hdf5_unrepresentable_dtypes_are_refused(
    site: Site, tmp_path: Path, value: np.ndarray, word: str
) -> None:
    def change(h: h5py.File) -> None:
        g = h["data/demo_1"]
        del g["actions"]
        if value.dtype.kind == "O":
            g.create_dataset("actions", shape=(20,), dtype=value.dtype)
        else:
            g["actions"] = value

    path = robomimic(tmp_path / "x.h5", change)
    refused(site, path, DtypeError, "demo_1/actions", word)


@pytest.mark.parametrize("fps", [0, -5.0, "thirty", np.array([30.0, 15.0]), float("nan")])
def test_hdf5_fps_attribute_is_checked(site: Site, tmp_path: Path, fps: object) -> None:
    path = robomimic(tmp_path / "x.h5", lambda h: h["data"].attrs.update(fps=fps))
    refused(site, path, FpsError, "fps")


# --- bounds on what each reader allocates -----------------------------------------------


def test_parquet_list_width_is_bounded(site: Site, tmp_path: Path) -> None:
    """A few KB of Parquet can declare a million values in one row's list."""
    width = 1 << 20
    table = pa.table(
        {
            "episode_index": pa.array([0, 0], pa.int64()),
            "timestamp": pa.array([0.0, 1 / 30]),
            "observation.state": pa.array([[0.0] * width, [0.0]], pa.list_(pa.float32())),
            "action": pa.array([[0.0], [0.0]], pa.list_(pa.float32())),
        }
    )
    path = tmp_path / "bomb.parquet"
    pq.write_table(table, path, compression="zstd")
    assert path.stat().st_size < 64 << 10
    refused(site, path, SizeLimitError, "bomb.parquet", "observation.state", "declares")


def test_lerobot_rows_beyond_the_declared_length_stop_early(site: Site, tmp_path: Path) -> None:
    src = tiny_v21(tmp_path / "ds")
    edit_jsonl(src / "meta/episodes.jsonl", lambda rows: rows[0].update(length=3))
    refused(site, src, DimensionError, "episode 0", "declares 3 frames")


def test_episode_values_are_bounded(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base_reader, "MAX_EPISODE_VALUES", 100)
    refused(site, tiny_v3(tmp_path / "v3"), SizeLimitError, "episode 0", "values")
    monkeypatch.setattr(mcap_reader, "MAX_EPISODE_VALUES", 100)
    path = tmp_path / "x.mcap"
    write_mcap(path, synthetic_episodes())
    refused(site, path, SizeLimitError, "episode 0", "values")


def test_text_columns_are_typed_errors(site: Site, tmp_path: Path) -> None:
    eps = pa.array(["a"] * 20)
    table = pa.table(
        {
            "episode_index": eps,
            "timestamp": pa.array(np.arange(20) / 30),
            "state": pa.array(np.zeros(20)),
            "action": pa.array(np.zeros(20)),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    refused(site, tmp_path / "t.parquet", DtypeError, "episode_index", "string")


def _mcap(tmp_path: Path, **kw) -> tuple[Path, bytearray]:
    path = tmp_path / "x.mcap"
    write_mcap(path, synthetic_episodes(), **kw)
    return path, bytearray(path.read_bytes())


def test_mcap_record_length_past_the_end(site: Site, tmp_path: Path) -> None:
    path, data = _mcap(tmp_path)
    pos = next(p for p, op, _ in mcap_records(bytes(data)) if op == 0x03)  # the first schema
    struct.pack_into("<Q", data, pos + 1, 2**62)
    path.write_bytes(data)
    refused(site, path, SizeLimitError, "x.mcap", "past the end")


@pytest.mark.parametrize("declared", [2**40, 16])
def test_mcap_chunk_sizes_are_bounded(site: Site, tmp_path: Path, declared: int) -> None:
    """A chunk declaring 1 TiB uncompressed; a chunk whose zstd frame declares more
    than the chunk does (zstandard allocates the frame's size)."""
    path, data = _mcap(tmp_path)
    chunks = [p for p, op, _ in mcap_records(bytes(data)) if op == 0x06]
    assert chunks
    struct.pack_into("<Q", data, chunks[0] + 9 + 16, declared)
    path.write_bytes(data)
    refused(site, path, SizeLimitError, "chunk at byte", str(declared))


def test_mcap_chunk_index_must_point_at_a_chunk(site: Site, tmp_path: Path) -> None:
    path, data = _mcap(tmp_path)
    index = next(p for p, op, _ in mcap_records(bytes(data)) if op == 0x08)
    struct.pack_into("<Q", data, index + 9 + 16, 9)  # chunk_start_offset
    path.write_bytes(data)
    refused(site, path, CorruptFileError, "chunk index points at byte 9")


def test_mcap_message_width_is_bounded(site: Site, tmp_path: Path) -> None:
    eps = synthetic_episodes(1, 3)
    eps[0].state = np.zeros((3, base_reader.MAX_DIM + 1), np.float32)
    path = tmp_path / "wide.mcap"
    write_mcap(path, eps)
    refused(site, path, SizeLimitError, "wide.mcap", "state message holds")


def test_mcap_messages_decode_with_the_standard_definitions(site: Site, tmp_path: Path) -> None:
    """The message definition a file carries is the attacker's: with this one (a type
    that contains itself) the library's own decoder recurses until RecursionError on
    every message. Messages are decoded with the standard ROS 2 definitions of their
    type instead, so the file's layout claims change nothing."""
    from mcap_ros2._dynamic import serialize_dynamic
    from mcap_ros2.writer import Writer as Ros2Writer

    from tests.connectors.writers import FLOAT64_ARRAY_MSGDEF, JOINT_STATE_MSGDEF

    evil = "pkg/Loop l\n" + "=" * 80 + "\nMSG: pkg/Loop\npkg/Loop l\n"
    path = tmp_path / "evil.mcap"
    with path.open("wb") as f:
        w = Ros2Writer(f)
        js = w.register_msgdef("sensor_msgs/msg/JointState", evil)
        fa = w.register_msgdef("std_msgs/msg/Float64MultiArray", FLOAT64_ARRAY_MSGDEF)
        name = "sensor_msgs/msg/JointState"
        w._encoders[js.id] = serialize_dynamic(name, JOINT_STATE_MSGDEF)[name]
        for k, e in enumerate(synthetic_episodes(1, 10)[0].state):
            ns = 1_700_000_000_000_000_000 + k * 33_333_000
            stamp = {"sec": ns // 10**9, "nanosec": ns % 10**9}
            msg = {
                "header": {"stamp": stamp, "frame_id": ""},
                "name": [],
                "position": e.tolist(),
                "velocity": [],
                "effort": [],
            }
            w.write_message("/joint_states", js, msg, log_time=ns, publish_time=ns)
            act = {"layout": {"dim": [], "data_offset": 0}, "data": [0.5, 0.25]}
            w.write_message("/action", fa, act, log_time=ns, publish_time=ns)
        w.finish()
    t0 = time.monotonic()
    res = enroll(site, path)
    assert time.monotonic() - t0 < 10
    assert (res.episodes, res.frames, res.state_dim, res.action_dim) == (1, 10, 4, 2)


# every test above leaves the site intact; this one checks the guard around readers
def test_unforeseen_reader_errors_become_typed(site: Site, tmp_path: Path, monkeypatch) -> None:
    from dataspace.connectors import lerobot

    def boom(self, batch, rel, s, a):
        raise ZeroDivisionError("something no check foresaw")
        yield

    monkeypatch.setattr(lerobot.LeRobotReader, "_split", boom)
    refused(
        site, tiny_v21(tmp_path / "ds"), CorruptFileError, "cannot be read", "ZeroDivisionError"
    )
