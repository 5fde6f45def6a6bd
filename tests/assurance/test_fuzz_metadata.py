"""Hostile metadata and crafted files, fuzzed: a typed error or a clean enrollment,
never a traceback, a hang or a half dataset (issue 14).

Hypothesis mutates every metadata file a reader opens -- LeRobot ``meta/info.json``,
``episodes.jsonl`` / the v3.0 episodes Parquet, the task tables, the statistics
files (which no reader needs: any mutation there must still enroll) -- with types
swapped, values out of range, keys removed, huge numbers and deep nesting; and it
crafts robomimic HDF5 files (declared shapes, types, storage and links),
ROS 2 MCAP files (record, chunk and message fields) and flat Parquet tables
(column types, list widths, nulls).

Each case first reads the source with its reader (only a :class:`DataspaceError`
may escape: the readers' own checks, not the enrollment's last-resort guard), then
enrolls it; after a failure the site's files, datasets and episodes are exactly as
before. A case running longer than ``HANG_S`` fails (SIGALRM). Seeds are built
here (the package's LeRobot v2.1 sample, ``connectors.synthetic`` v3.0 data,
small synthetic episodes), nothing from ``../shared``.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import struct
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcap.writer import CompressionType
from mcap_ros2.writer import Writer as Ros2Writer

from dataspace.connectors.detect import open_reader
from dataspace.connectors.enroll import enroll
from dataspace.errors import DataspaceError
from dataspace.site import create_site
from tests.connectors.conftest import snapshot
from tests.connectors.test_hostile_files import (
    mcap_records,
    robomimic,
    synthetic_episodes,
    tiny_v3,
    tiny_v21,
)
from tests.connectors.writers import FLOAT64_ARRAY_MSGDEF, JOINT_STATE_MSGDEF, stamps_ns

HANG_S = 20
CASES = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


# --- harness ----------------------------------------------------------------------------


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"a case ran longer than {HANG_S}s")


class Sandbox:
    """A site that every case enrolls into, and what it held after the last case."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.site = create_site(root / "site", org="Fuzzed Holder")
        # a site that already holds a dataset, so a failure has something to disturb
        enroll(self.site, tiny_v3(root / "held", episodes=2, frames=8, seed=99))
        self.state = snapshot(self.site)

    def scratch(self) -> Path:
        d = self.root / "cases" / uuid.uuid4().hex
        d.mkdir(parents=True)
        return d

    def attempt(self, path: Path, fmt: str = "auto", **options: Any) -> None:
        """Read ``path`` with its reader, then enroll it (see module docstring)."""
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(HANG_S)
        try:
            try:
                for _ in open_reader(path, fmt, **options).episodes():
                    pass
            except DataspaceError:
                pass
            try:
                result = enroll(self.site, path, fmt, **options)
            except DataspaceError:
                assert snapshot(self.site) == self.state, "a failed enrollment changed the site"
            else:
                self.state = snapshot(self.site)
                ids = [row[0] for row in self.state[1]]
                assert result.dataset_id in ids and result.episodes > 0
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    return Sandbox(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def v21(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tiny_v21(tmp_path_factory.mktemp("seed") / "v21", episodes=2, frames=15)
    rows = [json.loads(x) for x in (root / "meta/episodes.jsonl").read_text().splitlines()]
    stats = {"observation.state": {"mean": [0.0] * 26, "std": [1.0] * 26, "count": [15]}}
    (root / "meta/episodes_stats.jsonl").write_text(
        "".join(
            json.dumps({"episode_index": r["episode_index"], "stats": stats}) + "\n" for r in rows
        )
    )
    (root / "meta/stats.json").write_text(json.dumps(stats))
    return root


@pytest.fixture(scope="module")
def v3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tiny_v3(tmp_path_factory.mktemp("seed") / "v3", episodes=3, frames=12)
    stats = {"action": {"mean": [0.0] * 3, "std": [1.0] * 3, "min": [-1.0] * 3}}
    (root / "meta/stats.json").write_text(json.dumps(stats))
    return root


# --- JSON mutations -----------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
extreme = st.sampled_from(
    [
        *(0, -1, 1, 10**30, -(10**30), 2**63, -(2**63) - 1, 2**64, 1e308, -1e308, 0.5),
        *(1e-300, float("inf"), float("-inf"), float("nan"), "", "0", "{}", "{episode_index}"),
    ]
)


class Raw:
    """Text spliced into the JSON verbatim (what json.dumps cannot write)."""

    def __init__(self, text: str) -> None:
        self.text = text


raw_text = st.sampled_from(
    [
        "[" * 100_000 + "]" * 100_000,  # deeper than any JSON parser recurses
        '{"a":' * 5000 + "1" + "}" * 5000,
        "9" * 5000,  # past Python's int digit limit
        "1e999999",
        '"' + "x" * 200_000 + '"',
    ]
)
replacement = st.one_of(json_values, extreme, raw_text.map(Raw))


def _paths(obj: Any, prefix: tuple = (), depth: int = 4) -> list[tuple]:
    out = [prefix]
    if depth == 0:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k), depth - 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            out += _paths(v, (*prefix, i), depth - 1)
    return out


def mutate_doc(data: st.DataObject, doc: Any) -> str:
    """``doc`` with 1-3 members removed or replaced, as JSON text."""
    doc = copy.deepcopy(doc)
    raws: dict[str, str] = {}
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        path = data.draw(st.sampled_from(_paths(doc)), label="path")
        new = data.draw(replacement, label="value")
        if isinstance(new, Raw):
            key = f"@@raw{len(raws)}@@"
            raws[key] = new.text
            new = key
        if not path:
            doc = new
            continue
        parent = doc
        try:
            for p in path[:-1]:
                parent = parent[p]
            if isinstance(parent, dict) and data.draw(st.booleans(), label="remove"):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = new
        except (KeyError, IndexError, TypeError):
            continue
    text = json.dumps(doc)
    for key, value in raws.items():
        text = text.replace(json.dumps(key), value)
    return text


def mutate_jsonl(data: st.DataObject, text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    action = data.draw(st.sampled_from(["mutate", "drop", "duplicate", "junk"]), label="action")
    if action == "mutate":
        lines[i] = mutate_doc(data, json.loads(lines[i])).replace("\n", " ")
    elif action == "drop":
        del lines[i]
    elif action == "duplicate":
        lines.insert(i, lines[i])
    else:
        lines[i] = data.draw(st.sampled_from(["[1, 2]", "7", "null", '"x"', "{", "\x00\xff"]))
    return "\n".join(lines) + "\n"


def copy_seed(box: Sandbox, seed: Path) -> Path:
    return Path(shutil.copytree(seed, box.scratch() / seed.name))


# --- LeRobot metadata -------------------------------------------------------------------

V21_FILES = ["meta/info.json", "meta/episodes.jsonl", "meta/tasks.jsonl"]
V21_STATS = ["meta/stats.json", "meta/episodes_stats.jsonl"]


@settings(CASES, max_examples=30)
@given(data=st.data())
def test_lerobot_v21_metadata(box: Sandbox, v21: Path, data: st.DataObject) -> None:
    root = copy_seed(box, v21)
    name = data.draw(st.sampled_from(V21_FILES + V21_STATS), label="file")
    path = root / name
    text = path.read_text()
    if name.endswith(".jsonl"):
        path.write_text(mutate_jsonl(data, text))
    else:
        path.write_text(mutate_doc(data, json.loads(text)))
    box.attempt(root)


@settings(CASES, max_examples=20)
@given(data=st.data())
def test_lerobot_v3_info_and_stats(box: Sandbox, v3: Path, data: st.DataObject) -> None:
    root = copy_seed(box, v3)
    path = root / data.draw(st.sampled_from(["meta/info.json", "meta/stats.json"]), label="file")
    path.write_text(mutate_doc(data, json.loads(path.read_text())))
    box.attempt(root)


def _column_variant(data: st.DataObject, col: pa.ChunkedArray) -> pa.Array:
    n = len(col)
    kind = data.draw(
        st.sampled_from(["string", "float", "null", "list", "extreme", "negative", "bool"]),
        label="column change",
    )
    values = col.to_pylist()
    if kind == "string":
        return pa.array([str(v) for v in values])
    if kind == "float":
        return pa.array(([float("nan")] + [1.5] * n)[:n], pa.float64())
    if kind == "null":
        return pa.array([None] * n, col.type)
    if kind == "list":
        return pa.array([[v] for v in values])
    if kind == "bool":
        return pa.array([True] * n)
    big = data.draw(st.sampled_from([2**62, 2**53, 10**12, 0]), label="big")
    sign = -1 if kind == "negative" else 1
    rest = values[1:] if pa.types.is_integer(col.type) and not col.null_count else [0] * (n - 1)
    return pa.array([sign * big, *rest][:n], pa.int64())


@settings(CASES, max_examples=25)
@given(data=st.data())
def test_lerobot_v3_metadata_tables(box: Sandbox, v3: Path, data: st.DataObject) -> None:
    root = copy_seed(box, v3)
    rel = data.draw(
        st.sampled_from(["meta/episodes/chunk-000/file-000.parquet", "meta/tasks.parquet"]),
        label="table",
    )
    path = root / rel
    table = pq.read_table(path)
    for _ in range(data.draw(st.integers(1, 2), label="changes")):
        name = data.draw(st.sampled_from(table.column_names), label="column")
        action = data.draw(st.sampled_from(["drop", "change", "rows"]), label="action")
        if action == "drop":
            table = table.drop_columns([name])
        elif action == "change":
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, _column_variant(data, table[name]))
        elif table.num_rows:
            order = data.draw(
                st.lists(st.integers(0, table.num_rows - 1), min_size=0, max_size=6),
                label="rows",
            )
            table = table.take(pa.array(order, pa.int64()))
        if not table.column_names:
            break
    pq.write_table(table, path)
    box.attempt(root)


# --- robomimic HDF5 ---------------------------------------------------------------------

DTYPES = ["f4", "f8", "i4", "u1", "?", "c16", "S3", "compound", "vlen"]
STORAGE = ["written", "unwritten", "partial-gzip", "external-storage", "external-link"]
STORAGE += ["soft-loop", "soft-ok", "dangling-soft"]
ATTR_VALUES = st.sampled_from(
    [
        *(None, 20, 0, -1, 2**62, "x", b"20", 20.0, 20.5, float("nan"), 1j),
        *(np.array([20, 20]), np.array([20]), np.array([], dtype="f8")),
    ]
)


def _hdf5_case(data: st.DataObject, outside: Path):
    target = data.draw(st.sampled_from(["actions", "obs/joint_pos", "timestamps", "rewards"]))
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rows = data.draw(st.sampled_from([0, 1, 20, 20, 21, 10**9]), label="rows")
    dims = data.draw(st.sampled_from([None, 1, 3, 3, 4, 10**5]), label="dims")
    storage = data.draw(st.sampled_from(STORAGE), label="storage")
    attrs = {
        (where, name): data.draw(ATTR_VALUES, label=f"{where}.{name}")
        for where, name in [
            ("data", "fps"),
            ("data", "total"),
            ("data/demo_1", "num_samples"),
            ("data/demo_1", "task_index"),
        ]
        if data.draw(st.integers(0, 3), label=f"set {name}") == 0
    }

    def change(h: h5py.File) -> None:
        g = h["data/demo_1"]
        if target in g:
            del g[target]
        shape = (rows,) if dims is None else (rows, dims)
        big = rows * (dims or 1) > 10**6
        special = {
            "compound": np.dtype([("a", "f4"), ("b", "f4")]),
            "vlen": h5py.vlen_dtype(np.float32),
        }
        dt: Any = special[dtype] if dtype in special else np.dtype(dtype)
        if storage in ("written", "soft-ok") and not big:
            arr = np.ones(shape, dtype=dt) if dt.kind != "O" else None
            d = g.create_dataset(target, shape=shape, dtype=dt)
            if arr is not None:
                d[...] = arr
            if storage == "soft-ok":
                h.move(d.name, "/moved")
                g[target] = h5py.SoftLink("/moved")
        elif storage == "partial-gzip" and rows > 0 and dt.kind != "O":
            chunks = (1, *shape[1:2]) if dims is None or dims < 1000 else (1, 1000)
            d = g.create_dataset(
                target, shape=shape, dtype=dt, chunks=chunks[: len(shape)], compression="gzip"
            )
            d[0] = np.ones(shape[1:], dtype=dt)
        elif storage == "external-storage" and dt.kind != "O" and not big:
            nbytes = int(np.prod(shape)) * dt.itemsize
            g.create_dataset(
                target, shape=shape, dtype=dt, external=[(str(outside / "raw.bin"), 0, nbytes)]
            )
        elif storage == "external-link":
            g[target] = h5py.ExternalLink(str(outside / "other.h5"), "/x")
        elif storage == "soft-loop":
            g[target] = h5py.SoftLink(f"/data/demo_1/{target}")
        elif storage == "dangling-soft":
            g[target] = h5py.SoftLink("/nowhere")
        else:  # unwritten (or what could not be written as asked)
            g.create_dataset(target, shape=shape, dtype=dt)
        for (where, name), value in attrs.items():
            if value is None:
                h[where].attrs.pop(name, None)
            else:
                h[where].attrs[name] = value

    return change


@settings(CASES, max_examples=30)
@given(data=st.data())
def test_crafted_hdf5(box: Sandbox, data: st.DataObject) -> None:
    folder = box.scratch()
    outside = box.scratch()
    (outside / "raw.bin").write_bytes(bytes(1 << 16))
    with h5py.File(outside / "other.h5", "w") as o:
        o["x"] = np.ones((20, 3), np.float32)
    robomimic(folder / "f.h5", _hdf5_case(data, outside))
    box.attempt(folder / "f.h5")


# --- ROS 2 MCAP -------------------------------------------------------------------------


def _write_mcap(path: Path, compression: CompressionType) -> None:
    with path.open("wb") as f:
        w = Ros2Writer(f, chunk_size=4096, compression=compression)
        js = w.register_msgdef("sensor_msgs/msg/JointState", JOINT_STATE_MSGDEF)
        fa = w.register_msgdef("std_msgs/msg/Float64MultiArray", FLOAT64_ARRAY_MSGDEF)
        t0 = 1_700_000_000_000_000_000
        for e in synthetic_episodes(2, 12):
            stamps = stamps_ns(e, t0)
            for k, ns in enumerate(stamps.tolist()):
                stamp = {"sec": ns // 10**9, "nanosec": ns % 10**9}
                msg = {
                    "header": {"stamp": stamp, "frame_id": ""},
                    "name": [f"j{i}" for i in range(e.state.shape[1])],
                    "position": e.state[k].tolist(),
                    "velocity": [],
                    "effort": [],
                }
                w.write_message("/joint_states", js, msg, log_time=ns, publish_time=ns)
                act = {"layout": {"dim": [], "data_offset": 0}, "data": e.action[k].tolist()}
                w.write_message("/action", fa, act, log_time=ns, publish_time=ns)
            t0 = int(stamps[-1]) + 5 * 10**9
        w.finish()


@pytest.fixture(scope="module")
def mcap_seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("mcap")
    out = {}
    for name, comp in (("zstd", CompressionType.ZSTD), ("plain", CompressionType.NONE)):
        _write_mcap(d / f"{name}.mcap", comp)
        assert len(list(open_reader(d / f"{name}.mcap").episodes())) == 2
        out[name] = (d / f"{name}.mcap").read_bytes()
    return out


U64 = st.sampled_from([0, 1, 8, 255, 2**31, 2**32 - 1, 2**32, 2**40, 2**63, 2**64 - 1])


@settings(CASES, max_examples=30)
@given(data=st.data())
def test_crafted_mcap(box: Sandbox, mcap_seeds: dict[str, bytes], data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(sorted(mcap_seeds)), label="seed")
    buf = bytearray(mcap_seeds[seed])
    records = mcap_records(bytes(buf))
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        pos, _op, length = data.draw(st.sampled_from(records), label="record")
        field = data.draw(st.sampled_from(["length", "u64", "u32", "u32", "u16"]), label="field")
        value = data.draw(U64, label="value")
        if field == "length":
            struct.pack_into("<Q", buf, pos + 1, value)
            continue
        size = {"u64": 8, "u32": 4, "u16": 2}[field]
        if length < size:
            continue
        at = pos + 9 + data.draw(st.integers(0, length - size), label="offset")
        struct.pack_into("<" + {8: "Q", 4: "I", 2: "H"}[size], buf, at, value % 2 ** (8 * size))
    path = box.scratch() / "f.mcap"
    path.write_bytes(bytes(buf))
    box.attempt(path)


# --- flat Parquet -----------------------------------------------------------------------


def _vector_column(data: st.DataObject, rows: int, label: str) -> dict[str, pa.Array]:
    kind = data.draw(
        st.sampled_from(["fixed", "ragged", "strings", "nested", "scalars", "gap", "nulls"]),
        label=f"{label} kind",
    )
    width = data.draw(st.sampled_from([1, 3, 70_000]), label=f"{label} width")
    fill = data.draw(st.sampled_from([0.5, float("nan"), float("inf"), 1e300]), label="fill")
    if kind == "fixed":
        return {label: pa.FixedSizeListArray.from_arrays(pa.array([fill] * rows * width), width)}
    if kind == "ragged":
        widths = data.draw(
            st.lists(st.sampled_from([0, 1, 3, 2**20]), min_size=rows, max_size=rows)
        )
        return {label: pa.array([[0.0] * w for w in widths], pa.list_(pa.float32()))}
    if kind == "strings":
        return {label: pa.array([["a"] * 3] * rows)}
    if kind == "nested":
        return {label: pa.array([[[1.0]]] * rows)}
    if kind == "nulls":
        return {label: pa.array([None] * rows, pa.list_(pa.float32()))}
    numbers = range(3) if kind == "scalars" else (0, 2)
    return {f"{label}_{i}": pa.array([fill] * rows) for i in numbers}


@settings(CASES, max_examples=25)
@given(data=st.data())
def test_crafted_parquet(box: Sandbox, data: st.DataObject) -> None:
    rows = data.draw(st.integers(0, 30), label="rows")
    episode = data.draw(
        st.sampled_from(["int", "string", "float-nan", "nulls", "shuffled"]), label="episode"
    )
    ep = [i // 10 for i in range(rows)]
    cols: dict[str, pa.Array] = {
        "episode_index": {
            "int": pa.array(ep, pa.int64()),
            "string": pa.array([str(x) for x in ep]),
            "float-nan": pa.array([float("nan")] * rows),
            "nulls": pa.array([None] * rows, pa.int64()),
            "shuffled": pa.array([x % 2 for x in range(rows)], pa.int64()),
        }[episode],
    }
    clock = data.draw(st.sampled_from(["float", "string", "int", "decreasing", "none"]))
    if clock != "none":
        cols["timestamp"] = {
            "float": pa.array([i / 30 for i in range(rows)]),
            "string": pa.array([f"{i / 30}" for i in range(rows)]),
            "int": pa.array(list(range(rows)), pa.int64()),
            "decreasing": pa.array([-i / 30 for i in range(rows)]),
        }[clock]
    cols.update(_vector_column(data, rows, "state"))
    cols.update(_vector_column(data, rows, "action"))
    if data.draw(st.booleans(), label="task column"):
        cols["task_index"] = data.draw(
            st.sampled_from([pa.array([0] * rows, pa.int64()), pa.array(["t"] * rows)])
        )
    path = box.scratch() / "t.parquet"
    pq.write_table(pa.table(cols), path, compression="zstd")
    box.attempt(path, "parquet")
