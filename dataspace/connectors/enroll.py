"""Enrollment: read a dataset, validate it, fingerprint it, store it on site (issue 2).

One pass over the source, one episode in memory at a time::

    reader.episodes() -> Validator.check -> schema.episode_hash -> FrameWriter.add
                                         (staging folder)
    schema.fingerprint(hashes) -> catalog entry -> store.commit (rename + one DB transaction)
                               -> sitelog "dataset.enrolled" (only when newly created)

A holder's declared feature ranges (``declared_ranges``, :mod:`.ranges`) are checked
for shape before the source is opened and against the dataset's names once the first
episode gives its dimensions; they go into the catalog entry as ``robot:declaredRanges``,
where the quality check reads them.

Any error, Ctrl-C or kill -9 before the commit leaves nothing visible: the
staging folder is removed (or swept by the next enrollment), and no row exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from dataspace.connectors.catalog import catalog_entry
from dataspace.connectors.detect import open_reader
from dataspace.connectors.ranges import (
    Ranges,
    RangesError,
    check_ranges,
    check_shape,
    stored_ranges,
)
from dataspace.connectors.reader import (
    CorruptFileError,
    DimensionError,
    EnrollError,
    FpsError,
    Reader,
)
from dataspace.connectors.validate import Validator
from dataspace.errors import DataspaceError, NotFoundError
from dataspace.schema import DatasetInfo, Episode, dataset_id_for, episode_hash, fingerprint
from dataspace.site import log as sitelog
from dataspace.site import store
from dataspace.site.folder import Site

log = logging.getLogger(__name__)

#: progress(frames_done, frames_total_or_None, episodes_done)
Progress = Callable[[int, int | None, int], None]

#: what a reader might still raise on input no test foresaw; enrollment turns it into
#: a CorruptFileError naming the source and episode (the readers' own checks come first)
_UNFORESEEN = (ArithmeticError, LookupError, TypeError, ValueError, RuntimeError, MemoryError)


@dataclass(frozen=True)
class EnrollResult:
    """What ``dataspace connector enroll --json`` prints (plus ``created``)."""

    dataset_id: str
    name: str
    format: str
    episodes: int
    frames: int
    state_dim: int
    action_dim: int
    fps: float | None
    fingerprint: str
    created: bool
    #: what the reader noticed but did not refuse (renamed columns, dropped frames, ...)
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def enroll(
    site: Site,
    path: Path | str,
    format: str = "auto",
    name: str | None = None,
    progress: Progress | None = None,
    declared_ranges: Mapping[str, Any] | None = None,
    **reader_options: Any,
) -> EnrollResult:
    """Enroll the dataset at ``path`` into ``site``; idempotent on content.

    ``reader_options`` are the format's options (``state_column``,
    ``action_column``, ``state_keys``, ``fps``, ``state_topic``, ``action_topic``,
    ``episode_gap``, ``episode_column``, ...); ``None`` values are ignored.
    ``declared_ranges`` (``{"observation.state": {name: [lo, hi]}, "action": {...}}``,
    the dataset's own names) goes into the catalog entry for the quality check.
    Raises an :class:`EnrollError` subclass naming the file, episode and problem
    (:class:`~dataspace.connectors.ranges.RangesError` for a declaration that cannot
    be applied; nothing is stored then).
    """
    path = Path(path)
    if declared_ranges is not None:
        check_shape(declared_ranges)  # before the (long) read
    if not path.exists():
        raise NotFoundError(f"{path}: no such file or folder")
    try:
        reader = open_reader(path, format, **reader_options)
    except DataspaceError:
        raise
    except (*_UNFORESEEN, OSError) as e:
        raise CorruptFileError(f"cannot be read ({type(e).__name__}: {_first(e)})", path) from e
    return enroll_reader(
        site,
        reader,
        str(path.resolve()),
        name=name,
        progress=progress,
        declared_ranges=declared_ranges,
    )


@dataclass
class _Episodes:
    """A reader over episodes already in canonical form."""

    format: str
    info: DatasetInfo
    items: Iterable[Episode]

    def episodes(self) -> Iterator[Episode]:
        yield from self.items


def enroll_episodes(
    site: Site,
    episodes: Iterable[Episode],
    info: DatasetInfo,
    *,
    name: str | None = None,
    source: str = "",
    progress: Progress | None = None,
    declared_ranges: Mapping[str, Any] | None = None,
) -> EnrollResult:
    """Enroll episodes that are already canonical (shards of a dataset, generated data)
    through the same validation, staging, atomic commit and log entry as :func:`enroll`.

    ``info`` gives the metadata (name, fps, robot type, names, tasks, licence);
    ``info.source_format`` becomes the dataset's ``format``.
    """
    reader = _Episodes(info.source_format, info, episodes)
    return enroll_reader(
        site, reader, source, name=name, progress=progress, declared_ranges=declared_ranges
    )


def enroll_reader(
    site: Site,
    reader: Reader,
    source: str,
    *,
    name: str | None = None,
    progress: Progress | None = None,
    declared_ranges: Mapping[str, Any] | None = None,
) -> EnrollResult:
    """The enrollment pipeline over any :class:`Reader` (module docstring)."""
    path = source or reader.info.name
    info = reader.info
    if declared_ranges is not None:
        check_shape(declared_ranges, path)  # before anything is read or staged
    store.sweep(site)
    ranges: Ranges | None = None

    validator = Validator(fps=info.fps)
    hashes: list[bytes] = []
    ep_frames: list[int] = []
    ep_tasks: list[int] = []
    ep_durations: list[float] = []
    with store.staging(site) as st:
        writer: store.FrameWriter | None = None
        for index, ep in enumerate(_guarded(reader.episodes(), path)):
            validator.check(ep, index)
            if writer is None:
                if declared_ranges is not None:  # the names are known from here on
                    ranges = _ranges(declared_ranges, info, validator, path)
                writer = store.FrameWriter(st.directory, ep.state.shape[1], ep.action.shape[1])
            hashes.append(episode_hash(ep))
            writer.add(index, ep)
            ep_frames.append(ep.frames)
            ep_tasks.append(ep.task_index)
            ep_durations.append(float(ep.timestamps_us[-1]) / 1e6)
            if progress is not None:
                progress(writer.frames, info.declared_frames, index + 1)
        if writer is None:
            raise DimensionError("contains no episodes", path)
        writer.close()
        frames = writer.frames
        _check_declared(path, info.declared_episodes, info.declared_frames, len(hashes), frames)
        fps = validator.fps if validator.fps is not None else info.fps
        if fps is None:
            raise FpsError("no frame rate: the source has none and no episode has two frames", path)

        fp = fingerprint(hashes).hex()
        dataset_id = dataset_id_for(bytes.fromhex(fp))
        title = name or info.name
        s_dim, a_dim = int(validator.state_dim or 0), int(validator.action_dim or 0)
        seconds = frames / fps
        catalog = catalog_entry(
            dataset_id=dataset_id,
            name=title,
            fingerprint_hex=fp,
            source_format=info.source_format,
            robot_type=info.robot_type,
            state_names=_names(info.state_names, s_dim),
            action_names=_names(info.action_names, a_dim),
            state_dim=s_dim,
            action_dim=a_dim,
            fps=fps,
            tasks=info.tasks,
            episodes=len(hashes),
            frames=frames,
            seconds=seconds,
            license=info.license,
            publisher=_org(site),
            declared_ranges=ranges,
        )
        row = {
            "dataset_id": dataset_id,
            "name": title,
            "fingerprint": fp,
            "format": reader.format,
            "robot_type": info.robot_type,
            "fps": fps,
            "state_dim": s_dim,
            "action_dim": a_dim,
            "episodes": len(hashes),
            "frames": frames,
            "state_names": _names(info.state_names, s_dim),
            "action_names": _names(info.action_names, a_dim),
            "tasks": info.tasks,
            "license": info.license,
            "source_path": source,
            "catalog": catalog,
            "attachments": info.attachments,
        }
        episodes = pa.table(
            {
                "dataset_id": pa.array([dataset_id] * len(hashes), pa.string()),
                "episode_index": pa.array(range(len(hashes)), pa.int64()),
                "hash": pa.array([h.hex() for h in hashes], pa.string()),
                "frames": pa.array(ep_frames, pa.int64()),
                "task_index": pa.array(ep_tasks, pa.int64()),
                "duration_s": pa.array(ep_durations, pa.float64()),
            }
        )
        record, created = store.commit(site, st, row, episodes)

    # created or not: an enrollment whose entry a crash left unwritten is completed here
    _log_enrolled(site, record)
    if not created and ranges is not None and stored_ranges(record.catalog) != ranges:
        raise RangesError(
            f"already enrolled as {record.dataset_id} ({record.name!r}) "
            + (
                "with other declared ranges"
                if stored_ranges(record.catalog) is not None
                else "without declared ranges"
            )
            + ": a dataset's declaration is part of its catalog entry from enrollment, and "
            "this one was not stored (nothing changed)",
            path,
        )
    return EnrollResult(
        dataset_id=record.dataset_id,
        name=record.name,
        format=record.format,
        episodes=record.episodes,
        frames=record.frames,
        state_dim=record.state_dim,
        action_dim=record.action_dim,
        fps=record.fps,
        fingerprint=record.fingerprint,
        created=created,
        notes=tuple(info.notes),
    )


def _guarded(episodes: Iterable[Episode], path: str) -> Iterator[Episode]:
    """The reader's episodes; anything but a DataspaceError raised while reading one
    becomes a CorruptFileError (never a traceback). Only reading is guarded, not the
    store's writes."""
    it = iter(episodes)
    index = 0
    while True:
        try:
            ep = next(it)
        except StopIteration:
            return
        except DataspaceError:
            raise
        except (*_UNFORESEEN, OSError) as e:
            log.debug("reader raised %r on %s episode %d", e, path, index, exc_info=True)
            raise CorruptFileError(
                f"cannot be read ({type(e).__name__}: {_first(e)})", path, index
            ) from e
        yield ep
        index += 1


def _first(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return text[:200]


def _check_declared(
    path: str, episodes: int | None, frames: int | None, got_episodes: int, got_frames: int
) -> None:
    if episodes is not None and episodes != got_episodes:
        raise DimensionError(f"declares {episodes} episodes, the data has {got_episodes}", path)
    if frames is not None and frames != got_frames:
        raise DimensionError(f"declares {frames} frames, the data has {got_frames}", path)


def _ranges(declared: Mapping[str, Any], info: DatasetInfo, v: Validator, path: str) -> Ranges:
    """The declaration checked against the dataset's names (RangesError) by the one check
    the quality check applies too (:mod:`dataspace.quality.ranges`), so that what is
    stored is what the check applies."""
    s_names = _names(info.state_names, int(v.state_dim or 0))
    a_names = _names(info.action_names, int(v.action_dim or 0))
    return check_ranges(declared, s_names, a_names, path)


def _names(names: list[str], dim: int) -> list[str]:
    """Per-dimension names when the source gives exactly one per dimension, else generic."""
    return list(names) if len(names) == dim else [f"{i}" for i in range(dim)]


def _org(site: Site) -> str | None:
    try:
        return site.org
    except (KeyError, OSError):
        return None


def _log_enrolled(site: Site, record: store.DatasetRecord) -> None:
    """Append ``dataset.enrolled`` to the site's log once per dataset (DESIGN.md, Audit log).

    The dataset is committed first (the store's transaction); the entry follows and
    is marked in ``enroll_log``. A crash between the two leaves no mark, so the next
    enrollment of the same content (a retry) appends it; a crash between the append
    and the mark makes that retry append a second, identical ``dataset.enrolled``,
    which states nothing new. No entry can be written: the error reaches the caller.
    """
    with site.db() as con:
        con.execute(
            "CREATE TABLE IF NOT EXISTS enroll_log (dataset_id VARCHAR PRIMARY KEY, "
            "log_index BIGINT)"
        )
        if con.execute(
            "SELECT 1 FROM enroll_log WHERE dataset_id = ?", [record.dataset_id]
        ).fetchone():
            return
    index = sitelog.record(
        site,
        "dataset.enrolled",
        dataset_id=record.dataset_id,
        fingerprint=record.fingerprint,
        name=record.name,
        episodes=record.episodes,
        frames=record.frames,
    )
    with site.db() as con:
        con.execute(
            "INSERT INTO enroll_log VALUES (?, ?) ON CONFLICT DO NOTHING",
            [record.dataset_id, index],
        )


__all__ = ["EnrollError", "EnrollResult", "enroll", "enroll_episodes", "enroll_reader"]
