"""What every format reader shares: the reader interface, typed enrollment errors,
safe file access inside the given folder, and turning arrays into an Episode.

A reader is built from a path and options, knows its :class:`DatasetInfo` after
reading the metadata, and yields canonical :class:`~dataspace.schema.Episode`
objects one at a time (issue 2: reading is streamed, never whole-file).
Validation that is the same for every format (dimensions, finite values,
monotonic clocks, fps) lives in :mod:`dataspace.connectors.validate`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from dataspace.errors import DataspaceError
from dataspace.schema import DatasetInfo, Episode, timestamps_to_us


class EnrollError(DataspaceError):
    """Input that cannot be enrolled. The message names the file, episode and problem."""

    def __init__(self, problem: str, file: Path | str | None = None, episode: int | None = None):
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.episode = episode
        where = []
        if self.file:
            where.append(self.file)
        if episode is not None:
            where.append(f"episode {episode}")
        super().__init__(": ".join([*where, problem]))


class UnknownFormatError(EnrollError):
    """The folder or file is none of the formats we read."""


class CorruptFileError(EnrollError):
    """A file that cannot be parsed (truncated, corrupt, wrong kind)."""


class MissingFileError(EnrollError):
    """A metadata or data file the format requires is absent."""


class DimensionError(EnrollError):
    """Wrong or inconsistent state/action dimensions or frame counts."""


class ColumnError(EnrollError):
    """State or action columns that cannot be found, or more than one candidate."""


class NonFiniteError(EnrollError):
    """NaN or infinity in observation.state or action."""


class TimestampError(EnrollError):
    """NaN, infinite or non-increasing timestamps."""


class FpsError(EnrollError):
    """Mixed frame rates across files or episodes, or no frame rate at all."""


class OutsideFolderError(EnrollError):
    """A path (through a symlink) that resolves outside the folder being enrolled."""


class Reader(Protocol):
    """The interface of every format reader."""

    format: str
    info: DatasetInfo

    def episodes(self) -> Iterator[Episode]:
        """Yield episodes in order, one at a time."""
        ...


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved, refusing anything that resolves outside ``root``.

    A symlink may point elsewhere inside the folder; one that leaves it would
    let an enrollment read (and fingerprint) files the holder did not name.
    """
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise OutsideFolderError(
            f"resolves to {real}, outside the enrolled folder {real_root}", path
        )
    return real


def walk_files(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching a glob pattern, sorted, each checked with :func:`inside`."""
    out = []
    for p in sorted(root.glob(pattern)):
        inside(root, p)
        if p.is_file():
            out.append(p)
    return out


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def make_episode(
    timestamps: np.ndarray,
    unit: str,
    state: np.ndarray,
    action: np.ndarray,
    *,
    source: str,
    episode: int,
    task_index: int = 0,
    reward: np.ndarray | None = None,
    done: np.ndarray | None = None,
) -> Episode:
    """Build a canonical Episode from arrays, refusing NaN/inf clocks before converting.

    ``unit`` is ``"s"`` (float seconds) or ``"ns"`` (integer nanoseconds), as in
    :func:`dataspace.schema.timestamps_to_us`.
    """
    if unit == "s":
        ts = np.asarray(timestamps, dtype=np.float64)
        if not np.isfinite(ts).all():
            bad = int(np.flatnonzero(~np.isfinite(ts))[0])
            raise TimestampError(f"timestamp of frame {bad} is {ts[bad]}", source, episode)
    else:
        ts = np.asarray(timestamps)
    if state.ndim != 2 or action.ndim != 2:
        raise DimensionError(
            f"state {state.shape} and action {action.shape} must be [frames, dims]", source, episode
        )
    n = ts.shape[0]
    if state.shape[0] != n or action.shape[0] != n:
        raise DimensionError(
            f"{n} timestamps but {state.shape[0]} states and {action.shape[0]} actions",
            source,
            episode,
        )
    return Episode(
        timestamps_us=timestamps_to_us(ts, unit=unit),
        state=np.ascontiguousarray(state, dtype=np.float32),
        action=np.ascontiguousarray(action, dtype=np.float32),
        task_index=int(task_index),
        reward=None if reward is None else np.asarray(reward, dtype=np.float32),
        done=None if done is None else np.asarray(done, dtype=bool),
        source=source,
    )


def estimate_fps(timestamps_us: np.ndarray) -> float | None:
    """Frame rate from the median interval; snapped to a whole number within 0.05%.

    Clocks quantised to microseconds give 33333/33334 us at 30 fps; snapping
    keeps the catalog's fps readable without hiding a real 29.97.
    """
    if timestamps_us.shape[0] < 2:
        return None
    med = float(np.median(np.diff(timestamps_us)))
    if med <= 0:
        return None
    est = 1e6 / med
    near = round(est)
    if near > 0 and abs(est - near) / est < 0.0005:
        return float(near)
    return round(est, 3)
