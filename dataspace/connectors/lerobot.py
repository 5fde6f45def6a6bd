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
    ColumnError,
    CorruptFileError,
    DimensionError,
    EnrollError,
    MissingFileError,
    inside,
    make_episode,
    sha256_file,
    walk_files,
)
from dataspace.schema import DatasetInfo, Episode

FORMAT = "lerobot"
OPTIONS = ("state_column", "action_column")
BATCH_ROWS = 65_536


def looks_like(path: Path) -> bool:
    """A folder with meta/info.json that declares a LeRobot codebase version."""
    info = path / "meta" / "info.json"
    if not info.is_file():
        return False
    try:
        return "codebase_version" in json.loads(info.read_text())
    except (OSError, ValueError):
        return True  # claim it, so the reader reports the broken info.json by name


class LeRobotReader:
    """Reads one LeRobot dataset folder (see module docstring)."""

    format = FORMAT

    def __init__(
        self, root: Path, state_column: str | None = None, action_column: str | None = None
    ) -> None:
        self.root = root
        self.meta = _read_json(root, "meta/info.json")
        features = self.meta.get("features")
        if not isinstance(features, dict):
            raise CorruptFileError("no 'features' object", root / "meta/info.json")
        self.features: dict[str, dict[str, Any]] = features
        version = str(self.meta.get("codebase_version", ""))
        self.v3 = version.startswith("v3") or (
            not version.startswith("v2") and (root / "meta" / "episodes").is_dir()
        )
        info_json = root / "meta" / "info.json"
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
        self.fps = _float_or_none(self.meta.get("fps"))
        self.chunks_size = int(self.meta.get("chunks_size", 1000))
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
            robot_type=str(self.meta.get("robot_type") or "unknown"),
            state_names=feature_names(features[self.state_column]),
            action_names=feature_names(features[self.action_column]),
            tasks=tasks,
            license=_license(root),
            declared_episodes=_int_or_none(self.meta.get("total_episodes")),
            declared_frames=_int_or_none(self.meta.get("total_frames")),
            attachments=self._videos(),
        )
        if state_column is None and self.state_column != "observation.state":
            self.info.notes.append(f"observation.state read from column {self.state_column!r}")
        if action_column is None and self.action_column != "action":
            self.info.notes.append(f"action read from column {self.action_column!r}")

    # --- metadata -------------------------------------------------------------
    def _v2_episodes(self) -> list[dict[str, Any]]:
        rows = _read_jsonl(self.root, "meta/episodes.jsonl")
        for r in rows:
            if "episode_index" not in r or "length" not in r:
                raise CorruptFileError(
                    f"entry without episode_index/length: {r}", self.root / "meta/episodes.jsonl"
                )
        return sorted(rows, key=lambda r: int(r["episode_index"]))

    def _v2_tasks(self) -> list[str]:
        rows = _read_jsonl(self.root, "meta/tasks.jsonl")
        return [str(r.get("task", "")) for r in sorted(rows, key=lambda r: r.get("task_index", 0))]

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
            try:
                rows.extend(pf.read(columns=wanted).to_pylist())
            except (pa.ArrowException, OSError) as e:
                raise CorruptFileError(f"cannot read: {e}", _rel(self.root, f)) from e
        return sorted(rows, key=lambda r: int(r["episode_index"]))

    def _v3_tasks(self) -> list[str]:
        path = self.root / "meta" / "tasks.parquet"
        if not path.is_file():
            raise MissingFileError("missing (LeRobot v3.0 task table)", _rel(self.root, path))
        table = _open_parquet(self.root, path).read()
        # pandas writes the task string as the index column
        name_col = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
        if name_col is None or "task_index" not in table.column_names:
            raise CorruptFileError("needs task_index and task columns", _rel(self.root, path))
        pairs = sorted(
            zip(table["task_index"].to_pylist(), table[name_col].to_pylist(), strict=True)
        )
        return [str(t) for _, t in pairs]

    def _data_files(self) -> list[Path]:
        template = str(self.meta.get("data_path") or "")
        if self.v3:
            template = template or "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
            keys: list[tuple[int, int]] = []
            for r in self.episode_meta:
                if r.get("data/chunk_index") is None:
                    return walk_files(self.root, "data/chunk-*/file-*.parquet")
                k = (int(r["data/chunk_index"]), int(r["data/file_index"]))
                if k not in keys:
                    keys.append(k)
            return [self.root / template.format(chunk_index=c, file_index=f) for c, f in keys]
        template = template or "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
        return [
            self.root
            / template.format(
                episode_chunk=int(r["episode_index"]) // self.chunks_size,
                episode_index=int(r["episode_index"]),
            )
            for r in self.episode_meta
        ]

    def _videos(self) -> list[dict[str, object]]:
        keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        template = str(self.meta.get("video_path") or "")
        if not keys or not template:
            return []
        paths: list[str] = []
        for key in keys:
            for r in self.episode_meta:
                ep = int(r["episode_index"])
                try:
                    if self.v3:
                        c, f = r.get(f"videos/{key}/chunk_index"), r.get(f"videos/{key}/file_index")
                        if c is None or f is None:
                            continue
                        p = template.format(video_key=key, chunk_index=int(c), file_index=int(f))
                    else:
                        p = template.format(
                            video_key=key,
                            episode_chunk=ep // self.chunks_size,
                            episode_index=ep,
                        )
                except (KeyError, IndexError, ValueError) as e:
                    raise CorruptFileError(
                        f"bad video_path {template!r}: {e}", self.root / "meta/info.json"
                    ) from e
                if p not in paths:
                    paths.append(p)
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
        lengths = {int(r["episode_index"]): int(r["length"]) for r in self.episode_meta}
        seen: list[int] = []
        for rows in assemble(self._pieces()):
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
        state_dim = _feature_dim(self.features[self.state_column])
        action_dim = _feature_dim(self.features[self.action_column])
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
            try:
                for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=need + optional):
                    yield from self._split(batch, rel, state_dim, action_dim)
            except (pa.ArrowException, OSError) as e:
                raise CorruptFileError(f"cannot read: {e}", rel) from e

    def _split(
        self, batch: pa.RecordBatch, rel: str, s_dim: int | None, a_dim: int | None
    ) -> Iterator[Rows]:
        cols = dict(zip(batch.schema.names, batch.columns, strict=True))
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
        and len(f.get("shape") or []) == 1
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


def _feature_dim(feature: dict[str, Any]) -> int | None:
    shape = feature.get("shape")
    if isinstance(shape, list) and len(shape) == 1:
        return int(shape[0])
    return None


def _opt(col: pa.Array | None) -> np.ndarray | None:
    if col is None or col.null_count:
        return None
    return col.to_numpy(zero_copy_only=False)


def _open_parquet(root: Path, path: Path) -> pq.ParquetFile:
    rel = _rel(root, path)
    inside(root, path)
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError as e:
        raise MissingFileError("missing", rel) from e
    except (pa.ArrowException, OSError) as e:
        raise CorruptFileError(f"not a readable Parquet file ({e})", rel) from e
    return pf


def _read_json(root: Path, rel: str) -> dict[str, Any]:
    path = root / rel
    if not path.is_file():
        raise MissingFileError("missing (LeRobot metadata)", path)
    inside(root, path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptFileError(f"not valid JSON ({e})", path) from e
    if not isinstance(obj, dict):
        raise CorruptFileError("not a JSON object", path)
    return obj


def _read_jsonl(root: Path, rel: str) -> list[dict[str, Any]]:
    path = root / rel
    if not path.is_file():
        raise MissingFileError("missing (LeRobot v2.1 metadata)", path)
    inside(root, path)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise CorruptFileError(f"line {n} is not valid JSON ({e})", path) from e
    return rows


def _license(root: Path) -> str | None:
    """The licence named in a LICENSE file's first line, or a README card's `license:`."""
    for name in ("LICENSE", "LICENSE.md", "LICENSE.txt"):
        p = root / name
        if p.is_file():
            first = p.read_text(errors="replace").strip().splitlines()
            text = first[0].strip() if first else ""
            return "MIT" if "MIT" in text else (text[:60] or None)
    readme = root / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines()[:40]:
            if line.lower().startswith("license:"):
                return line.split(":", 1)[1].strip() or None
    return None


def _rel(root: Path, path: Path) -> str:
    """How errors name a file: its full path, so the message stands on its own."""
    return str(path)


def _float_or_none(x: object) -> float | None:
    try:
        return float(x) if x is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _int_or_none(x: object) -> int | None:
    try:
        return int(x) if x is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def open_reader(path: Path, **options: Any) -> LeRobotReader:
    if not path.is_dir():
        raise EnrollError("a LeRobot dataset is a folder with meta/info.json", path)
    return LeRobotReader(path, **options)
