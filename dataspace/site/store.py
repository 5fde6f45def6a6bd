"""The site store: canonical frames as Parquet, datasets and episodes in DuckDB.

Visibility rule: **the database is the source of truth**. A dataset exists when
and only when its row is in ``datasets``. Frames are written to
``SITE/store/staging/<random>/`` and renamed to ``site.dataset_dir(fingerprint)``
just before the one DuckDB transaction that inserts the dataset and its
episodes; a crash at any point leaves either a staging folder or an
unreferenced store folder, both invisible and both removed by :func:`sweep`.

Concurrency: several processes share a site. Creating a staging folder,
committing, and sweeping all happen under an exclusive ``flock`` on
``store/.lock``; each live enrollment also holds a ``flock`` on its own
``staging/<random>.lock``, so a sweep removes only the staging folders of
processes that are gone (a kill -9 releases its locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataspace.errors import NotFoundError
from dataspace.schema import Episode, frame_schema
from dataspace.site.folder import Site

#: frames per Parquet row group, and per Parquet file
ROW_GROUP_FRAMES = 65_536
FILE_FRAMES = 16 * ROW_GROUP_FRAMES

DATASET_COLUMNS = (
    "dataset_id",
    "name",
    "fingerprint",
    "format",
    "robot_type",
    "fps",
    "state_dim",
    "action_dim",
    "episodes",
    "frames",
    "state_names",
    "action_names",
    "tasks",
    "license",
    "source_path",
    "catalog",
    "attachments",
    "enrolled_at",
)
_JSON_COLUMNS = ("state_names", "action_names", "tasks", "catalog", "attachments")


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the connectors' tables (helper brief, "Site DuckDB tables")."""
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS datasets (
            dataset_id VARCHAR PRIMARY KEY, name VARCHAR, fingerprint VARCHAR,
            format VARCHAR, robot_type VARCHAR, fps DOUBLE, state_dim INTEGER,
            action_dim INTEGER, episodes BIGINT, frames BIGINT, state_names JSON,
            action_names JSON, tasks JSON, license VARCHAR, source_path VARCHAR,
            catalog JSON, attachments JSON, enrolled_at TIMESTAMP)
        """
    )
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS episodes (
            dataset_id VARCHAR, episode_index BIGINT, hash VARCHAR, frames BIGINT,
            task_index BIGINT, duration_s DOUBLE, PRIMARY KEY (dataset_id, episode_index))
        """
    )


# --- reading ----------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetRecord:
    """One row of ``datasets``, JSON columns decoded. Metadata only, never frames."""

    dataset_id: str
    name: str
    fingerprint: str
    format: str
    robot_type: str
    fps: float | None
    state_dim: int
    action_dim: int
    episodes: int
    frames: int
    state_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    license: str | None = None
    source_path: str | None = None
    catalog: dict[str, Any] = field(default_factory=dict)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    enrolled_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in DATASET_COLUMNS}
        d["enrolled_at"] = self.enrolled_at.isoformat() + "Z" if self.enrolled_at else None
        return d


def _record(row: tuple) -> DatasetRecord:
    d = dict(zip(DATASET_COLUMNS, row, strict=True))
    for k in _JSON_COLUMNS:
        d[k] = json.loads(d[k]) if d[k] is not None else ([] if k != "catalog" else {})
    return DatasetRecord(**d)


def list_datasets(site: Site) -> list[DatasetRecord]:
    """Every enrolled dataset, oldest first."""
    with site.db() as con:
        ensure_tables(con)
        rows = con.execute(
            f"SELECT {', '.join(DATASET_COLUMNS)} FROM datasets ORDER BY enrolled_at, dataset_id"
        ).fetchall()
    return [_record(r) for r in rows]


def get_dataset(site: Site, id_or_name: str) -> DatasetRecord:
    """A dataset by id, by fingerprint (or a unique prefix of it), or by unique name."""
    cols = ", ".join(DATASET_COLUMNS)
    with site.db() as con:
        ensure_tables(con)
        rows = con.execute(
            f"SELECT {cols} FROM datasets WHERE dataset_id = ? OR fingerprint = ?",
            [id_or_name, id_or_name],
        ).fetchall()
        if not rows:
            rows = con.execute(
                f"SELECT {cols} FROM datasets WHERE name = ?", [id_or_name]
            ).fetchall()
        if not rows and len(id_or_name) >= 8:
            rows = con.execute(
                f"SELECT {cols} FROM datasets WHERE starts_with(fingerprint, ?)", [id_or_name]
            ).fetchall()
    if not rows:
        raise NotFoundError(f"dataset {id_or_name!r} is not enrolled at {site.root}")
    if len(rows) > 1:
        ids = sorted(r[0] for r in rows)
        raise NotFoundError(f"{id_or_name!r} names several datasets ({', '.join(ids)}); use an id")
    return _record(rows[0])


def frames_dir(site: Site, dataset_id: str) -> Path:
    """The folder of a dataset's canonical Parquet files (read ``<dir>/*.parquet``)."""
    return site.dataset_dir(get_dataset(site, dataset_id).fingerprint)


def episode_rows(site: Site, dataset_id: str) -> list[dict[str, Any]]:
    """The ``episodes`` rows of a dataset, in episode order."""
    with site.db() as con:
        ensure_tables(con)
        cur = con.execute(
            "SELECT episode_index, hash, frames, task_index, duration_s FROM episodes "
            "WHERE dataset_id = ? ORDER BY episode_index",
            [dataset_id],
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


# --- writing frames ---------------------------------------------------------------------
class FrameWriter:
    """Appends canonical episodes to Parquet files in one folder.

    Frames are buffered as Arrow batches and written in row groups of exactly
    :data:`ROW_GROUP_FRAMES` (the last one shorter), zstd-compressed, in files of
    at most :data:`FILE_FRAMES` frames named ``part-00000.parquet`` onwards.
    """

    def __init__(self, directory: Path, state_dim: int, action_dim: int) -> None:
        self.directory = directory
        self.schema = frame_schema(state_dim, action_dim)
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0
        self._files = 0
        self.frames = 0

    def add(self, episode_index: int, ep: Episode) -> None:
        n = ep.frames
        s_dim, a_dim = ep.state.shape[1], ep.action.shape[1]
        reward = (
            pa.array(ep.reward, pa.float32())
            if ep.reward is not None
            else pa.nulls(n, pa.float32())
        )
        done = pa.array(ep.done, pa.bool_()) if ep.done is not None else pa.nulls(n, pa.bool_())
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(np.full(n, episode_index, dtype=np.int64)),
                pa.array(np.arange(n, dtype=np.int64)),
                pa.array(ep.timestamps_us / 1e6),
                pa.FixedSizeListArray.from_arrays(pa.array(ep.state.reshape(-1)), s_dim),
                pa.FixedSizeListArray.from_arrays(pa.array(ep.action.reshape(-1)), a_dim),
                pa.array(np.full(n, ep.task_index, dtype=np.int64)),
                reward,
                done,
                pa.array(np.arange(self.frames, self.frames + n, dtype=np.int64)),
            ],
            schema=self.schema,
        )
        self.frames += n
        self._buffer.append(batch)
        self._buffered += n
        if self._buffered >= ROW_GROUP_FRAMES:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._buffered:
            return
        table = pa.Table.from_batches(self._buffer, schema=self.schema)
        full = self._buffered if final else (self._buffered // ROW_GROUP_FRAMES) * ROW_GROUP_FRAMES
        pos = 0
        while pos < full:
            if self._writer is None:
                path = self.directory / f"part-{self._files:05d}.parquet"
                # dictionary-encode only the low-cardinality columns: attempting it on
                # float vectors in 64k-row groups costs over twice the write time
                self._writer = pq.ParquetWriter(
                    path,
                    self.schema,
                    compression="zstd",
                    use_dictionary=["episode_index", "task_index"],
                )
                self._files += 1
                self._file_rows = 0
            take = min(full - pos, FILE_FRAMES - self._file_rows)
            self._writer.write_table(table.slice(pos, take), row_group_size=ROW_GROUP_FRAMES)
            pos += take
            self._file_rows += take
            if self._file_rows >= FILE_FRAMES:
                self._writer.close()
                self._writer = None
        rest = table.slice(full)
        self._buffer = rest.to_batches()
        self._buffered = rest.num_rows

    def close(self) -> None:
        self._flush(final=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for path in sorted(self.directory.glob("*.parquet")):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(self.directory)


# --- staging, commit, sweep ---------------------------------------------------------------
@contextlib.contextmanager
def _store_lock(site: Site) -> Iterator[None]:
    site.store_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(site.store_dir.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class Staging:
    """A staging folder owned by this process (its lock file is flocked while alive)."""

    directory: Path
    lock_path: Path
    lock_fd: int

    def release(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.lock_path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


@contextlib.contextmanager
def staging(site: Site) -> Iterator[Staging]:
    """A fresh staging folder, removed on exit (after a commit it has been renamed away)."""
    site.staging_dir.mkdir(parents=True, exist_ok=True)
    with _store_lock(site):
        token = secrets.token_hex(8)
        lock_path = site.staging_dir / f"{token}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        directory = site.staging_dir / token
        directory.mkdir()
    st = Staging(directory, lock_path, fd)
    try:
        yield st
    finally:
        st.release()


def sweep(site: Site) -> list[Path]:
    """Remove leftovers of dead enrollments: unlocked staging folders and store
    folders that no ``datasets`` row references. Returns what was removed."""
    removed: list[Path] = []
    if not site.store_dir.parent.is_dir():
        return removed
    with _store_lock(site):
        if site.staging_dir.is_dir():
            for entry in sorted(site.staging_dir.iterdir()):
                if entry.suffix == ".lock":
                    continue
                lock = site.staging_dir / f"{entry.name}.lock"
                if lock.exists() and _locked_by_other(lock):
                    continue
                _remove(entry)
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                removed.append(entry)
            for lock in site.staging_dir.glob("*.lock"):
                if not (site.staging_dir / lock.stem).exists() and not _locked_by_other(lock):
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()
        if site.store_dir.is_dir():
            with site.db() as con:
                ensure_tables(con)
                known = {r[0] for r in con.execute("SELECT fingerprint FROM datasets").fetchall()}
            for entry in sorted(site.store_dir.iterdir()):
                if entry.name not in known:
                    _remove(entry)
                    removed.append(entry)
    return removed


def commit(
    site: Site, st: Staging, dataset: dict[str, Any], episodes: pa.Table
) -> tuple[DatasetRecord, bool]:
    """Make a staged dataset visible: rename into the store, then one DB transaction.

    Returns the dataset's record and whether it was created (False: the same
    content was already enrolled; the staged copy is discarded).
    """
    fp = dataset["fingerprint"]
    with _store_lock(site):
        with site.db() as con:
            ensure_tables(con)
            have = con.execute(
                "SELECT dataset_id FROM datasets WHERE fingerprint = ?", [fp]
            ).fetchone()
        if have is not None:
            return get_dataset(site, have[0]), False
        target = site.dataset_dir(fp)
        if target.exists():  # an orphan from a crash between rename and commit
            _remove(target)
        site.store_dir.mkdir(parents=True, exist_ok=True)
        st.directory.rename(target)
        _fsync_dir(site.store_dir)
        try:
            row = dict(dataset)
            for k in _JSON_COLUMNS:
                row[k] = json.dumps(row[k])
            row["enrolled_at"] = datetime.now(UTC).replace(tzinfo=None)
            with site.db() as con:
                ensure_tables(con)
                con.begin()
                con.execute(
                    f"INSERT INTO datasets ({', '.join(DATASET_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(DATASET_COLUMNS))})",
                    [row[k] for k in DATASET_COLUMNS],
                )
                con.register("new_episodes", episodes)
                con.execute(
                    "INSERT INTO episodes (dataset_id, episode_index, hash, frames, task_index, "
                    "duration_s) SELECT dataset_id, episode_index, hash, frames, task_index, "
                    "duration_s FROM new_episodes"
                )
                con.unregister("new_episodes")
                con.commit()
        except BaseException:
            _remove(target)
            raise
    return get_dataset(site, dataset["dataset_id"]), True


def _locked_by_other(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
