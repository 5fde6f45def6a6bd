"""Flat tables: Parquet or CSV with one row per frame and episode/frame columns.

A path is one ``.parquet``/``.csv`` file or a folder of them (sorted by name),
streamed in record batches. Columns (options name them where they differ):

* ``episode_column`` (default ``episode_index``): required; an episode's rows
  must be contiguous.
* ``frame_column`` (default ``frame_index``): optional; when present it must
  increase within each episode.
* ``timestamp_column`` (default ``timestamp``, seconds); without it,
  ``frame / fps`` (needs the frame column and ``fps``).
* state and action: the column named by ``state_column`` / ``action_column``,
  else the first of ``observation.state``, ``state`` (resp. ``action``,
  ``actions``) that exists. **Rule**: a name ``X`` is either one list column
  ``X`` (one vector per row), or scalar columns ``X_0, X_1, ...`` (or ``X.0,
  X.1, ...``) numbered contiguously from 0 and ordered by their number (so
  ``X_10`` comes after ``X_9``). CSV has no list type, so CSV always uses the
  scalar form.
* ``task_index``, ``next.reward``/``reward``, ``next.done``/``done``: kept
  when present.
* fps: ``fps`` option, else estimated from the median timestamp interval.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dataspace.connectors.arrowcols import Rows, assemble, runs, to_matrix
from dataspace.connectors.reader import (
    ColumnError,
    CorruptFileError,
    EnrollError,
    MissingFileError,
    TimestampError,
    inside,
    make_episode,
    walk_files,
)
from dataspace.schema import DatasetInfo, Episode

FORMAT = "parquet"
OPTIONS = (
    "state_column",
    "action_column",
    "episode_column",
    "frame_column",
    "timestamp_column",
    "fps",
)
BATCH_ROWS = 65_536
_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class Vector:
    """Where a vector lives in the table: one list column, or numbered scalar columns."""

    name: str
    columns: tuple[str, ...]
    is_list: bool


def find_vector(schema: pa.Schema, names: list[str], what: str, where: Path) -> Vector:
    """Apply the module's column rule to the first of ``names`` that the table has."""
    fields = {f.name: f for f in schema}
    for name in names:
        f = fields.get(name)
        if f is not None and (
            pa.types.is_list(f.type)
            or pa.types.is_fixed_size_list(f.type)
            or pa.types.is_large_list(f.type)
        ):
            return Vector(name, (name,), True)
        pat = re.compile(rf"^{re.escape(name)}[_.](\d+)$")
        numbered = sorted((int(m.group(1)), c) for c in fields if (m := pat.match(c)))
        if numbered:
            got = [i for i, _ in numbered]
            if got != list(range(len(got))):
                raise ColumnError(
                    f"{what} columns {name}_N must be numbered 0..{len(got) - 1}, got {got}", where
                )
            return Vector(name, tuple(c for _, c in numbered), False)
        if f is not None and pa.types.is_floating(f.type):
            return Vector(name, (name,), False)
    raise ColumnError(
        f"no {what} column: looked for {names} as a list column or {names[0]}_0, "
        f"{names[0]}_1, ... (columns: {sorted(fields)}); name it with --{what}-column",
        where,
    )


class TabularReader:
    """Reads flat Parquet/CSV tables (see module docstring)."""

    format = FORMAT

    def __init__(
        self,
        path: Path,
        state_column: str | None = None,
        action_column: str | None = None,
        episode_column: str | None = None,
        frame_column: str | None = None,
        timestamp_column: str | None = None,
        fps: float | None = None,
    ) -> None:
        self.path = path
        if path.is_dir():
            self.files = [p for p in walk_files(path, "**/*") if p.suffix.lower() in _SUFFIXES]
            if not self.files:
                raise MissingFileError("no .parquet or .csv files", path)
        else:
            self.files = [path]
        self.episode_column = episode_column or "episode_index"
        self.frame_column = frame_column or "frame_index"
        self.timestamp_column = timestamp_column or "timestamp"
        self.fps = float(fps) if fps is not None else None
        schema = self._schema(self.files[0])
        self.state = find_vector(
            schema,
            [state_column] if state_column else ["observation.state", "state"],
            "state",
            self.files[0],
        )
        self.action = find_vector(
            schema,
            [action_column] if action_column else ["action", "actions"],
            "action",
            self.files[0],
        )
        if self.episode_column not in schema.names:
            raise ColumnError(
                f"no episode column {self.episode_column!r} (columns: {schema.names}); "
                "name it with --episode-column",
                self.files[0],
            )
        if self.timestamp_column not in schema.names and (
            self.fps is None or self.frame_column not in schema.names
        ):
            raise ColumnError(
                f"no timestamp column {self.timestamp_column!r}; give --timestamp-column, or a "
                f"frame column ({self.frame_column!r}) and --fps",
                self.files[0],
            )
        self.info = DatasetInfo(
            name=path.stem if path.is_file() else path.name,
            source_format="csv" if self.files[0].suffix.lower() == ".csv" else "parquet",
            fps=self.fps,
            state_names=list(self.state.columns) if not self.state.is_list else [],
            action_names=list(self.action.columns) if not self.action.is_list else [],
        )

    def _schema(self, f: Path) -> pa.Schema:
        inside(self.path if self.path.is_dir() else f.parent, f)
        try:
            if f.suffix.lower() == ".csv":
                with pacsv.open_csv(f) as r:
                    return r.schema
            return pq.ParquetFile(f).schema_arrow
        except FileNotFoundError as e:
            raise MissingFileError("missing", f) from e
        except (pa.ArrowException, OSError) as e:
            raise CorruptFileError(f"not a readable table ({e})", f) from e

    def episodes(self) -> Iterator[Episode]:
        for rows in assemble(self._pieces()):
            yield make_episode(
                rows.timestamps,
                "s",
                rows.state,
                rows.action,
                source=rows.file,
                episode=rows.episode,
                task_index=rows.task_index,
                reward=rows.reward,
                done=rows.done,
            )

    def _batches(self, f: Path) -> Iterator[pa.RecordBatch]:
        try:
            if f.suffix.lower() == ".csv":
                with pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 24)) as r:
                    yield from r
            else:
                yield from pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS)
        except (pa.ArrowException, OSError) as e:
            raise CorruptFileError(f"cannot read ({e})", f) from e

    def _pieces(self) -> Iterator[Rows]:
        last_frame: tuple[int, float] | None = None
        for f in self.files:
            self._schema(f)
            for batch in self._batches(f):
                cols = dict(zip(batch.schema.names, batch.columns, strict=True))
                missing = [
                    c
                    for c in (self.episode_column, *self.state.columns, *self.action.columns)
                    if c not in cols
                ]
                if missing:
                    raise ColumnError(f"missing columns {missing}", f)
                ep = cols[self.episode_column].to_numpy(zero_copy_only=False).astype(np.int64)
                state = self._matrix(cols, self.state, f, ep)
                action = self._matrix(cols, self.action, f, ep)
                frame = (
                    cols[self.frame_column].to_numpy(zero_copy_only=False)
                    if self.frame_column in cols
                    else None
                )
                if self.timestamp_column in cols:
                    ts = cols[self.timestamp_column].to_numpy(zero_copy_only=False)
                elif frame is not None and self.fps:
                    ts = frame / self.fps
                else:
                    raise ColumnError(f"no {self.timestamp_column!r} column", f)
                task = _col(cols, "task_index")
                reward = _col(cols, "next.reward", "reward")
                done = _col(cols, "next.done", "done")
                for a, b in runs(ep):
                    if frame is not None:
                        fr = frame[a:b]
                        prev = last_frame[1] if last_frame and last_frame[0] == ep[a] else None
                        bad = np.flatnonzero(np.diff(fr) <= 0)
                        if bad.size or (prev is not None and fr[0] <= prev):
                            raise TimestampError(
                                f"{self.frame_column} does not increase (rows must be in frame "
                                "order)",
                                f,
                                int(ep[a]),
                            )
                        last_frame = (int(ep[a]), float(fr[-1]))
                    yield Rows(
                        episode=int(ep[a]),
                        file=str(f),
                        timestamps=ts[a:b],
                        state=state[a:b],
                        action=action[a:b],
                        task_index=int(task[a]) if task is not None else 0,
                        reward=None if reward is None else reward[a:b],
                        done=None if done is None else done[a:b].astype(bool),
                    )

    def _matrix(self, cols: dict[str, pa.Array], v: Vector, f: Path, ep: np.ndarray) -> np.ndarray:
        if v.is_list:
            return to_matrix(cols[v.name], None, v.name, str(f), ep)
        parts = [cols[c].to_numpy(zero_copy_only=False) for c in v.columns]
        for c, p in zip(v.columns, parts, strict=True):
            if p.dtype.kind not in "fiu":
                raise ColumnError(f"column {c!r} is {p.dtype}, not numeric", f)
        return np.column_stack(parts).astype(np.float32, copy=False)


def _col(cols: dict[str, pa.Array], *names: str) -> np.ndarray | None:
    for n in names:
        if n in cols and cols[n].null_count == 0:
            return cols[n].to_numpy(zero_copy_only=False)
    return None


def open_reader(path: Path, **options: Any) -> TabularReader:
    if not (path.is_dir() or path.is_file()):
        raise EnrollError("does not exist", path)
    return TabularReader(path, **options)
