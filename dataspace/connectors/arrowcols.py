"""Arrow column helpers shared by the Parquet-based readers (LeRobot, tabular).

Vector columns arrive as ``fixed_size_list<float>``, ``list<float>`` or, for a
one-dimensional feature, a plain float column; all become float32 numpy
``[rows, dim]`` without a per-row Python loop (zero-copy where Arrow allows).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataspace.connectors.reader import DimensionError, EnrollError


def to_matrix(
    col: pa.Array | pa.ChunkedArray,
    dim: int | None,
    name: str,
    file: str,
    episodes: np.ndarray,
) -> np.ndarray:
    """A vector column as float32 ``[rows, dim]``; ``dim=None`` takes the first row's width.

    ``episodes`` (the episode index of each row) is only used to name the
    episode at fault in an error.
    """
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DimensionError(f"{name} is null at row {row}", file, int(episodes[row]))
    t = col.type
    if not (pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)):
        if dim not in (None, 1):
            raise DimensionError(f"{name} is a scalar column, expected {dim} values", file)
        return col.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, 1)
    if pa.types.is_fixed_size_list(t):
        width = t.list_size
        if dim is not None and width != dim:
            ep = int(episodes[0]) if n else None
            raise DimensionError(f"{name} has {width} values per frame, expected {dim}", file, ep)
    else:
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        width = dim if dim is not None else (int(lengths[0]) if n else 0)
        bad = np.flatnonzero(lengths != width)
        if bad.size:
            row = int(bad[0])
            raise DimensionError(
                f"{name} has {lengths[row]} values at row {row}, expected {width}",
                file,
                int(episodes[row]),
            )
    values = col.flatten()
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // max(
            width, 1
        )
        raise DimensionError(f"{name} has a null value at row {row}", file, int(episodes[row]))
    flat = values.to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(n, width)


def runs(keys: np.ndarray) -> Iterator[tuple[int, int]]:
    """(start, stop) of each run of equal consecutive values in ``keys``."""
    if keys.size == 0:
        return
    cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    stops = np.concatenate((cuts, [keys.size]))
    yield from zip(starts.tolist(), stops.tolist(), strict=True)


@dataclass
class Rows:
    """Consecutive rows of one episode, as numpy columns (``None`` where absent)."""

    episode: int
    file: str
    timestamps: np.ndarray
    state: np.ndarray
    action: np.ndarray
    task_index: int = 0
    reward: np.ndarray | None = None
    done: np.ndarray | None = None


def assemble(pieces: Iterable[Rows]) -> Iterator[Rows]:
    """Join consecutive pieces of the same episode; yield each episode once complete.

    An episode's rows must be contiguous in the stream (files in order, rows in
    order): that is what lets a reader hold one episode, not the whole dataset.
    """
    pending: list[Rows] = []
    closed: set[int] = set()
    for piece in pieces:
        if pending and piece.episode != pending[0].episode:
            closed.add(pending[0].episode)
            yield _join(pending)
            pending = []
        if piece.episode in closed:
            raise EnrollError(
                "rows of this episode are not contiguous (it appeared earlier in the data)",
                piece.file,
                piece.episode,
            )
        pending.append(piece)
    if pending:
        yield _join(pending)


def _join(parts: list[Rows]) -> Rows:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]

    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        if any(a is None for a in arrays):
            return None
        return np.concatenate(arrays)

    return Rows(
        episode=first.episode,
        file=first.file,
        timestamps=cat("timestamps"),
        state=cat("state"),
        action=cat("action"),
        task_index=first.task_index,
        reward=cat("reward"),
        done=cat("done"),
    )
