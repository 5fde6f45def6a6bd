"""Split one recorded dataset across several sites (for federations and demos).

The three shared datasets have different embodiments, so a federation needs
one dataset whose episodes are spread over sites, e.g. the Unitree G1's 100
episodes in three contiguous ranges (different sessions and operators: a
non-IID split). Each shard becomes a dataset of its own at its site, with its
own episode hashes and fingerprint, exactly as if the holder had recorded it.

:func:`write_shard` writes a shard into a site's store: canonical Parquet
(``dataspace.schema.frame_schema``) and the ``datasets`` / ``episodes`` rows
the connectors area owns (their ``store.ensure_tables``), the same content an
enrollment of that episode range would produce.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataspace.connectors.site import Site
from dataspace.errors import DataspaceError
from dataspace.schema import (
    ACTION,
    STATE,
    Episode,
    dataset_id_for,
    episode_hash,
    fingerprint,
    frame_schema,
    timestamps_to_us,
)

_STATE_ALIASES = (STATE, "state", "observation.states")
_ACTION_ALIASES = (ACTION, "actions")


class ShardError(DataspaceError):
    """A source folder that cannot be split into shards."""


def read_lerobot_episodes(path: Path | str) -> tuple[list[Episode], dict]:
    """All episodes of a LeRobot v2.1 / v3.0 folder (tabular part), in episode order.

    A small reader for tests and demos; the connectors area owns the full one.
    Column names ``state`` / ``actions`` are mapped to the canonical ones.
    """
    root = Path(path)
    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise ShardError(f"{root}/data: no Parquet files")
    info = json.loads((root / "meta" / "info.json").read_text())
    by_ep: dict[int, list[pa.Table]] = {}
    for f in files:
        t = pq.read_table(f)
        s = next((c for c in _STATE_ALIASES if c in t.column_names), None)
        a = next((c for c in _ACTION_ALIASES if c in t.column_names), None)
        if s is None or a is None:
            raise ShardError(f"{f}: no state/action columns in {t.column_names}")
        t = t.select(["episode_index", "frame_index", "timestamp", "task_index", s, a])
        t = t.rename_columns(
            ["episode_index", "frame_index", "timestamp", "task_index", STATE, ACTION]
        )
        for e in np.unique(t.column("episode_index").to_numpy()):
            by_ep.setdefault(int(e), []).append(
                t.filter(pa.compute.equal(t.column("episode_index"), e))
            )
    episodes = []
    for e in sorted(by_ep):
        t = pa.concat_tables(by_ep[e]).sort_by("frame_index")
        st = np.stack(t.column(STATE).to_numpy(zero_copy_only=False)).astype(np.float32)
        ac = np.stack(t.column(ACTION).to_numpy(zero_copy_only=False)).astype(np.float32)
        episodes.append(
            Episode(
                timestamps_us=timestamps_to_us(t.column("timestamp").to_numpy()),
                state=st,
                action=ac,
                task_index=int(t.column("task_index")[0].as_py()),
                source=f"{root}#episode {e}",
            )
        )
    return episodes, info


def range_split(n: int, parts: int) -> list[range]:
    """``parts`` contiguous episode ranges covering 0..n-1 (sizes differ by at most 1)."""
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [range(int(bounds[i]), int(bounds[i + 1])) for i in range(parts)]


def ensure_store_tables(con: object) -> None:
    """The connectors area's ``datasets`` and ``episodes`` tables (their layout)."""
    from dataspace.connectors.store import ensure_tables

    ensure_tables(con)  # type: ignore[arg-type]


def write_shard(
    site: Site,
    episodes: Sequence[Episode],
    name: str,
    fps: float = 30.0,
    robot_type: str = "unknown",
    source_path: str = "",
) -> str:
    """Write ``episodes`` (renumbered from 0) as one dataset at ``site``; returns its id."""
    if not episodes:
        raise ShardError(f"shard {name}: no episodes")
    s_dim, a_dim = episodes[0].state.shape[1], episodes[0].action.shape[1]
    hashes = [episode_hash(e) for e in episodes]
    fp = fingerprint(hashes)
    ds_id = dataset_id_for(fp)
    directory = site.dataset_dir(fp.hex())
    directory.mkdir(parents=True, exist_ok=True)
    schema = frame_schema(s_dim, a_dim)
    index = 0
    with pq.ParquetWriter(directory / "part-000.parquet", schema) as writer:
        for i, ep in enumerate(episodes):
            n = ep.frames
            writer.write_table(
                pa.table(
                    {
                        "episode_index": pa.array(np.full(n, i, np.int64)),
                        "frame_index": pa.array(np.arange(n, dtype=np.int64)),
                        "timestamp": pa.array(ep.timestamps_us / 1e6),
                        STATE: pa.FixedSizeListArray.from_arrays(
                            pa.array(ep.state.reshape(-1)), s_dim
                        ),
                        ACTION: pa.FixedSizeListArray.from_arrays(
                            pa.array(ep.action.reshape(-1)), a_dim
                        ),
                        "task_index": pa.array(np.full(n, ep.task_index, np.int64)),
                        "next.reward": pa.nulls(n, pa.float32()),
                        "next.done": pa.array(np.arange(n) == n - 1),
                        "index": pa.array(np.arange(index, index + n, dtype=np.int64)),
                    },
                    schema=schema,
                )
            )
            index += n
    with site.db() as con:
        ensure_store_tables(con)
        con.execute("DELETE FROM episodes WHERE dataset_id = ?", [ds_id])
        con.execute("DELETE FROM datasets WHERE dataset_id = ?", [ds_id])
        con.execute(
            "INSERT INTO datasets VALUES (?, ?, ?, 'lerobot', ?, ?, ?, ?, ?, ?, ?, ?, '[]', "
            "NULL, ?, '{}', '[]', now())",
            [
                ds_id, name, fp.hex(), robot_type, fps, s_dim, a_dim, len(episodes), index,
                json.dumps([f"s{i}" for i in range(s_dim)]),
                json.dumps([f"a{i}" for i in range(a_dim)]),
                source_path,
            ],
        )  # fmt: skip
        con.executemany(
            "INSERT INTO episodes VALUES (?, ?, ?, ?, ?, ?)",
            [
                [ds_id, i, h.hex(), e.frames, e.task_index, float(e.timestamps_us[-1]) / 1e6]
                for i, (e, h) in enumerate(zip(episodes, hashes, strict=True))
            ],
        )
    return ds_id


def shard_to_sites(
    source: Path | str, sites: Sequence[Site], episodes_per_site: Sequence[range] | None = None
) -> list[str]:
    """Split a LeRobot folder over ``sites`` by episode ranges; one dataset id per site."""
    episodes, info = read_lerobot_episodes(source)
    ranges = episodes_per_site or range_split(len(episodes), len(sites))
    ids = []
    for site, r in zip(sites, ranges, strict=True):
        ids.append(
            write_shard(
                site,
                [episodes[i] for i in r],
                name=f"{Path(source).name}[{r.start}:{r.stop}]",
                fps=float(info.get("fps", 30)),
                robot_type=str(info.get("robot_type", "unknown")),
                source_path=str(source),
            )
        )
    return ids
