"""LeRobot datasets, layouts v2.1 and v3.0 (the format of the Hugging Face LeRobot library).

v2.1: ``meta/info.json``, ``meta/episodes.jsonl``, ``meta/tasks.jsonl``, one
Parquet file per episode at ``data/chunk-XXX/episode_XXXXXX.parquet``.
v3.0: ``meta/info.json``, ``meta/episodes/**.parquet``, ``meta/tasks.parquet``,
many episodes per file at ``data/chunk-XXX/file-XXX.parquet``.

The state and action columns come from ``meta/info.json`` features: the
conventional ``observation.state`` / ``action`` where present, otherwise the one
float vector feature whose name mentions "state" (resp. "action"); options
``state_column`` / ``action_column`` name them where that is ambiguous. Video
features are referenced by path and SHA-256, never decoded; an absent video is
noted in ``DatasetInfo.attachments`` (``present: false``), not an error.
Data files are streamed in record batches, one episode held at a time.

Metadata is checked before it is used (issue 14): ``data_path``/``video_path``
may only use their own fields with plain integer formats (``{episode_index:06d}``),
``chunks_size``, episode indexes and lengths, chunk/file indexes and task indexes
must be integers in range, ``fps`` a positive number, declared feature shapes at
most ``MAX_DIM``; JSON files are bounded in size (deep nesting is a typed error).
A data file's rows of an episode may not exceed its declared length, and each
Parquet column chunk may not declare more values than its rows and widths allow
(``reader.check_parquet``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataspace.connectors.arrowcols import Rows, assemble, runs, to_matrix
from dataspace.connectors.reader import (
    ARROW_ERRORS,
    MAX_DIM,
    MAX_META_BYTES,
    MAX_META_ROWS,
    ColumnError,
    CorruptFileError,
    DimensionError,
    EnrollError,
    MissingFileError,
    SizeLimitError,
    cap_rows,
    check_columns,
    check_parquet,
    format_path,
    inside,
    make_episode,
    meta_fps,
    meta_int,
    open_parquet,
    path_template,
    read_capped,
    sha256_file,
    walk_files,
)
from dataspace.schema import DatasetInfo, Episode

FORMAT = "lerobot"
OPTIONS = ("state_column", "action_column")
BATCH_ROWS = 65_536


class LeRobotReader:
    """Reads one LeRobot dataset folder (see module docstring)."""

    format = FORMAT

    def __init__(
        self, root: Path, state_column: str | None = None, action_column: str | None = None
    ) -> None:
        self.root = root
        self.meta = _read_json(root, "meta/info.json")
        info_json = root / "meta" / "info.json"
        features = self.meta.get("features")
        if not isinstance(features, dict):
            raise CorruptFileError("no 'features' object", info_json)
        for key, feature in features.items():
            if not isinstance(feature, dict):
                raise CorruptFileError(f"feature {key!r} is not an object", info_json)
        self.features: dict[str, dict[str, Any]] = features
        version = _text(self.meta.get("codebase_version", ""), 40)
        self.v3 = version.startswith("v3") or (
            not version.startswith("v2") and (root / "meta" / "episodes").is_dir()
        )
        self.state_column = state_column or pick_column(
            features, "state", "observation.state", info_json
        )
        self.action_column = action_column or pick_column(features, "action", "action", info_json)
        for col in (self.state_column, self.action_column):
            if col not in features:
                raise ColumnError(
                    f"column {col!r} is not a feature (features: {', '.join(features)})",
                    root / "meta/info.json",
                )
        self.state_dim = _feature_dim(features[self.state_column], self.state_column, info_json)
        self.action_dim = _feature_dim(features[self.action_column], self.action_column, info_json)
        self.fps = meta_fps(self.meta.get("fps"), info_json)
        self.chunks_size = meta_int(
            self.meta.get("chunks_size", 1000), "chunks_size", info_json, minimum=1
        )
        self.data_template = self._template("data_path", video=False)
        self.video_template = self._template("video_path", video=True)
        if self.v3:
            self.episode_meta = self._v3_episodes()
            tasks = self._v3_tasks()
        else:
            self.episode_meta = self._v2_episodes()
            tasks = self._v2_tasks()
        self.info = DatasetInfo(
            name=root.name,
            source_format=f"lerobot-{version or ('v3.0' if self.v3 else 'v2.1')}",
            fps=self.fps,
            robot_type=_text(self.meta.get("robot_type")) or "unknown",
            state_names=feature_names(features[self.state_column]),
            action_names=feature_names(features[self.action_column]),
            tasks=tasks,
            license=_license(root),
            declared_episodes=_count(self.meta, "total_episodes", info_json),
            declared_frames=_count(self.meta, "total_frames", info_json),
            attachments=self._videos(),
        )
        if state_column is None and self.state_column != "observation.state":
            self.info.notes.append(f"observation.state read from column {self.state_column!r}")
        if action_column is None and self.action_column != "action":
            self.info.notes.append(f"action read from column {self.action_column!r}")

    # --- metadata -------------------------------------------------------------
    def _template(self, key: str, video: bool) -> str | None:
        """``data_path`` / ``video_path`` from info.json, checked (fields, formats) first."""
        value = self.meta.get(key)
        if value is None or value == "":
            return None
        if self.v3:
            fields: dict[str, type] = {"chunk_index": int, "file_index": int}
        else:
            fields = {"episode_chunk": int, "episode_index": int}
        if video:
            fields["video_key"] = str
        return path_template(value, fields, key, self.root / "meta/info.json")

    def _v2_episodes(self) -> list[dict[str, Any]]:
        where = self.root / "meta/episodes.jsonl"
        rows = _read_jsonl(self.root, "meta/episodes.jsonl")
        for n, r in enumerate(rows, 1):
            if "episode_index" not in r or "length" not in r:
                raise CorruptFileError(
                    f"line {n}: entry without episode_index/length: {_short(r)}", where
                )
        return _checked_episodes(rows, where, ())

    def _v2_tasks(self) -> list[str]:
        where = self.root / "meta/tasks.jsonl"
        rows = _read_jsonl(self.root, "meta/tasks.jsonl")
        pairs = [
            (meta_int(r.get("task_index", 0), f"line {n}: task_index", where), _text(r.get("task")))
            for n, r in enumerate(rows, 1)
        ]
        return [t for _, t in sorted(pairs, key=lambda p: p[0])]

    def _v3_episodes(self) -> list[dict[str, Any]]:
        files = walk_files(self.root, "meta/episodes/**/*.parquet")
        if not files:
            raise MissingFileError(
                "no Parquet files (LeRobot v3.0 episode metadata)", self.root / "meta/episodes"
            )
        rows: list[dict[str, Any]] = []
        for f in files:
            pf = _open_parquet(self.root, f)
            names = pf.schema_arrow.names
            wanted = [
                c
                for c in names
                if c in ("episode_index", "length", "data/chunk_index", "data/file_index")
                or (c.startswith("videos/") and c.endswith(("/chunk_index", "/file_index")))
            ]
            missing = {"episode_index", "length"} - set(wanted)
            if missing:
                raise CorruptFileError(f"missing columns {sorted(missing)}", _rel(self.root, f))
            rows.extend(_read_table(self.root, f, pf, wanted).to_pylist())
            if len(rows) > MAX_META_ROWS:
                raise SizeLimitError(f"more than {MAX_META_ROWS} episodes", _rel(self.root, f))
        index_columns = tuple(
            {c: None for r in rows for c in r if c.endswith(("/chunk_index", "/file_index"))}
        )
        return _checked_episodes(rows, self.root / "meta/episodes", index_columns)

    def _v3_tasks(self) -> list[str]:
        path = self.root / "meta" / "tasks.parquet"
        if not path.is_file():
            raise MissingFileError("missing (LeRobot v3.0 task table)", _rel(self.root, path))
        pf = _open_parquet(self.root, path)
        names = pf.schema_arrow.names
        # pandas writes the task string as the index column
        name_col = next((c for c in ("task", "__index_level_0__") if c in names), None)
        if name_col is None or "task_index" not in names:
            raise CorruptFileError("needs task_index and task columns", _rel(self.root, path))
        table = _read_table(self.root, path, pf, ["task_index", name_col])
        pairs = [
            (meta_int(i, f"row {n}: task_index", _rel(self.root, path)), _text(t))
            for n, (i, t) in enumerate(
                zip(table["task_index"].to_pylist(), table[name_col].to_pylist(), strict=True)
            )
        ]
        return [t for _, t in sorted(pairs, key=lambda p: p[0])]

    def _data_files(self) -> list[Path]:
        where = self.root / "meta/info.json"
        if self.v3:
            template = (
                self.data_template or "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
            )
            keys: dict[tuple[int, int], None] = {}
            for r in self.episode_meta:
                if r.get("data/chunk_index") is None or r.get("data/file_index") is None:
                    return walk_files(self.root, "data/chunk-*/file-*.parquet")
                keys[(r["data/chunk_index"], r["data/file_index"])] = None
            return [
                self.root
                / format_path(template, {"chunk_index": c, "file_index": f}, "data_path", where)
                for c, f in keys
            ]
        template = (
            self.data_template
            or "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        )
        return [
            self.root
            / format_path(
                template,
                {
                    "episode_chunk": r["episode_index"] // self.chunks_size,
                    "episode_index": r["episode_index"],
                },
                "data_path",
                where,
            )
            for r in self.episode_meta
        ]

    def _videos(self) -> list[dict[str, object]]:
        keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        template = self.video_template
        if not keys or not template:
            return []
        where = self.root / "meta/info.json"
        paths: dict[str, None] = {}
        for key in keys:
            for r in self.episode_meta:
                ep = r["episode_index"]
                if self.v3:
                    c, f = r.get(f"videos/{key}/chunk_index"), r.get(f"videos/{key}/file_index")
                    if c is None or f is None:
                        continue
                    values = {"video_key": key, "chunk_index": c, "file_index": f}
                else:
                    values = {
                        "video_key": key,
                        "episode_chunk": ep // self.chunks_size,
                        "episode_index": ep,
                    }
                paths[format_path(template, values, "video_path", where)] = None
        out: list[dict[str, object]] = []
        for p in paths:
            full = self.root / p
            present = full.is_file()
            if present:
                inside(self.root, full)
            out.append(
                {"path": p, "sha256": sha256_file(full) if present else None, "present": present}
            )
        return out

    # --- frames -----------------------------------------------------------------
    def episodes(self) -> Iterator[Episode]:
        lengths = {r["episode_index"]: r["length"] for r in self.episode_meta}
        seen: list[int] = []
        for rows in assemble(cap_rows(self._pieces(), lengths.get)):
            rel = rows.file
            expected = lengths.get(rows.episode)
            if expected is None:
                raise DimensionError(
                    "has rows in the data but no entry in the episode metadata", rel, rows.episode
                )
            if expected != rows.state.shape[0]:
                raise DimensionError(
                    f"episode metadata declares {expected} frames, the data has "
                    f"{rows.state.shape[0]} (truncated or inconsistent)",
                    rel,
                    rows.episode,
                )
            seen.append(rows.episode)
            yield make_episode(
                rows.timestamps,
                "s",
                rows.state,
                rows.action,
                source=rel,
                episode=rows.episode,
                task_index=rows.task_index,
                reward=rows.reward,
                done=rows.done,
            )
        missing = sorted(set(lengths) - set(seen))
        if missing:
            raise DimensionError(
                f"episodes {missing[:10]} are declared in the episode metadata but have no rows",
                self.root / ("meta/episodes" + ("" if self.v3 else ".jsonl")),
            )

    def _pieces(self) -> Iterator[Rows]:
        state_dim, action_dim = self.state_dim, self.action_dim
        for path in self._data_files():
            rel = _rel(self.root, path)
            if not path.exists() and not path.is_symlink():
                raise MissingFileError("data file is missing", rel)
            pf = _open_parquet(self.root, path)
            names = set(pf.schema_arrow.names)
            need = ["episode_index", self.state_column, self.action_column]
            absent = [c for c in need if c not in names]
            if absent:
                raise ColumnError(f"missing columns {absent}", rel)
            optional = [
                c
                for c in ("timestamp", "frame_index", "task_index", "next.reward", "next.done")
                if c in names
            ]
            kinds = {
                "episode_index": "int",
                self.state_column: "vector",
                self.action_column: "vector",
                "timestamp": "number",
                "frame_index": "number",
                "task_index": "int",
                "next.reward": "number",
                "next.done": "bool",
            }
            check_columns(pf.schema_arrow, kinds, rel)
            widths = dict.fromkeys([*optional, "episode_index"], 1)
            widths[self.state_column] = state_dim or MAX_DIM
            widths[self.action_column] = action_dim or MAX_DIM
            check_parquet(pf, rel, need + optional, widths)
            try:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=need + optional):
                    yield from self._split(batch, rel, state_dim, action_dim)
            except ARROW_ERRORS as e:
                raise CorruptFileError(f"cannot read: {_first_line(e)}", rel) from e

    def _split(
        self, batch: pa.RecordBatch, rel: str, s_dim: int | None, a_dim: int | None
    ) -> Iterator[Rows]:
        cols = dict(zip(batch.schema.names, batch.columns, strict=True))
        for name in ("episode_index", "timestamp", "frame_index", "task_index"):
            if name in cols and cols[name].null_count:
                raise ColumnError(f"column {name!r} has null values", rel)
        ep = cols["episode_index"].to_numpy(zero_copy_only=False)
        state = to_matrix(cols[self.state_column], s_dim, self.state_column, rel, ep)
        action = to_matrix(cols[self.action_column], a_dim, self.action_column, rel, ep)
        if "timestamp" in cols:
            ts = cols["timestamp"].to_numpy(zero_copy_only=False)
        elif "frame_index" in cols and self.fps:
            ts = cols["frame_index"].to_numpy(zero_copy_only=False) / self.fps
        else:
            raise ColumnError("no timestamp column, and no frame_index with an fps", rel)
        task = cols["task_index"].to_numpy(zero_copy_only=False) if "task_index" in cols else None
        reward = _opt(cols.get("next.reward"))
        done = _opt(cols.get("next.done"))
        for a, b in runs(ep):
            yield Rows(
                episode=int(ep[a]),
                file=rel,
                timestamps=ts[a:b],
                state=state[a:b],
                action=action[a:b],
                task_index=int(task[a]) if task is not None else 0,
                reward=None if reward is None else reward[a:b],
                done=None if done is None else done[a:b],
            )


def pick_column(
    features: dict[str, dict[str, Any]], word: str, conventional: str, where: Path | str
) -> str:
    """The state (or action) feature: the conventional name, else the unique float
    vector feature whose name contains ``word``; anything else is ambiguous."""
    if conventional in features:
        return conventional
    candidates = [
        k
        for k, f in features.items()
        if word in k.lower()
        and str(f.get("dtype", "")).startswith("float")
        and isinstance(f.get("shape"), list)
        and len(f["shape"]) == 1
    ]
    if len(candidates) == 1:
        return candidates[0]
    option = f"--{word}-column"
    if not candidates:
        raise ColumnError(
            f"no {word} column among features {sorted(features)}; name it with {option}",
            where,
        )
    raise ColumnError(
        f"ambiguous {word} column, candidates {sorted(candidates)}; choose one with {option}",
        where,
    )


def feature_names(feature: dict[str, Any]) -> list[str]:
    """Per-dimension names: a list, a nested list (v2.1) or a dict of lists ({"motors": [...]})."""
    names = feature.get("names")
    if isinstance(names, dict):
        names = next(iter(names.values()), None)
    while isinstance(names, list) and len(names) == 1 and isinstance(names[0], list):
        names = names[0]
    if not isinstance(names, list):
        return []
    return [str(n) for n in names]


def _feature_dim(feature: dict[str, Any], name: str, where: Path) -> int | None:
    """Values per frame a vector feature declares (``shape: [d]``), checked to be an
    integer in 1..MAX_DIM; None where it declares no one-dimensional shape."""
    shape = feature.get("shape")
    if shape is None:
        return None
    if not isinstance(shape, list) or len(shape) > 8:
        raise CorruptFileError(
            f"feature {name!r}: shape must be a list, not {_short(shape)}", where
        )
    dims = [
        meta_int(d, f"feature {name!r}: shape", where, minimum=1, maximum=MAX_DIM) for d in shape
    ]
    return dims[0] if len(dims) == 1 else None


def _opt(col: pa.Array | None) -> np.ndarray | None:
    if col is None or col.null_count:
        return None
    return col.to_numpy(zero_copy_only=False)


def _open_parquet(root: Path, path: Path) -> pq.ParquetFile:
    rel = _rel(root, path)
    inside(root, path)
    return open_parquet(path, rel)


def _read_table(root: Path, path: Path, pf: pq.ParquetFile, columns: list[str]) -> pa.Table:
    """Scalar metadata columns of a small table (episodes, tasks), bounded first."""
    rel = _rel(root, path)
    if pf.metadata.num_rows > MAX_META_ROWS:
        raise SizeLimitError(f"declares {pf.metadata.num_rows} rows (a metadata table)", rel)
    check_parquet(pf, rel, columns, dict.fromkeys(columns, 1))
    try:
        return pf.read(columns=columns)
    except ARROW_ERRORS as e:
        raise CorruptFileError(f"cannot read: {_first_line(e)}", rel) from e


def _checked_episodes(
    rows: list[Any], where: Path, index_columns: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Episode metadata rows, each checked (integers in range, no duplicate episode),
    sorted by episode_index. ``index_columns`` (v3.0 chunk/file indexes) may be null."""
    seen: set[int] = set()
    out = []
    for n, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise CorruptFileError(f"entry {n} is not an object: {_short(r)}", where)
        ep = meta_int(r.get("episode_index"), f"entry {n}: episode_index", where)
        if ep in seen:
            raise CorruptFileError(f"episode {ep} is listed twice", where)
        seen.add(ep)
        row = dict(r)
        row["episode_index"] = ep
        row["length"] = meta_int(r.get("length"), "length", where, episode=ep)
        for c in index_columns:
            if row.get(c) is not None:
                row[c] = meta_int(row[c], c, where, episode=ep)
        out.append(row)
    return sorted(out, key=lambda r: r["episode_index"])


def _read_json(root: Path, rel: str) -> dict[str, Any]:
    path = root / rel
    if not path.is_file():
        raise MissingFileError("missing (LeRobot metadata)", path)
    inside(root, path)
    try:
        obj = json.loads(read_capped(path))
    except (OSError, ValueError, RecursionError) as e:
        raise CorruptFileError(f"not valid JSON ({_first_line(e)})", path) from e
    if not isinstance(obj, dict):
        raise CorruptFileError("not a JSON object", path)
    return obj


def _read_jsonl(root: Path, rel: str) -> list[dict[str, Any]]:
    """The objects of a JSON Lines file, one a line, each line bounded."""
    path = root / rel
    if not path.is_file():
        raise MissingFileError("missing (LeRobot v2.1 metadata)", path)
    inside(root, path)
    rows = []
    try:
        with path.open("rb") as f:
            for n, line in enumerate(iter(lambda: f.readline(MAX_META_BYTES + 1), b""), 1):
                if len(line) > MAX_META_BYTES:
                    raise SizeLimitError(f"line {n} is longer than {MAX_META_BYTES} bytes", path)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as e:
                    raise CorruptFileError(
                        f"line {n} is not valid JSON ({_first_line(e)})", path
                    ) from e
                if not isinstance(row, dict):
                    raise CorruptFileError(f"line {n} is not a JSON object: {_short(row)}", path)
                rows.append(row)
                if len(rows) > MAX_META_ROWS:
                    raise SizeLimitError(f"more than {MAX_META_ROWS} lines", path)
    except OSError as e:
        raise CorruptFileError(f"cannot read ({e})", path) from e
    return rows


def _license(root: Path) -> str | None:
    """The licence named in a LICENSE file's first line, or a README card's `license:`.

    Only the first 64 KiB of each are read, and only files inside the folder (the
    licence is published in the catalog)."""
    for name in ("LICENSE", "LICENSE.md", "LICENSE.txt"):
        p = root / name
        if p.is_file():
            first = _head(root, p).strip().splitlines()
            text = first[0].strip() if first else ""
            return "MIT" if "MIT" in text else (text[:60] or None)
    readme = root / "README.md"
    if readme.is_file():
        for line in _head(root, readme).splitlines()[:40]:
            if line.lower().startswith("license:"):
                return line.split(":", 1)[1].strip()[:200] or None
    return None


def _head(root: Path, path: Path, limit: int = 1 << 16) -> str:
    inside(root, path)
    try:
        with path.open("rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError as e:
        raise CorruptFileError(f"cannot read ({e})", path) from e


def _rel(root: Path, path: Path) -> str:
    """How errors name a file: its full path, so the message stands on its own."""
    return str(path)


def _count(meta: dict[str, Any], key: str, where: Path) -> int | None:
    """A declared total (``total_episodes``, ``total_frames``): absent, or an integer."""
    value = meta.get(key)
    return None if value is None else meta_int(value, key, where)


def _text(x: object, limit: int = 10_000) -> str:
    """A metadata string (task, robot type, version); other JSON values as their text."""
    if x is None:
        return ""
    text = x if isinstance(x, str) else _short(x, limit)
    return text[:limit]


def _short(x: object, limit: int = 80) -> str:
    try:
        text = json.dumps(x)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(x).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def open_reader(path: Path, **options: Any) -> LeRobotReader:
    if not path.is_dir():
        raise EnrollError("a LeRobot dataset is a folder with meta/info.json", path)
    return LeRobotReader(path, **options)
