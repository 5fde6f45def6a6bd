"""Split one recorded dataset across several sites (for federations and demos).

The three shared datasets have different embodiments, so a federation needs
one dataset whose episodes are spread over sites, e.g. the Unitree G1's 100
episodes in three contiguous ranges (different sessions and operators: a
non-IID split). Each shard becomes a dataset of its own at its site, with its
own episode hashes and fingerprint, exactly as if the holder had recorded it.

Reading is the connectors' LeRobot reader and writing is their enrollment
pipeline (:func:`dataspace.connectors.enroll.enroll_episodes`): a shard gets
the same validation, atomic commit, catalog entry and ``dataset.enrolled``
log entry as any enrolled dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dataspace.connectors.enroll import enroll_episodes
from dataspace.connectors.lerobot import LeRobotReader
from dataspace.errors import DataspaceError
from dataspace.schema import DatasetInfo, Episode
from dataspace.site.folder import Site


class ShardError(DataspaceError):
    """A source folder that cannot be split into shards."""


def read_lerobot_episodes(path: Path | str) -> tuple[list[Episode], DatasetInfo]:
    """All episodes of a LeRobot v2.1 / v3.0 folder, in episode order, and its metadata.

    For demos and tests on small data (all episodes in memory); enrollment
    itself streams.
    """
    reader = LeRobotReader(Path(path))
    return list(reader.episodes()), reader.info


def range_split(n: int, parts: int) -> list[range]:
    """``parts`` contiguous episode ranges covering 0..n-1 (sizes differ by at most 1)."""
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [range(int(bounds[i]), int(bounds[i + 1])) for i in range(parts)]


def write_shard(
    site: Site, episodes: Sequence[Episode], name: str, info: DatasetInfo, source_path: str = ""
) -> str:
    """Enroll ``episodes`` (renumbered from 0) as one dataset at ``site``; returns its id."""
    if not episodes:
        raise ShardError(f"shard {name}: no episodes")
    shard_info = dataclasses.replace(
        info, name=name, declared_episodes=len(episodes), declared_frames=None, attachments=[]
    )
    return enroll_episodes(site, episodes, shard_info, name=name, source=source_path).dataset_id


def shard_to_sites(
    source: Path | str, sites: Sequence[Site], episodes_per_site: Sequence[range] | None = None
) -> list[str]:
    """Split a LeRobot folder over ``sites`` by episode ranges; one dataset id per site."""
    episodes, info = read_lerobot_episodes(source)
    ranges = episodes_per_site or range_split(len(episodes), len(sites))
    return [
        write_shard(
            site,
            [episodes[i] for i in r],
            name=f"{Path(source).name}[{r.start}:{r.stop}]",
            info=info,
            source_path=str(source),
        )
        for site, r in zip(sites, ranges, strict=True)
    ]
