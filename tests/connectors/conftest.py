"""Fixtures for the connector tests: fresh sites, small copies of the real data, snapshots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dataspace.connectors.enroll import enroll
from dataspace.site import Site, create_site, store
from tests.conftest import SO101, UNITREE


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return create_site(tmp_path / "site", org="Test Holder")


def snapshot(site: Site) -> tuple[list[str], list[tuple], list[tuple]]:
    """Everything a failed enrollment must leave unchanged: files, datasets rows,
    episodes rows (the DuckDB file's bytes may change on open; its rows may not)."""
    files = sorted(str(p.relative_to(site.root)) for p in site.root.rglob("*"))
    with site.db() as con:
        store.ensure_tables(con)
        ds = con.execute("SELECT * FROM datasets ORDER BY dataset_id").fetchall()
        eps = con.execute("SELECT * FROM episodes ORDER BY dataset_id, episode_index").fetchall()
    return files, ds, eps


def site_holding_one(root: Path, source: Path) -> Path:
    """A site under ``root`` that already holds the dataset at ``source`` (so a refused
    enrollment has something to disturb): its folder, a template for :func:`fresh_copy`."""
    site = create_site(root / "site", org="Holder")
    enroll(site, source)
    return site.root


def fresh_copy(template: Path, dst: Path) -> Site:
    """A copy of the template site at ``dst``, for one test to disturb."""
    return Site.open(shutil.copytree(template, dst))


def small_v21(dst: Path, n: int = 3) -> Path:
    """The first ``n`` episodes of the real Unitree G1 LeRobot v2.1 dataset, as a v2.1 folder."""
    (dst / "meta").mkdir(parents=True)
    (dst / "data" / "chunk-000").mkdir(parents=True)
    eps = [json.loads(x) for x in (UNITREE / "meta/episodes.jsonl").read_text().splitlines()][:n]
    (dst / "meta/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    shutil.copy(UNITREE / "meta/tasks.jsonl", dst / "meta/tasks.jsonl")
    info = json.loads((UNITREE / "meta/info.json").read_text())
    info["total_episodes"] = n
    info["total_frames"] = sum(e["length"] for e in eps)
    (dst / "meta/info.json").write_text(json.dumps(info))
    for e in eps:
        name = f"episode_{e['episode_index']:06d}.parquet"
        shutil.copy(UNITREE / "data/chunk-000" / name, dst / "data/chunk-000" / name)
    return dst


def copy_so101(dst: Path) -> Path:
    shutil.copytree(SO101, dst)
    return dst
