"""What every format reader shares: the reader interface, typed enrollment errors,
safe file access inside the given folder, and turning arrays into an Episode.

A reader is built from a path and options, knows its :class:`DatasetInfo` after
reading the metadata, and yields canonical :class:`~dataspace.schema.Episode`
objects one at a time (issue 2: reading is streamed, never whole-file).
Validation that is the same for every format (dimensions, finite values,
monotonic clocks, fps) lives in :mod:`dataspace.connectors.validate`.

Files and metadata may be crafted (issue 14): readers check every declared value
before using it (:func:`meta_int`, :func:`meta_fps`, :func:`path_template`,
:func:`check_columns`) and bound what they allocate from declared sizes
(``MAX_*`` below, :func:`check_parquet`, :func:`cap_rows`, :func:`read_capped`),
raising an :class:`EnrollError` subclass -- never another exception.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import string
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
    """A path (through a symlink, an HDF5 external link or external storage) that
    leads outside the folder being enrolled."""


class SizeLimitError(EnrollError):
    """A declared size beyond what the file really holds, or beyond a reader's bounds."""


class DtypeError(ColumnError):
    """Values of a type the reader cannot represent as float32 (complex, text, compound)."""


# --- bounds on what a reader allocates from sizes a file declares (issue 14) -----------

#: values per state or action vector
MAX_DIM = 1 << 16
#: values (frames x (state dim + action dim)) of one episode held in memory
MAX_EPISODE_VALUES = 1 << 28
#: one JSON or JSON Lines metadata file, and one line of it
MAX_META_BYTES = 64 << 20
#: rows of a metadata table (episodes, tasks), and declared episode/frame counts
MAX_META_ROWS = 10_000_000
#: values one Parquet column chunk may decode to
MAX_CHUNK_VALUES = 1 << 28
#: the highest frame rate a source may declare
MAX_FPS = 1e6
#: the longest an episode's clock may run, in seconds (about 30 years)
MAX_SPAN_S = 1e9
#: the largest index (episode, chunk, file, task) a source may declare
MAX_INDEX = (1 << 53) - 1


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
    if ts.ndim != 1:
        raise TimestampError(f"timestamps have shape {ts.shape}, not [frames]", source, episode)
    if ts.size:
        span = float(np.max(np.abs(ts.astype(np.float64) - float(ts[0]))))
        if span > MAX_SPAN_S * (1e9 if unit == "ns" else 1):
            raise TimestampError(
                f"timestamps span {span:g} {unit}, more than {MAX_SPAN_S:g} s in one episode",
                source,
                episode,
            )
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


# --- checked metadata values ------------------------------------------------------------


def meta_int(
    value: object,
    what: str,
    file: Path | str | None,
    *,
    minimum: int = 0,
    maximum: int = MAX_INDEX,
    episode: int | None = None,
) -> int:
    """``value`` as an int in ``[minimum, maximum]``: an integer, or a float with an
    integral value (JSON writers differ); anything else is a :class:`CorruptFileError`."""
    if isinstance(value, np.generic) and value.shape == ():
        value = value.item()
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value, ok = int(value), True
    if not ok:
        raise CorruptFileError(f"{what} must be an integer, not {_show(value)}", file, episode)
    if not minimum <= value <= maximum:  # type: ignore[operator]
        raise CorruptFileError(
            f"{what} is {_show(value)}, outside {minimum}..{maximum}", file, episode
        )
    return int(value)  # type: ignore[arg-type]


def meta_fps(value: object, file: Path | str | None, what: str = "fps") -> float | None:
    """A declared frame rate: ``None`` when absent, else a finite number in (0, MAX_FPS]."""
    if value is None:
        return None
    if isinstance(value, np.generic) and value.shape == ():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FpsError(f"{what} must be a number, not {_show(value)}", file)
    fps = float(value)
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise FpsError(f"{what} is {_show(value)}; a frame rate is > 0 and <= {MAX_FPS:g}", file)
    return fps


def _show(value: object, limit: int = 60) -> str:
    """A value for an error message, cut short (a crafted value may be huge)."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # deep nesting; ints past the digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def path_template(template: object, fields: dict[str, type], what: str, file: Path | str) -> str:
    """Check a path template (LeRobot ``data_path``, ``video_path``) before formatting it.

    Only the named ``fields`` may appear, each plainly (``{name}``) or with an integer
    format of at most two width digits (``{name:03d}``); no positional fields, no
    attribute or index access, no conversions, no nested fields. ``fields`` maps a
    field name to its value type (``int`` or ``str``; a ``str`` field takes no format).
    """
    if not isinstance(template, str) or not template:
        raise CorruptFileError(f"{what} must be a non-empty string, not {_show(template)}", file)
    if len(template) > 1024:
        raise CorruptFileError(f"{what} is {len(template)} characters long", file)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise CorruptFileError(f"bad {what} {_show(template)}: {e}", file) from e
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in fields:
            allowed = ", ".join("{" + f + "}" for f in fields)
            raise CorruptFileError(
                f"bad {what} {_show(template)}: field {{{name}}} is not one of {allowed}", file
            )
        if conversion is not None or not _SPEC_OK[fields[name]](spec or ""):
            raise CorruptFileError(
                f"bad {what} {_show(template)}: format {{{name}"
                f"{'!' + conversion if conversion else ''}:{spec}}} is not allowed "
                "(only an integer width of at most two digits, e.g. :03d)",
                file,
            )
    return template


_SPEC_OK: dict[type, Callable[[str], bool]] = {
    int: lambda spec: re.fullmatch(r"(0?[0-9]{1,2})?d?", spec) is not None,
    str: lambda spec: spec == "",
}


def format_path(template: str, values: dict[str, Any], what: str, file: Path | str) -> str:
    """A checked template (:func:`path_template`) filled in."""
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise CorruptFileError(f"bad {what} {_show(template)}: {e}", file) from e


# --- Arrow and Parquet ---------------------------------------------------------------------

#: what a column must hold: "int", "number" (int or float), "bool" (bool or number),
#: "vector" (a numeric list, or a number for a one-dimensional vector)
ColumnKind = str


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def column_kind_ok(t: pa.DataType, kind: ColumnKind) -> bool:
    if kind == "int":
        return pa.types.is_integer(t)
    if kind == "number":
        return _numeric(t)
    if kind == "bool":
        return pa.types.is_boolean(t) or _numeric(t)
    if kind == "vector":
        if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
            return _numeric(t.value_type)
        return _numeric(t)
    raise ValueError(kind)


def check_columns(schema: pa.Schema, kinds: dict[str, ColumnKind], file: Path | str) -> None:
    """Refuse columns whose Arrow type is not what the reader converts (a text episode
    index, a string timestamp, a nested list as a vector)."""
    words = {
        "int": "integers",
        "number": "numbers",
        "bool": "booleans or numbers",
        "vector": "numeric vectors",
    }
    for name, kind in kinds.items():
        i = schema.get_field_index(name)
        if i < 0:
            continue
        t = schema.field(i).type
        if not column_kind_ok(t, kind):
            raise DtypeError(f"column {name!r} has type {t}, expected {words[kind]}", file)


def open_parquet(path: Path, shown: Path | str | None = None) -> pq.ParquetFile:
    """A Parquet file opened for reading; a missing or unreadable one is a typed error
    (a corrupt footer makes pyarrow raise ArrowException, OSError, or a decode error)."""
    where = shown if shown is not None else path
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError as e:
        raise MissingFileError("missing", where) from e
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError) as e:
        raise CorruptFileError(f"not a readable Parquet file ({_first_line(e)})", where) from e


#: what pyarrow raises while decoding a corrupt Parquet or CSV file (UnicodeDecodeError
#: and ArrowInvalid are ValueErrors)
ARROW_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError, IndexError)


def _first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0][:300] if text else type(e).__name__


def check_parquet(
    pf: pq.ParquetFile,
    file: Path | str,
    columns: Iterable[str],
    widths: dict[str, int] | None = None,
) -> None:
    """Bound what reading ``columns`` of ``pf`` decodes, from the file's own footer.

    Parquet's encodings (RLE, dictionaries) and codecs let a few bytes declare
    millions of values; Arrow decodes what each column chunk declares. Each column
    chunk read must declare at most ``rows x width`` values (``widths`` gives a
    column's values per row, else :data:`MAX_DIM`) and at most
    :data:`MAX_CHUNK_VALUES`; the file at most :data:`MAX_INDEX` rows.
    """
    md = pf.metadata
    if md.num_rows > MAX_INDEX or md.num_rows < 0:
        raise SizeLimitError(f"declares {md.num_rows} rows", file)
    widths = widths or {}
    wanted = set(columns)
    paths: dict[int, str] = {}  # leaf column index -> the top-level column it belongs to
    leaf = 0
    for field in pf.schema_arrow:
        n = _leaves(field.type)
        if field.name in wanted:
            paths.update(dict.fromkeys(range(leaf, leaf + n), field.name))
        leaf += n
    if leaf != md.num_columns:  # not the layout Arrow maps: match leaf paths by name
        names = sorted(wanted, key=len, reverse=True)
        paths = {}
        for j in range(md.num_columns):
            path = md.schema.column(j).path
            name = next((n for n in names if path == n or path.startswith(n + ".")), None)
            if name is not None:
                paths[j] = name
    for r in range(md.num_row_groups):
        rg = md.row_group(r)
        rows = rg.num_rows
        if rows < 0 or rows > md.num_rows:
            raise SizeLimitError(f"row group {r} declares {rows} rows", file)
        for j, name in paths.items():
            values = rg.column(j).num_values
            width = widths.get(name, MAX_DIM)
            if values < 0 or values > rows * max(width, 1) or values > MAX_CHUNK_VALUES:
                raise SizeLimitError(
                    f"column {name!r} declares {values} values in row group {r} of {rows} "
                    f"rows (at most {min(rows * max(width, 1), MAX_CHUNK_VALUES)}: "
                    f"{max(width, 1)} per row)",
                    file,
                )


def _leaves(t: pa.DataType) -> int:
    """How many Parquet leaf columns an Arrow type is stored as."""
    if pa.types.is_struct(t):
        return sum(_leaves(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _leaves(t.key_type) + _leaves(t.item_type)
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        return _leaves(t.value_type)
    return 1


# --- streamed episodes ------------------------------------------------------------------

R = TypeVar("R")


def cap_rows(pieces: Iterable[R], limit: Callable[[int], int | None]) -> Iterator[R]:
    """Pass ``pieces`` (``arrowcols.Rows``) through, refusing an episode whose rows
    exceed ``limit(episode)`` (its declared length, or None for no declaration) or
    whose values exceed :data:`MAX_EPISODE_VALUES` -- before they are all held."""
    current: int | None = None
    values = rows = 0
    for piece in pieces:
        ep = piece.episode  # type: ignore[attr-defined]
        if ep != current:
            current, rows, values = ep, 0, 0
        n, s_dim = piece.state.shape[:2]  # type: ignore[attr-defined]
        rows += n
        values += n * (s_dim + piece.action.shape[1] + 1)  # type: ignore[attr-defined]
        declared = limit(ep)
        if declared is not None and rows > declared:
            raise DimensionError(
                f"episode metadata declares {declared} frames, the data has more",
                piece.file,  # type: ignore[attr-defined]
                ep,
            )
        if values > MAX_EPISODE_VALUES:
            raise SizeLimitError(
                f"more than {MAX_EPISODE_VALUES} values (frames x dimensions) in one episode",
                piece.file,  # type: ignore[attr-defined]
                ep,
            )
        yield piece


def read_capped(path: Path, limit: int = MAX_META_BYTES) -> bytes:
    """A whole (metadata) file, refused when it is larger than ``limit`` bytes."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise SizeLimitError(f"is {size} bytes, larger than {limit} (a metadata file)", path)
        data = f.read(size + 1)  # read(n) allocates n bytes first: ask for what is there
    if len(data) > limit:
        raise SizeLimitError(f"larger than {limit} bytes (a metadata file)", path)
    return data
