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

Columns must have the types their role needs (an integer episode column, numeric
clocks and vectors; ``reader.check_columns``), Parquet column chunks may not
declare more values than their rows and widths allow, and one episode may hold
at most ``reader.MAX_EPISODE_VALUES`` values (issue 14).
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

from dataspace.connectors.arrowcols import Rows, assemble, runs, to_matrix
from dataspace.connectors.reader import (
    ARROW_ERRORS,
    ColumnError,
    CorruptFileError,
    DtypeError,
    EnrollError,
    MissingFileError,
    TimestampError,
    cap_rows,
    check_columns,
    check_parquet,
    inside,
    make_episode,
    meta_fps,
    open_parquet,
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
#: kept when present (numbers); the task index must be an integer
_OPTIONAL = {"next.reward": "number", "reward": "number", "next.done": "bool", "done": "bool"}


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
        self.fps = meta_fps(fps, path, "--fps")
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
            return open_parquet(f).schema_arrow
        except FileNotFoundError as e:
            raise MissingFileError("missing", f) from e
        except ARROW_ERRORS as e:
            raise CorruptFileError(f"not a readable table ({e})", f) from e

    def episodes(self) -> Iterator[Episode]:
        for rows in assemble(cap_rows(self._pieces(), lambda _ep: None)):
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

    def _kinds(self) -> dict[str, str]:
        """What each column the reader converts must hold (reader.check_columns)."""
        kinds = {
            self.episode_column: "int",
            self.frame_column: "number",
            self.timestamp_column: "number",
            "task_index": "int",
        }
        for v in (self.state, self.action):
            kinds.update(dict.fromkeys(v.columns, "vector" if v.is_list else "number"))
        return kinds

    def _batches(self, f: Path) -> Iterator[pa.RecordBatch]:
        try:
            if f.suffix.lower() == ".csv":
                with pacsv.open_csv(f, read_options=pacsv.ReadOptions(block_size=1 << 24)) as r:
                    yield from r
            else:
                pf = open_parquet(f)
                columns = [c for c in pf.schema_arrow.names if c in self._kinds()]
                columns += [c for c in _OPTIONAL if c in pf.schema_arrow.names]
                widths = {c: 1 for c in columns if c not in (self.state.name, self.action.name)}
                check_parquet(pf, f, columns, widths)
                yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=columns)
        except ARROW_ERRORS as e:
            raise CorruptFileError(f"cannot read ({e})", f) from e

    def _pieces(self) -> Iterator[Rows]:
        last_frame: tuple[int, float] | None = None
        kinds = self._kinds()
        for f in self.files:
            check_columns(self._schema(f), kinds | _OPTIONAL, f)
            for batch in self._batches(f):
                check_columns(batch.schema, kinds | _OPTIONAL, f)
                cols = dict(zip(batch.schema.names, batch.columns, strict=True))
                missing = [
                    c
                    for c in (self.episode_column, *self.state.columns, *self.action.columns)
                    if c not in cols
                ]
                if missing:
                    raise ColumnError(f"missing columns {missing}", f)
                for name in (self.episode_column, self.frame_column, self.timestamp_column):
                    if name in cols and cols[name].null_count:
                        raise ColumnError(f"column {name!r} has null values", f)
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
                raise DtypeError(f"column {c!r} is {p.dtype}, not numeric", f)
        with np.errstate(over="ignore"):  # out of float32's range: inf, refused as non-finite
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
