"""robomimic-style HDF5: ``data/demo_N/{obs/<keys>, actions, rewards, dones}``.

A path is one ``.h5``/``.hdf5`` file or a folder of them (sorted by name).
Demos are read in numeric order (``demo_2`` before ``demo_10``), one at a time.

* ``observation.state`` is the concatenation, in the order given, of the obs
  keys in ``state_keys`` (a comma list); by default every numeric obs key of
  rank 1 or 2 in sorted order (images, of rank 3+, and keys of other types are
  skipped with a note).
* ``action`` is ``actions``; ``rewards`` and ``dones`` are kept when present.
* Timestamps: a ``timestamps`` dataset in the demo (seconds; our extension,
  robomimic has none) or else ``frame / fps``.
* fps: an ``fps`` attribute on ``data`` or on the file (or robomimic's
  ``env_args.env_kwargs.control_freq``); else the ``fps`` option; else an
  error. Files that declare different rates are an error (mixed fps).

A file is the holder's, but it may be crafted (issue 14), so nothing in it is
taken on trust:

* only hard links and soft links inside the file are followed (a soft-link loop
  is an error); an **external link**, **external raw storage** or a **virtual
  dataset** -- all of which read other files -- is refused (:class:`OutsideFolderError`);
* every dataset read must hold numbers (integer, float or bool): complex, text,
  object, compound and array types are refused (:class:`DtypeError`), never cast;
* nothing is allocated from a declared size alone: a dataset's declared bytes
  must be stored in the file (at most :data:`MAX_FILTER_RATIO` times its stored
  bytes when compressed, the most deflate achieves), its chunks at most
  :data:`MAX_CHUNK_BYTES`, its shape checked (rank, frames, dimensions, the
  episode's values) before any read (:class:`SizeLimitError`);
* attributes (``fps``, ``total``, ``num_samples``, ``task_index``) must be numbers
  of the right kind, one value each.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dataspace.connectors.reader import (
    MAX_DIM,
    MAX_EPISODE_VALUES,
    ColumnError,
    CorruptFileError,
    DimensionError,
    DtypeError,
    EnrollError,
    FpsError,
    MissingFileError,
    OutsideFolderError,
    SizeLimitError,
    make_episode,
    meta_fps,
    meta_int,
    walk_files,
)
from dataspace.schema import DatasetInfo, Episode

FORMAT = "hdf5"
OPTIONS = ("state_keys", "fps")
_DEMO = re.compile(r"^demo_([0-9]{1,18})$")

#: a compressed dataset may declare at most this many times its stored bytes
#: (deflate's ceiling is about 1032:1); beyond it the file holds fill values, not data
MAX_FILTER_RATIO = 1100
#: bytes of one chunk (HDF5 allocates a whole chunk to read any of it)
MAX_CHUNK_BYTES = 64 << 20
#: bytes of one attribute read
MAX_ATTR_BYTES = 1 << 20
#: soft links followed to resolve one name (HDF5's own limit is 16)
MAX_HOPS = 16
#: what h5py raises for a malformed file or object
_H5_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError)


def link_names(group: h5py.Group, where: Path | str | None = None) -> list[str]:
    """The link names in ``group`` (a corrupt link table is a CorruptFileError)."""
    try:
        names = list(group.keys())
    except _H5_ERRORS as e:
        raise CorruptFileError(
            f"cannot list {group.name} ({_msg(e)})", where or group.file.filename
        ) from e
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise CorruptFileError(
            f"link name {bad[0]!r} in {group.name} is not UTF-8 text",
            where or group.file.filename,
        )
    return names


def demo_names(data: h5py.Group) -> list[str]:
    """``demo_N`` groups sorted by N; other names after them, sorted."""
    names = link_names(data)
    numbered = sorted((int(m.group(1)), n) for n in names if (m := _DEMO.match(n)))
    others = sorted(n for n in names if not _DEMO.match(n))
    return [n for _, n in numbered] + others


class _File:
    """An open HDF5 file whose objects are reached only through checked links."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.size = path.stat().st_size
        except OSError as e:
            raise MissingFileError(f"cannot stat ({e})", path) from e
        self.h = _open(path)

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.h.close()

    def get(self, path: str, episode: int | None = None) -> h5py.Group | h5py.Dataset:
        """The object at absolute ``path``, following hard links, and soft links that
        stay in this file; external and user-defined links are refused."""
        where = f"{self.path}:{path.strip('/')}"
        parts = [p for p in path.split("/") if p not in ("", ".")]
        cur = "/"  # a path of hard links only, to a group
        hops = 0
        while parts:
            name = parts.pop(0)
            try:
                group = self.h[cur]
                if not isinstance(group, h5py.Group):
                    raise CorruptFileError(f"{cur} is not a group", where, episode)
                link = group.get(name, getlink=True)
            except _H5_ERRORS as e:
                raise CorruptFileError(f"cannot resolve ({_msg(e)})", where, episode) from e
            if link is None:
                raise CorruptFileError(f"no object {name!r} in {cur}", where, episode)
            if isinstance(link, h5py.ExternalLink):
                raise OutsideFolderError(
                    f"{_join(cur, name)} is an HDF5 external link to {link.filename}:"
                    f"{link.path}; links to other files are refused",
                    where,
                    episode,
                )
            if isinstance(link, h5py.SoftLink):
                hops += 1
                if hops > MAX_HOPS:
                    raise CorruptFileError(
                        f"more than {MAX_HOPS} soft links to follow (a soft-link loop?)",
                        where,
                        episode,
                    )
                target = str(link.path)
                if target.startswith("/"):
                    cur = "/"
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            if not isinstance(link, h5py.HardLink):
                raise OutsideFolderError(
                    f"{_join(cur, name)} is a user-defined link; refused", where, episode
                )
            cur = _join(cur, name)
        try:
            return self.h[cur]
        except _H5_ERRORS as e:
            raise CorruptFileError(f"cannot open ({_msg(e)})", where, episode) from e

    def group(self, path: str, episode: int | None = None) -> h5py.Group:
        g = self.get(path, episode)
        if not isinstance(g, h5py.Group):
            raise CorruptFileError("is not a group", f"{self.path}:{path.strip('/')}", episode)
        return g

    def dataset(self, path: str, episode: int | None = None) -> h5py.Dataset:
        d = self.get(path, episode)
        if not isinstance(d, h5py.Dataset):
            raise CorruptFileError("is not a dataset", f"{self.path}:{path.strip('/')}", episode)
        return d

    def exists(self, path: str) -> bool:
        """Whether a link named ``path``'s last part is in its (resolved) parent group."""
        parent, _, name = path.rstrip("/").rpartition("/")
        g = self.group(parent or "/")
        try:
            return g.get(name, getlink=True) is not None
        except _H5_ERRORS:
            return False

    def checked(self, d: h5py.Dataset, where: str, episode: int | None) -> tuple[int, ...]:
        """The shape of ``d`` once its type, storage and declared size are checked."""
        try:
            dtype, shape = d.dtype, tuple(int(x) for x in d.shape)
            plist = d.id.get_create_plist()
            external = plist.get_external_count()
            layout = plist.get_layout()
            filtered = plist.get_nfilters() > 0
            chunks = d.chunks
            stored = int(d.id.get_storage_size())
        except _H5_ERRORS as e:
            raise CorruptFileError(f"cannot read its header ({_msg(e)})", where, episode) from e
        if external:
            raise OutsideFolderError(
                "keeps its raw data in external files (HDF5 external storage); refused",
                where,
                episode,
            )
        if layout == h5py.h5d.VIRTUAL:
            raise OutsideFolderError(
                "is a virtual dataset (it maps other files); refused", where, episode
            )
        if dtype.kind not in "fiub" or dtype.subdtype is not None or dtype.fields is not None:
            raise DtypeError(
                f"has type {_dtype(d)}; only integers, floats and booleans are read", where, episode
            )
        itemsize = dtype.itemsize
        declared = math.prod(shape) * itemsize
        if chunks is not None and math.prod(chunks) * itemsize > MAX_CHUNK_BYTES:
            raise SizeLimitError(
                f"chunks of {chunks} ({math.prod(chunks) * itemsize} bytes) exceed "
                f"{MAX_CHUNK_BYTES} bytes",
                where,
                episode,
            )
        if stored > self.size:
            raise SizeLimitError(
                f"declares {stored} bytes of storage in a file of {self.size} bytes",
                where,
                episode,
            )
        allowed = stored * (MAX_FILTER_RATIO if filtered else 1)
        if declared > allowed:
            raise SizeLimitError(
                f"declares shape {shape} of {dtype} ({declared} bytes) but the file stores "
                f"{stored} bytes of it{' (compressed)' if filtered else ''}",
                where,
                episode,
            )
        return shape

    def read(self, d: h5py.Dataset, where: str, episode: int | None) -> np.ndarray:
        """``d``'s values (after :meth:`checked`)."""
        try:
            return np.asarray(d[()])
        except _H5_ERRORS as e:
            raise CorruptFileError(f"cannot read ({_msg(e)})", where, episode) from e

    def attr(self, obj: h5py.HLObject, name: str, where: str, episode: int | None = None) -> Any:
        """Attribute ``name`` of ``obj`` (None when absent), its size checked first."""
        try:
            if name not in obj.attrs:
                return None
            aid = h5py.h5a.open(obj.id, name.encode())
            size = int(aid.get_storage_size())
            if size > MAX_ATTR_BYTES:
                raise SizeLimitError(
                    f"attribute {name!r} holds {size} bytes (at most {MAX_ATTR_BYTES})",
                    where,
                    episode,
                )
            value = obj.attrs[name]
        except _H5_ERRORS as e:
            raise CorruptFileError(
                f"cannot read attribute {name!r} ({_msg(e)})", where, episode
            ) from e
        if isinstance(value, np.ndarray) and value.shape in ((), (1,)) and value.dtype.kind != "O":
            value = value.reshape(()).item()
        return value


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
        fps = meta_fps(fps, path, "--fps")
        self.option_fps = fps
        self.file_fps: dict[Path, float | None] = {}
        notes: list[str] = []
        robot_type = "unknown"
        declared: int | None = 0
        first_keys: list[str] | None = None
        for f in self.files:
            with _File(f) as h5:
                data = h5.group("/data")
                self.file_fps[f] = _attr_fps(h5, data, f)
                if first_keys is None:
                    demos = demo_names(data)
                    if not demos:
                        raise DimensionError("no demos under data/", f)
                    obs = h5.group(f"/data/{demos[0]}/obs")
                    first_keys, skipped = _default_keys(h5, obs, f"/data/{demos[0]}/obs")
                    if skipped and not state_keys:
                        notes.append(f"obs keys not in the state: {skipped}")
                    robot_type = _robot_type(h5, data, f)
                total = h5.attr(data, "total", f"{f}:data")
                if total is None or declared is None:
                    declared = None
                else:
                    declared += meta_int(total, "attribute 'total'", f"{f}:data")
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
            declared_frames=declared if declared else None,
            notes=notes,
        )

    def episodes(self) -> Iterator[Episode]:
        for f in self.files:
            with _File(f) as h5:
                data = h5.group("/data")
                for demo in demo_names(data):
                    yield self._demo(h5, demo)

    def _demo(self, h5: _File, demo: str) -> Episode:
        f = h5.path
        base = f"/data/{demo}"
        source = f"{f}:data/{demo}"
        m = _DEMO.match(demo)
        index = int(m.group(1)) if m else None
        g = h5.group(base, index)

        def where(name: str) -> str:
            return f"{source}/{name}"

        # shapes first: nothing is read until every part is known to fit
        if not h5.exists(f"{base}/actions"):
            raise ColumnError("no 'actions' dataset", source, index)
        actions = h5.dataset(f"{base}/actions", index)
        a_shape = _vector_shape(
            h5.checked(actions, where("actions"), index), where("actions"), index
        )
        n = a_shape[0]
        h5.group(f"{base}/obs", index)
        obs_sets = []
        for key in self.state_keys:
            if not h5.exists(f"{base}/obs/{key}"):
                obs = h5.group(f"{base}/obs", index)
                have = sorted(link_names(obs, source))
                raise ColumnError(f"obs key {key!r} missing (obs: {have})", source, index)
            d = h5.dataset(f"{base}/obs/{key}", index)
            shape = h5.checked(d, where(f"obs/{key}"), index)
            if len(shape) not in (1, 2):
                raise DimensionError(f"obs/{key} has shape {shape}, not [N, d]", source, index)
            shape = _vector_shape(shape, where(f"obs/{key}"), index)
            if shape[0] != n:
                raise DimensionError(
                    f"obs/{key} has {shape[0]} frames, actions has {n}", source, index
                )
            obs_sets.append((key, d, shape))
        state_dim = sum(s[1] for _, _, s in obs_sets)
        if state_dim > MAX_DIM:
            raise SizeLimitError(f"state has {state_dim} values per frame", source, index)
        if n * (state_dim + a_shape[1] + 3) > MAX_EPISODE_VALUES:
            raise SizeLimitError(
                f"{n} frames of {state_dim} + {a_shape[1]} values: more than "
                f"{MAX_EPISODE_VALUES} values in one episode",
                source,
                index,
            )
        extras: dict[str, h5py.Dataset] = {}
        for name in ("timestamps", "rewards", "dones"):
            if h5.exists(f"{base}/{name}"):
                d = h5.dataset(f"{base}/{name}", index)
                shape = h5.checked(d, where(name), index)
                if math.prod(shape) == n:
                    extras[name] = d
                elif name == "timestamps":
                    raise DimensionError(
                        f"timestamps has shape {shape}, actions has {n} frames", source, index
                    )
                # rewards/dones of another length are left out, as before

        parts = []
        for key, d, _shape in obs_sets:
            arr = h5.read(d, where(f"obs/{key}"), index)
            parts.append(arr.reshape(n, _shape[1]).astype(np.float32, copy=False))
        action = h5.read(actions, where("actions"), index).reshape(a_shape)
        state = np.concatenate(parts, axis=1) if parts else np.zeros((n, 0), np.float32)
        if not self.info.state_names:
            self.info.state_names = [
                k if p.shape[1] == 1 else f"{k}[{i}]"
                for k, p in zip(self.state_keys, parts, strict=True)
                for i in range(p.shape[1])
            ]
        if "timestamps" in extras:
            ts = h5.read(extras["timestamps"], where("timestamps"), index)
            ts = ts.astype(np.float64).reshape(-1)
        else:
            ts = np.arange(n, dtype=np.float64) / self.fps
        reward = done = None
        if "rewards" in extras:
            reward = h5.read(extras["rewards"], where("rewards"), index).reshape(-1)
        if "dones" in extras:
            done = h5.read(extras["dones"], where("dones"), index).reshape(-1).astype(bool)
        declared = h5.attr(g, "num_samples", source, index)
        if declared is not None:
            declared = meta_int(declared, "attribute 'num_samples'", source, episode=index)
            if declared != n:
                raise DimensionError(
                    f"num_samples says {declared} frames, actions has {n}", source, index
                )
        task = h5.attr(g, "task_index", source, index)
        task_index = (
            0 if task is None else meta_int(task, "attribute 'task_index'", source, episode=index)
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
            task_index=task_index,
            reward=reward,
            done=done,
        )


def _vector_shape(shape: tuple[int, ...], where: str, episode: int | None) -> tuple[int, int]:
    """``[N]`` or ``[N, d]`` as ``(N, d)``, with ``d <= MAX_DIM``."""
    if len(shape) == 1:
        return shape[0], 1
    if len(shape) != 2:
        raise DimensionError(f"has shape {shape}, not [N] or [N, d]", where, episode)
    if shape[1] > MAX_DIM:
        raise SizeLimitError(f"has {shape[1]} values per frame (at most {MAX_DIM})", where, episode)
    return shape[0], shape[1]


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError as e:
        raise MissingFileError("missing", path) from e
    except _H5_ERRORS as e:
        raise CorruptFileError(f"not a readable HDF5 file ({_msg(e)})", path) from e


def _default_keys(h5: _File, obs: h5py.Group, base: str) -> tuple[list[str], list[str]]:
    """Obs keys holding numbers of rank 1 or 2; the others (images, text) are skipped."""
    keys, skipped = [], []
    for k in sorted(link_names(obs, f"{h5.path}:{base}")):
        d = h5.get(f"{base}/{k}")
        if not isinstance(d, h5py.Dataset):
            skipped.append(k)
            continue
        try:
            kind, ndim, typed = d.dtype.kind, d.ndim, d.dtype.subdtype or d.dtype.fields
        except _H5_ERRORS as e:
            raise CorruptFileError(
                f"cannot read its header ({_msg(e)})", f"{h5.path}:{base}/{k}"
            ) from e
        if kind in "fiub" and not typed and ndim in (1, 2):
            keys.append(k)
        else:
            skipped.append(k)
    return keys, skipped


def _attr_fps(h5: _File, data: h5py.Group, f: Path) -> float | None:
    for obj, where in ((data, f"{f}:data"), (h5.h, str(f))):
        value = h5.attr(obj, "fps", where)
        if value is not None:
            return meta_fps(value, where, "attribute 'fps'")
    env = _env_args(h5, data, f)
    if env is not None:
        kwargs = env.get("env_kwargs")
        if isinstance(kwargs, dict) and "control_freq" in kwargs:
            return meta_fps(kwargs["control_freq"], f"{f}:data", "env_args control_freq")
    return None


def _env_args(h5: _File, data: h5py.Group, f: Path) -> dict[str, Any] | None:
    """robomimic's ``env_args`` attribute (a JSON object), or None if absent or not JSON."""
    env = _text(h5.attr(data, "env_args", f"{f}:data"))
    if env is None:
        return None
    try:
        args = json.loads(env)
    except (ValueError, RecursionError):
        return None
    return args if isinstance(args, dict) else None


def _robot_type(h5: _File, data: h5py.Group, f: Path) -> str:
    robot = _text(h5.attr(data, "robot_type", f"{f}:data"))
    if robot:
        return robot[:200]
    args = _env_args(h5, data, f)
    if args is not None:
        kwargs = args.get("env_kwargs")
        robots = kwargs.get("robots") if isinstance(kwargs, dict) else None
        if isinstance(robots, list) and robots:
            robots = robots[0]
        if isinstance(robots, str) and robots:
            return robots[:200]
        name = args.get("env_name")
        return name[:200] if isinstance(name, str) and name else "unknown"
    return "unknown"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return None


def _join(group: str, name: str) -> str:
    return f"{group.rstrip('/')}/{name}"


def _dtype(d: h5py.Dataset) -> str:
    dt = d.dtype
    check = h5py.check_string_dtype(dt)
    if check is not None:
        return "string"
    if dt.kind == "c":
        return f"{dt} (complex)"
    if dt.fields is not None:
        return "compound"
    if dt.kind == "O":
        return "object (variable-length or reference)"
    return str(dt)


def _msg(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def open_reader(path: Path, **options: Any) -> HDF5Reader:
    if not (path.is_dir() or path.is_file()):
        raise EnrollError("does not exist", path)
    return HDF5Reader(path, **options)
