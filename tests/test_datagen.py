"""The generated SO-101 and bimanual stand-ins (tests/datagen.py) are what the tests assume.

Always: deterministic, internally consistent (meta/info.json and the episode
table agree with the data), in the originals' units and smooth. Where
../shared has the real recordings: the same layout, Arrow types and metadata
kinds, and the connector's reader sees the same dataset shape in both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dataspace.connectors.detect import open_reader
from tests import datagen
from tests.conftest import BIMANUAL, REAL_BIMANUAL, REAL_SO101, SO101, needs_shared

#: (stand-in, real, state column, action column, dims, episodes, |value| bound)
CASES = {
    "so101": (SO101, REAL_SO101, "observation.state", "action", 6, 4, 100.0),
    "bimanual": (BIMANUAL, REAL_BIMANUAL, "state", "actions", 34, 50, 250.0),
}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _column(root: Path, name: str) -> np.ndarray:
    files = sorted(root.glob("data/chunk-*/*.parquet"))
    return np.concatenate(
        [
            np.stack(pq.read_table(f, columns=[name])[name].to_numpy(zero_copy_only=False))
            for f in files
        ]
    )


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = datagen.make_so101(tmp_path / "a", seed=7)
    b = datagen.make_so101(tmp_path / "b", seed=7)
    c = datagen.make_so101(tmp_path / "c", seed=8)
    assert _files(a) == _files(b) == _files(c)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in _files(a))
    data = "data/chunk-000/file-000.parquet"
    assert (a / data).read_bytes() != (c / data).read_bytes()


def test_session_standins_are_the_seeded_ones(tmp_path: Path) -> None:
    fresh = datagen.make_all(tmp_path / "fresh")
    for name, root in fresh.items():
        session = {"so101-record-test-lerobot-v3": SO101, "bimanual-open50-lerobot-v3": BIMANUAL}
        assert _files(root) == _files(session[name])
        assert all(
            (root / f).read_bytes() == (session[name] / f).read_bytes() for f in _files(root)
        )


@pytest.mark.parametrize("key", list(CASES))
def test_info_and_episode_table_match_the_data(key: str) -> None:
    root, _, s, a, dim, n_eps, _ = CASES[key]
    info = json.loads((root / "meta/info.json").read_text())
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert info["total_episodes"] == len(eps) == n_eps
    frames = sum(pq.read_metadata(f).num_rows for f in root.glob("data/chunk-*/*.parquet"))
    assert info["total_frames"] == sum(e["length"] for e in eps) == frames
    assert info["features"][s]["shape"] == info["features"][a]["shape"] == [dim]
    assert info["fps"] == 30
    for e in eps:
        f = root / info["data_path"].format(
            chunk_index=e["data/chunk_index"], file_index=e["data/file_index"]
        )
        t = pq.read_table(f).to_pandas()
        rows = t[t.episode_index == e["episode_index"]]
        assert len(rows) == e["length"] == e[f"stats/{s}/count"][0]
        assert rows["index"].tolist() == list(range(e["dataset_from_index"], e["dataset_to_index"]))
        assert rows["frame_index"].tolist() == list(range(e["length"]))
        assert rows["timestamp"].dtype == np.float32
        np.testing.assert_allclose(rows["timestamp"], np.arange(e["length"]) / 30, atol=1e-5)
        state = np.stack(rows[s].to_numpy())
        np.testing.assert_allclose(state.min(0), e[f"stats/{s}/min"], rtol=1e-6)
        np.testing.assert_allclose(state.mean(0), e[f"stats/{s}/mean"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", list(CASES))
def test_values_are_in_the_originals_units_and_smooth(key: str) -> None:
    root, _, s, a, dim, _, bound = CASES[key]
    for col in (s, a):
        x = _column(root, col)
        assert x.shape[1] == dim and x.dtype == np.float32
        assert np.isfinite(x).all() and np.abs(x).max() <= bound
        moving = x.std(0) > 1.0
        assert moving.sum() >= 6  # the arm (and hand) joints move
        # frame-to-frame changes are a small fraction of each moving joint's spread
        step = np.abs(np.diff(x, axis=0))[:, moving].mean(0)
        assert (step < 0.1 * x.std(0)[moving]).all()


@needs_shared
@pytest.mark.parametrize("key", list(CASES))
def test_layout_and_types_are_the_originals(key: str) -> None:
    gen, real, *_ = CASES[key]
    assert _files(gen) == _files(real)
    gi = json.loads((gen / "meta/info.json").read_text())
    ri = json.loads((real / "meta/info.json").read_text())
    assert {k: v for k, v in gi.items() if k != "total_frames"} == {
        k: v for k, v in ri.items() if k != "total_frames"
    }
    gs = json.loads((gen / "meta/stats.json").read_text())
    rs = json.loads((real / "meta/stats.json").read_text())
    assert {k: sorted(v) for k, v in gs.items()} == {k: sorted(v) for k, v in rs.items()}
    for f in _files(real):
        if f.endswith(".parquet"):
            g, r = pq.read_schema(gen / f), pq.read_schema(real / f)
            assert g.remove_metadata() == r.remove_metadata(), f
            assert sorted(g.metadata or {}) == sorted(r.metadata or {}), f
            gm, rm = pq.read_metadata(gen / f), pq.read_metadata(real / f)
            if key == "so101" or not f.startswith("data/"):
                assert gm.num_row_groups == rm.num_row_groups, f


@needs_shared
@pytest.mark.parametrize("key", list(CASES))
def test_the_reader_sees_the_same_dataset(key: str) -> None:
    gen, real, *_ = CASES[key]
    g, r = open_reader(gen), open_reader(real)
    assert g.format == r.format == "lerobot"
    gi, ri = g.info, r.info
    for field in ("source_format", "fps", "robot_type", "state_names", "action_names", "tasks",
                  "license", "declared_episodes", "notes"):  # fmt: skip
        assert getattr(gi, field) == getattr(ri, field), field
    assert [(x["path"], x["present"]) for x in gi.attachments] == [
        (x["path"], x["present"]) for x in ri.attachments
    ]
    ge, re_ = list(g.episodes()), list(r.episodes())
    assert len(ge) == len(re_)
    assert {e.state.shape[1] for e in ge} == {e.state.shape[1] for e in re_}
    assert {e.action.shape[1] for e in ge} == {e.action.shape[1] for e in re_}
    assert {e.state.dtype for e in ge} == {e.state.dtype for e in re_}
    if key == "so101":  # the stand-in keeps the episode lengths (tests count 1,492 frames)
        assert [e.frames for e in ge] == [e.frames for e in re_]
