"""A dataset's canonical frames, from the site store into torch tensors.

What the connector reads for training (DESIGN.md, "The flow of one dataset"):
the ``datasets`` / ``episodes`` tables of the site DuckDB for metadata, and the
canonical Parquet files under ``site.dataset_dir(fingerprint)`` for frames,
streamed batch by batch and filtered to the episodes asked for.

Held-out episodes are chosen by episode hash, so the split is a pure function
of the content: the same on every run, on every machine, and after a reload.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from dataspace.errors import DataspaceError, NotFoundError
from dataspace.schema import ACTION, STATE
from dataspace.site.folder import Site


class DataError(DataspaceError):
    """A dataset whose store or metadata cannot be used for training."""


@dataclass(frozen=True)
class DatasetRef:
    """Metadata of one enrolled dataset (a row of the ``datasets`` table)."""

    dataset_id: str
    name: str
    fingerprint: str
    state_dim: int
    action_dim: int
    episodes: int
    frames: int
    state_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Split:
    """Train and held-out episode indices, and their frame counts (metadata only)."""

    train: tuple[int, ...]
    heldout: tuple[int, ...]
    train_frames: int
    heldout_frames: int


@dataclass(frozen=True)
class Frames:
    """Frames of some episodes, sorted by episode and frame."""

    state: torch.Tensor  # float32 [N, S]
    action: torch.Tensor  # float32 [N, A]
    episode: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.state.shape[0])


#: hook: episodes to leave out of training (e.g. flagged by the quality area)
ExcludeHook = Callable[[Site, str], set[int]]


def dataset_ref(site: Site, dataset_id: str) -> DatasetRef:
    """The ``datasets`` row of ``dataset_id`` at ``site``."""
    with site.db(read_only=True) as con:
        row = con.execute(
            "SELECT dataset_id, name, fingerprint, state_dim, action_dim, episodes, frames, "
            "state_names, action_names FROM datasets WHERE dataset_id = ?",
            [dataset_id],
        ).fetchone()
    if row is None:
        raise NotFoundError(f"dataset {dataset_id} is not enrolled at site {site.root}")
    return DatasetRef(
        dataset_id=row[0],
        name=row[1] or row[0],
        fingerprint=row[2],
        state_dim=int(row[3]),
        action_dim=int(row[4]),
        episodes=int(row[5]),
        frames=int(row[6]),
        state_names=tuple(_json_list(row[7])),
        action_names=tuple(_json_list(row[8])),
    )


def _json_list(v: object) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        v = json.loads(v)
    return [str(x) for x in v]  # type: ignore[union-attr]


def heldout_score(episode_hash_hex: str) -> float:
    """A uniform number in [0, 1) derived from the episode hash (stable split key)."""
    h = hashlib.sha256(b"dataspace/heldout/v1\n" + bytes.fromhex(episode_hash_hex)).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_episodes(
    site: Site,
    dataset_id: str,
    heldout_fraction: float = 0.2,
    exclude: ExcludeHook | None = None,
) -> Split:
    """Deterministic train / held-out split by episode hash, from the ``episodes`` table.

    At least one episode is held out and at least one trains (when there are
    two or more). ``exclude`` (e.g. :func:`dataspace.quality.flags.flagged_episodes`)
    removes episodes from training only; held-out evaluation keeps them out too.
    """
    with site.db(read_only=True) as con:
        rows = con.execute(
            "SELECT episode_index, hash, frames FROM episodes WHERE dataset_id = ? "
            "ORDER BY episode_index",
            [dataset_id],
        ).fetchall()
    if not rows:
        raise NotFoundError(f"dataset {dataset_id} has no episodes at site {site.root}")
    excluded = exclude(site, dataset_id) if exclude else set()
    rows = [r for r in rows if int(r[0]) not in excluded]
    if not rows:
        raise DataError(f"dataset {dataset_id}: every episode is excluded")
    scored = sorted(rows, key=lambda r: heldout_score(r[1]))
    held = [r for r in scored if heldout_score(r[1]) < heldout_fraction]
    if not held and len(rows) > 1:
        held = scored[:1]
    if len(held) == len(rows) and len(rows) > 1:
        held = held[:-1]
    held_ids = {int(r[0]) for r in held}
    train = tuple(int(r[0]) for r in rows if int(r[0]) not in held_ids)
    heldout = tuple(sorted(held_ids))
    return Split(
        train=train,
        heldout=heldout,
        train_frames=sum(int(r[2]) for r in rows if int(r[0]) in set(train)),
        heldout_frames=sum(int(r[2]) for r in rows if int(r[0]) in held_ids),
    )


def load_frames(site: Site, ref: DatasetRef, episodes: Iterable[int]) -> Frames:
    """Stream the canonical Parquet of ``ref`` into tensors, keeping only ``episodes``."""
    directory = site.dataset_dir(ref.fingerprint)
    files = sorted(directory.glob("*.parquet"))
    if not files:
        raise NotFoundError(f"{directory}: no canonical Parquet files for {ref.dataset_id}")
    wanted = sorted(set(int(e) for e in episodes))
    ds = pads.dataset([str(f) for f in files], format="parquet")
    scanner = ds.scanner(
        columns=["episode_index", "frame_index", STATE, ACTION],
        filter=pc.field("episode_index").isin(wanted),
        batch_size=8192,
    )
    states, actions, eps, frames = [], [], [], []
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        eps.append(batch.column("episode_index").to_numpy())
        frames.append(batch.column("frame_index").to_numpy())
        states.append(_fixed_list(batch.column(STATE), ref.state_dim, ref, STATE))
        actions.append(_fixed_list(batch.column(ACTION), ref.action_dim, ref, ACTION))
    if not eps:
        raise DataError(f"{directory}: none of episodes {wanted[:5]}... found")
    ep = np.concatenate(eps)
    fr = np.concatenate(frames)
    order = np.lexsort((fr, ep))  # files are sorted already; this makes it a guarantee
    return Frames(
        state=torch.from_numpy(np.concatenate(states)[order]),
        action=torch.from_numpy(np.concatenate(actions)[order]),
        episode=torch.from_numpy(ep[order].astype(np.int64)),
    )


def _fixed_list(col: object, dim: int, ref: DatasetRef, name: str) -> np.ndarray:
    values = col.flatten().to_numpy(zero_copy_only=False)  # type: ignore[attr-defined]
    if values.size != len(col) * dim:  # type: ignore[arg-type]
        raise DataError(f"dataset {ref.dataset_id}: column {name} is not {dim}-dimensional")
    return values.astype(np.float32, copy=False).reshape(-1, dim)
