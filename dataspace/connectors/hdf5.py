"""robomimic-style HDF5: ``data/demo_N/{obs/<keys>, actions, rewards, dones}``.

A path is one ``.h5``/``.hdf5`` file or a folder of them (sorted by name).
Demos are read in numeric order (``demo_2`` before ``demo_10``), one at a time.

* ``observation.state`` is the concatenation, in the order given, of the obs
  keys in ``state_keys`` (a comma list); by default every numeric obs key of
  rank 1 or 2 in sorted order (images, of rank 3+, are skipped with a note).
* ``action`` is ``actions``; ``rewards`` and ``dones`` are kept when present.
* Timestamps: a ``timestamps`` dataset in the demo (seconds; our extension,
  robomimic has none) or else ``frame / fps``.
* fps: an ``fps`` attribute on ``data`` or on the file (or robomimic's
  ``env_args.env_kwargs.control_freq``); else the ``fps`` option; else an
  error. Files that declare different rates are an error (mixed fps).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dataspace.connectors.reader import (
    ColumnError,
    CorruptFileError,
    DimensionError,
    EnrollError,
    FpsError,
    MissingFileError,
    make_episode,
    walk_files,
)
from dataspace.schema import DatasetInfo, Episode

FORMAT = "hdf5"
OPTIONS = ("state_keys", "fps")
_DEMO = re.compile(r"^demo_(\d+)$")


def demo_names(data: h5py.Group) -> list[str]:
    """``demo_N`` groups sorted by N; other names after them, sorted."""
    names = list(data.keys())
    numbered = sorted((int(m.group(1)), n) for n in names if (m := _DEMO.match(n)))
    others = sorted(n for n in names if not _DEMO.match(n))
    return [n for _, n in numbered] + others


class HDF5Reader:
    """Reads robomimic-style HDF5 files (see module docstring)."""

    format = FORMAT

    def __init__(
        self, path: Path, state_keys: str | list[str] | None = None, fps: float | None = None
    ) -> None:
        self.path = path
        if path.is_dir():
            self.files = [
                p for p in walk_files(path, "**/*") if p.suffix.lower() in (".h5", ".hdf5")
            ]
            if not self.files:
                raise MissingFileError("no .h5/.hdf5 files", path)
        else:
            self.files = [path]
        if isinstance(state_keys, str):
            state_keys = [k.strip() for k in state_keys.split(",") if k.strip()]
        self.option_fps = fps
        self.file_fps: dict[Path, float | None] = {}
        notes: list[str] = []
        robot_type = "unknown"
        declared = 0
        first_keys: list[str] | None = None
        for f in self.files:
            with _open(f) as h:
                data = _group(h, "data", f)
                self.file_fps[f] = _attr_fps(h, data)
                if first_keys is None:
                    demos = demo_names(data)
                    if not demos:
                        raise DimensionError("no demos under data/", f)
                    first = _group(data, demos[0], f)
                    obs = _group(first, "obs", f, demos[0])
                    first_keys, skipped = _default_keys(obs)
                    if skipped and not state_keys:
                        notes.append(f"obs keys not in the state (rank > 2): {skipped}")
                    robot_type = _robot_type(data)
                total = data.attrs.get("total")
                declared = declared + int(total) if total is not None and declared >= 0 else -1
        self.state_keys = state_keys or first_keys or []
        if not self.state_keys:
            raise ColumnError("no numeric obs keys to form observation.state", self.files[0])
        rates = {r for r in self.file_fps.values() if r is not None}
        if len(rates) > 1:
            detail = ", ".join(f"{p.name}: {r:g}" for p, r in self.file_fps.items() if r)
            raise FpsError(f"files declare different frame rates ({detail}) (mixed fps)", path)
        dataset_fps = rates.pop() if rates else fps
        if dataset_fps is None:
            raise FpsError("no fps attribute in the file; give the rate with --fps", self.files[0])
        if fps is not None and rates and fps != dataset_fps:
            notes.append(f"--fps {fps:g} ignored: the file declares {dataset_fps:g}")
        self.fps = float(dataset_fps)
        self.info = DatasetInfo(
            name=path.stem if path.is_file() else path.name,
            source_format="hdf5-robomimic",
            fps=self.fps,
            robot_type=robot_type,
            state_names=[],
            action_names=[],
            declared_frames=declared if declared > 0 else None,
            notes=notes,
        )

    def episodes(self) -> Iterator[Episode]:
        for f in self.files:
            with _open(f) as h:
                data = _group(h, "data", f)
                for demo in demo_names(data):
                    yield self._demo(f, data, demo)

    def _demo(self, f: Path, data: h5py.Group, demo: str) -> Episode:
        g = _group(data, demo, f)
        source = f"{f}:data/{demo}"
        m = _DEMO.match(demo)
        index = int(m.group(1)) if m else None
        try:
            obs = _group(g, "obs", f, demo)
            parts = []
            for key in self.state_keys:
                if key not in obs:
                    raise ColumnError(
                        f"obs key {key!r} missing (obs: {sorted(obs)})", source, index
                    )
                arr = np.asarray(obs[key][()])
                if arr.ndim == 1:
                    arr = arr[:, None]
                if arr.ndim != 2:
                    raise DimensionError(
                        f"obs/{key} has shape {arr.shape}, not [N, d]", source, index
                    )
                parts.append(arr.astype(np.float32, copy=False))
            if "actions" not in g:
                raise ColumnError("no 'actions' dataset", source, index)
            action = np.asarray(g["actions"][()])
            if action.ndim == 1:
                action = action[:, None]
            n = action.shape[0]
            for key, p in zip(self.state_keys, parts, strict=True):
                if p.shape[0] != n:
                    raise DimensionError(
                        f"obs/{key} has {p.shape[0]} frames, actions has {n}", source, index
                    )
            state = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)
            if not self.info.state_names:
                self.info.state_names = [
                    k if p.shape[1] == 1 else f"{k}[{i}]"
                    for k, p in zip(self.state_keys, parts, strict=True)
                    for i in range(p.shape[1])
                ]
            if "timestamps" in g:
                ts = np.asarray(g["timestamps"][()], dtype=np.float64).reshape(-1)
            else:
                ts = np.arange(n, dtype=np.float64) / self.fps
            reward = np.asarray(g["rewards"][()]).reshape(-1) if "rewards" in g else None
            done = np.asarray(g["dones"][()]).reshape(-1).astype(bool) if "dones" in g else None
            declared = g.attrs.get("num_samples")
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise CorruptFileError(f"cannot read ({e})", source, index) from e
        if declared is not None and int(declared) != n:
            raise DimensionError(
                f"num_samples says {int(declared)} frames, actions has {n}", source, index
            )
        if reward is not None and reward.shape[0] != n:
            reward = None
        if done is not None and done.shape[0] != n:
            done = None
        return make_episode(
            ts,
            "s",
            state,
            action,
            source=source,
            episode=index if index is not None else 0,
            task_index=int(g.attrs.get("task_index", 0)),
            reward=reward,
            done=done,
        )


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError as e:
        raise MissingFileError("missing", path) from e
    except OSError as e:
        raise CorruptFileError(f"not a readable HDF5 file ({e})", path) from e


def _group(parent: h5py.Group, name: str, f: Path, demo: str | None = None) -> h5py.Group:
    try:
        g = parent[name]
    except (KeyError, OSError) as e:
        where = f"{f}:{parent.name.strip('/')}/{name}".replace(":/", ":")
        raise CorruptFileError(f"no group {name!r} ({e})", where) from e
    if not isinstance(g, h5py.Group):
        raise CorruptFileError(f"{name!r} is not a group", f)
    return g


def _default_keys(obs: h5py.Group) -> tuple[list[str], list[str]]:
    keys, skipped = [], []
    for k in sorted(obs.keys()):
        d = obs[k]
        if not isinstance(d, h5py.Dataset) or d.dtype.kind not in "fiub":
            skipped.append(k)
        elif d.ndim in (1, 2):
            keys.append(k)
        else:
            skipped.append(k)
    return keys, skipped


def _attr_fps(h: h5py.File, data: h5py.Group) -> float | None:
    for obj in (data, h):
        if "fps" in obj.attrs:
            return float(obj.attrs["fps"])
    env = data.attrs.get("env_args")
    if env is not None:
        try:
            kwargs = json.loads(env).get("env_kwargs", {})
            if "control_freq" in kwargs:
                return float(kwargs["control_freq"])
        except (ValueError, AttributeError, TypeError):
            return None
    return None


def _robot_type(data: h5py.Group) -> str:
    if "robot_type" in data.attrs:
        return str(data.attrs["robot_type"])
    env = data.attrs.get("env_args")
    if env is not None:
        try:
            args: dict[str, Any] = json.loads(env)
            robots = args.get("env_kwargs", {}).get("robots")
            if robots:
                return str(robots if isinstance(robots, str) else robots[0])
            return str(args.get("env_name", "unknown"))
        except (ValueError, AttributeError, TypeError):
            pass
    return "unknown"


def open_reader(path: Path, **options: Any) -> HDF5Reader:
    if not (path.is_dir() or path.is_file()):
        raise EnrollError("does not exist", path)
    return HDF5Reader(path, **options)
