"""Enrolling LeRobot datasets: counts, canonical store, catalog, idempotence.

UNITREE is a real recording (tests/data); SO101 and BIMANUAL are generated
stand-ins (tests/datagen.py); the real SO-101 and bimanual recordings join the
counts test where ../shared has them.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from dataspace.connectors.enroll import enroll
from dataspace.connectors.reader import ColumnError
from dataspace.schema import dataset_id_for, fingerprint, frame_schema
from dataspace.site import Site, create_site, store
from tests.conftest import (
    BIMANUAL,
    REAL_BIMANUAL,
    REAL_SO101,
    SO101,
    UNITREE,
    needs_shared,
)
from tests.connectors.conftest import snapshot


@pytest.mark.parametrize(
    "root",
    [
        pytest.param(SO101, id="so101-standin"),
        pytest.param(BIMANUAL, id="bimanual-standin"),
        pytest.param(UNITREE, id=UNITREE.name),
        pytest.param(REAL_SO101, id="so101-real", marks=needs_shared),
        pytest.param(REAL_BIMANUAL, id="bimanual-real", marks=needs_shared),
    ],
)
def test_dataset_counts_match_info_json(site: Site, root: Path) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    dim = info["features"].get("observation.state", info["features"].get("state"))["shape"][0]
    r = enroll(site, root)
    assert r.created
    assert (r.episodes, r.frames) == (info["total_episodes"], info["total_frames"])
    assert (r.state_dim, r.fps) == (dim, float(info["fps"]))
    assert r.dataset_id == dataset_id_for(bytes.fromhex(r.fingerprint))

    # the episodes table agrees, and the fingerprint is the Merkle root of its hashes
    rows = store.episode_rows(site, r.dataset_id)
    assert [e["episode_index"] for e in rows] == list(range(r.episodes))
    assert sum(e["frames"] for e in rows) == r.frames
    assert fingerprint([bytes.fromhex(e["hash"]) for e in rows]).hex() == r.fingerprint

    # canonical Parquet: exact schema, sorted, global index, per-episode counts
    d = store.frames_dir(site, r.dataset_id)
    files = sorted(d.glob("*.parquet"))
    assert files and all(
        pq.read_schema(f).remove_metadata() == frame_schema(r.state_dim, r.action_dim)
        for f in files
    )
    con = duckdb.connect()
    q = f"read_parquet('{d}/*.parquet')"
    n, first, last = con.execute(f'SELECT count(*), min("index"), max("index") FROM {q}').fetchone()
    assert (n, first, last) == (r.frames, 0, r.frames - 1)
    per_ep = con.execute(
        f"SELECT episode_index, count(*), min(frame_index), max(frame_index), min(timestamp) "
        f"FROM {q} GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert [(e, c) for e, c, *_ in per_ep] == [(e["episode_index"], e["frames"]) for e in rows]
    assert all(lo == 0 and hi == c - 1 and t0 == 0 for _, c, lo, hi, t0 in per_ep)


def test_canonical_rows_are_sorted_and_match_source(site: Site) -> None:
    r = enroll(site, SO101)
    src = pq.read_table(SO101 / "data/chunk-000/file-000.parquet")
    out = pq.read_table(store.frames_dir(site, r.dataset_id))
    assert out.num_rows == src.num_rows
    key = np.asarray(out["episode_index"]) * 10**6 + np.asarray(out["frame_index"])
    assert (np.diff(key) > 0).all()
    s_src = np.stack(src["observation.state"].to_numpy(zero_copy_only=False))
    s_out = np.stack(out["observation.state"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(s_src, s_out)
    np.testing.assert_allclose(
        np.asarray(out["timestamp"]), np.asarray(src["timestamp"], dtype=np.float64), atol=1e-6
    )


def test_nonstandard_column_names_are_mapped_and_noted(site: Site) -> None:
    r = enroll(site, BIMANUAL)
    rec = store.get_dataset(site, r.dataset_id)
    assert rec.state_dim == 34 and rec.state_names[0] == "left.joint_1.pos"
    assert rec.robot_type == "lingzu_highcam_pi05"
    # the override spells the same mapping out and gives the same content
    site2 = create_site(site.root.parent / "other", org="Other")
    r2 = enroll(site2, BIMANUAL, state_column="state", action_column="actions")
    assert r2.fingerprint == r.fingerprint
    # swapping them is different content
    r3 = enroll(site2, BIMANUAL, state_column="actions", action_column="state")
    assert r3.fingerprint != r.fingerprint


def test_absent_videos_are_noted_not_an_error(site: Site) -> None:
    r = enroll(site, UNITREE)
    rec = store.get_dataset(site, r.dataset_id)
    assert len(rec.attachments) == 100
    assert all(a["present"] is False and a["sha256"] is None for a in rec.attachments)
    assert rec.attachments[0]["path"].endswith("episode_000000.mp4")
    assert rec.license == "MIT"


def test_present_video_is_hashed(site: Site, tmp_path: Path) -> None:
    import hashlib
    import shutil

    root = shutil.copytree(SO101, tmp_path / "so101")
    video = root / "videos/observation.images.front/chunk-000/file-000.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"not really a video, but bytes to hash")
    r = enroll(site, root)
    att = {a["path"]: a for a in store.get_dataset(site, r.dataset_id).attachments}
    a = att["videos/observation.images.front/chunk-000/file-000.mp4"]
    assert a["present"] and a["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert not att["videos/observation.images.top/chunk-000/file-000.mp4"]["present"]


def test_idempotent_same_content_same_dataset(site: Site) -> None:
    a = enroll(site, SO101)
    before = snapshot(site)
    b = enroll(site, SO101, name="renamed")
    assert not b.created
    assert (b.dataset_id, b.fingerprint, b.name) == (a.dataset_id, a.fingerprint, a.name)
    assert snapshot(site) == before
    assert len(store.list_datasets(site)) == 1


def test_catalog_entry_is_dcat_with_robot_terms_and_no_rows(site: Site) -> None:
    r = enroll(site, UNITREE)
    cat = store.get_dataset(site, r.dataset_id).catalog
    assert cat["@type"] == "dcat:Dataset"
    assert cat["@context"]["robot"].startswith("https://")
    assert cat["dct:identifier"] == r.dataset_id and cat["dct:title"] == r.name
    assert cat["dct:license"] == "MIT"
    assert cat["dcat:distribution"] == []
    assert cat["robot:embodiment"] == "Unitree_G1_Inspire"
    assert (cat["robot:stateDimensions"], cat["robot:actionDimensions"]) == (26, 26)
    assert (cat["robot:episodes"], cat["robot:frames"]) == (100, 35965)
    assert cat["robot:hours"] == round(35965 / 30 / 3600, 2)
    assert cat["robot:fingerprint"] == r.fingerprint
    assert cat["robot:tasks"] == ["Pick up the yellow bottle on the table."]
    # no per-episode values: no episode hash or length appears anywhere in the entry
    text = json.dumps(cat)
    for e in store.episode_rows(site, r.dataset_id)[:10]:
        assert e["hash"] not in text
    assert "479" not in text  # episode 0's length


def test_get_dataset_by_id_name_fingerprint(site: Site) -> None:
    r = enroll(site, SO101, name="arm")
    for key in (r.dataset_id, "arm", r.fingerprint, r.fingerprint[:12]):
        assert store.get_dataset(site, key).dataset_id == r.dataset_id
    with pytest.raises(Exception, match="not enrolled"):
        store.get_dataset(site, "nope")


def test_ambiguous_columns_list_candidates(site: Site, tmp_path: Path) -> None:
    import shutil

    root = shutil.copytree(BIMANUAL, tmp_path / "bi")
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["state_velocity"] = dict(info["features"]["state"])
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ColumnError, match=r"candidates \['state', 'state_velocity'\]") as e:
        enroll(site, root)
    assert "info.json" in str(e.value) and "--state-column" in str(e.value)
    r = enroll(site, root, state_column="state")
    assert r.episodes == 50


def test_enroll_episodes_in_canonical_form(site: Site) -> None:
    from dataspace.connectors.enroll import enroll_episodes
    from dataspace.connectors.reader import NonFiniteError
    from dataspace.schema import DatasetInfo, Episode, episode_hash, timestamps_to_us

    rng = np.random.default_rng(1)

    def ep(n: int) -> Episode:
        return Episode(
            timestamps_us=timestamps_to_us(np.arange(n) / 10.0),
            state=rng.normal(size=(n, 4)).astype(np.float32),
            action=rng.normal(size=(n, 2)).astype(np.float32),
        )

    eps = [ep(20), ep(35)]
    info = DatasetInfo(name="shard", source_format="shard", fps=10.0, robot_type="arm")
    r = enroll_episodes(site, eps, info, source="unit test")
    assert r.fingerprint == fingerprint([episode_hash(e) for e in eps]).hex()
    assert (r.format, r.episodes, r.frames, r.fps) == ("shard", 2, 55, 10.0)
    bad = ep(5)
    bad.state[2, 1] = np.nan
    before = snapshot(site)
    with pytest.raises(NonFiniteError, match="episode 1"):
        enroll_episodes(site, [ep(5), bad], info)
    assert snapshot(site) == before


def test_an_enrollment_whose_entry_was_not_written_is_completed_by_its_retry(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dataset is committed before its ``dataset.enrolled`` entry: a failure (or a
    crash) between the two is completed, once, by enrolling the same content again."""
    from dataspace.audit.events import parse_event
    from dataspace.errors import DataspaceError
    from dataspace.site import log as sitelog

    def enrolled() -> list:
        with sitelog.open_site_log(site, writable=False) as log:
            evs = [parse_event(e) for e in log.entries(0, log.size)]
        return [e for e in evs if e.kind == "dataset.enrolled"]

    real = sitelog.record

    def broken(*a, **k):
        raise DataspaceError("the log's disk is full")

    monkeypatch.setattr(sitelog, "record", broken)
    with pytest.raises(DataspaceError, match="disk is full"):
        enroll(site, UNITREE)
    monkeypatch.setattr(sitelog, "record", real)
    assert enrolled() == []
    again = enroll(site, UNITREE)
    assert not again.created  # the same content: the dataset was committed the first time
    assert [e.dataset_id for e in enrolled()] == [again.dataset_id]
    enroll(site, UNITREE)
    assert len(enrolled()) == 1  # never twice
