"""A run directory on the hub's host: where a consumer's run may write, and what it may read.

On the hub, every run a consumer submits writes under one folder, ``RUNS/<run-id>``
(``dataspace serve hub-worker --runs-dir RUNS``), whatever its run config says: a
consumer chooses a run's id, never a path on the hub's host. The hub service serves
that folder's files back to the run's consumer (``dataspace serve hub --runs-dir
RUNS``, the same folder), and nothing else in it:

=====================================  =========================================
``history.json``, ``stats.json``       the run's history and round-0 statistics
``rounds/NNN/round.json``              one completed round
``rounds/NNN/global.npz``              the global model after round NNN
``rounds/NNN/updates/<dataset>.npz``   each site's (DP) update of round NNN
=====================================  =========================================

The hub writes ``registration.json`` into the folder when a run is registered
(``POST /v1/runs``: its consumer and contracts, checked there); the hub worker runs
only a run whose id and contracts match a registration (:func:`confine`), so a run
submitted straight to the SuperLink, bypassing the hub, or reusing another
consumer's run id, never runs.

Files are opened one path component at a time from the runs folder with
``O_NOFOLLOW`` (:func:`read_run_file`): a symlink anywhere below it is refused, not
followed, and nothing outside it can be named.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dataspace.errors import DataspaceError, NotFoundError, RefusedError

#: a run id that names a folder: letters, digits, ``.``, ``_``, ``-``; not ``.`` or ``..``
RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: a dataset id that names an update file (``rounds/NNN/updates/<dataset>.npz``)
DATASET_FILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
#: the run files a consumer may download (paths relative to the run's folder)
RUN_FILE = re.compile(
    r"history\.json|stats\.json|rounds/[0-9]{3,7}/(?:round\.json|global\.npz)"
    r"|rounds/[0-9]{3,7}/updates/[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}\.npz"
)
#: written by the hub when a run is registered; read by the hub worker
REGISTRATION = "registration.json"
#: the largest run file the hub serves (the bc-mlp model is ~100 kB; a long history ~MBs)
MAX_RUN_FILE = 64 * 1024 * 1024


class RunDirError(DataspaceError):
    """A run id or run file name that does not name a place in the runs folder."""

    code = "run_file"


class RunNotRegisteredError(RefusedError):
    """A run the hub never registered, or whose contracts differ from its registration."""

    code = "run_not_registered"


class RunFileRefusedError(RefusedError):
    """A run file that is a symlink, not a regular file, or over the size limit."""

    code = "run_file_refused"


def check_run_id(run_id: str) -> str:
    """``run_id`` if it names one folder (``[A-Za-z0-9._-]{1,64}``, not ``.``/``..``)."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or set(run_id) == {"."}:
        raise RunDirError(
            f"run id {run_id!r} is not a valid run id: 1 to 64 letters, digits, '.', '_' "
            "or '-', and not '.' or '..'"
        )
    return run_id


def safe_dataset_file(dataset_id: str) -> bool:
    """Whether ``dataset_id`` can name an update file (no separator, no leading dot)."""
    return isinstance(dataset_id, str) and DATASET_FILE.fullmatch(dataset_id) is not None


def check_run_file(rel: str) -> list[str]:
    """The path components of an allowed run file name (module docstring), else refused."""
    if not isinstance(rel, str) or not RUN_FILE.fullmatch(rel):
        raise RunDirError(
            f"{rel!r} is not a run file: only history.json, stats.json, "
            "rounds/NNN/round.json, rounds/NNN/global.npz and rounds/NNN/updates/<dataset>.npz"
        )
    return rel.split("/")


def run_files(history: Mapping[str, Any]) -> list[str]:
    """The files a run directory holds for ``history``: what a consumer downloads."""
    # round 0 (the statistics) writes stats.json and the initial model
    names = ["stats.json", "rounds/000/global.npz"] if history.get("stats") else []
    secagg = bool(history.get("spec", {}).get("secagg"))
    for r in history.get("rounds", []):
        rnd = int(r["round"])
        names += [f"rounds/{rnd:03d}/round.json", f"rounds/{rnd:03d}/global.npz"]
        if not secagg:  # under SecAgg+ no single site's update is kept
            names += [
                f"rounds/{rnd:03d}/updates/{s['dataset-id']}.npz"
                for s in r.get("sites", [])
                if safe_dataset_file(s.get("dataset-id", ""))
            ]
    return names


def last_round(history: Mapping[str, Any]) -> int | None:
    """The last completed round of ``history`` (None: no round completed)."""
    done = [int(r["round"]) for r in history.get("rounds", [])]
    return max(done) if done else None


# --- opening below the runs folder, never following a link ---------------------------


@contextlib.contextmanager
def _dir_fd(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_below(root: Path, parts: Iterable[str], what: str) -> int:
    """A read-only fd of ``root/parts...``: each component opened with ``O_NOFOLLOW``
    relative to its parent (no symlink is followed, no component swapped in between)."""
    parts = list(parts)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError as e:
        raise NotFoundError(f"{what} does not exist (yet)") from e
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError as e:
                raise NotFoundError(f"{what} does not exist (yet)") from e
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise RunFileRefusedError(
                        f"{what} is refused: a symlink or not a folder"
                    ) from None
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_run_file(
    runs_dir: Path | str, run_id: str, rel: str, max_bytes: int = MAX_RUN_FILE
) -> bytes:
    """The bytes of run file ``rel`` of run ``run_id`` under ``runs_dir``.

    Refused: a run id or name outside the allow-list (:class:`RunDirError`), a symlink
    anywhere below ``runs_dir``, anything but a regular file, and a file over
    ``max_bytes`` (:class:`RunFileRefusedError`); a file not there is a NotFoundError.
    """
    what = f"run file {rel!r} of run {run_id!r}"
    parts = [check_run_id(run_id), *check_run_file(rel)]
    fd = _open_below(Path(runs_dir), parts, what)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunFileRefusedError(f"{what} is not a regular file")
        if st.st_size > max_bytes:
            raise RunFileRefusedError(
                f"{what} has {st.st_size} bytes, over the hub's limit of {max_bytes}"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:  # grew since fstat
            raise RunFileRefusedError(f"{what} is over the hub's limit of {max_bytes} bytes")
        return data
    finally:
        os.close(fd)


def run_folder(runs_dir: Path | str, run_id: str) -> Path:
    """``runs_dir/run_id`` (absolute), made if missing; a symlink there is refused."""
    root = Path(runs_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / check_run_id(run_id)
    with _dir_fd(root) as fd:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder.name, 0o750, dir_fd=fd)
        st = os.stat(folder.name, dir_fd=fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        raise RunFileRefusedError(f"run folder of {run_id!r} is a symlink or not a folder")
    return folder


# --- registration: the hub writes it, the hub worker checks it ------------------------


def write_registration(
    runs_dir: Path | str, run_id: str, consumer: str, contracts: list[str]
) -> None:
    """Record at the run's folder that the hub registered ``run_id`` (see :func:`confine`)."""
    folder = run_folder(runs_dir, run_id)
    body = json.dumps({"run_id": run_id, "consumer": consumer, "contracts": contracts})
    with _dir_fd(folder) as fd:
        tmp = f".{REGISTRATION}.tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640, dir_fd=fd)
        with os.fdopen(out, "w") as f:
            f.write(body)
        os.replace(tmp, REGISTRATION, src_dir_fd=fd, dst_dir_fd=fd)


def read_registration(runs_dir: Path | str, run_id: str) -> dict[str, Any]:
    """The hub's registration of ``run_id``; RunNotRegisteredError when there is none."""
    what = f"run {run_id!r}"
    try:
        fd = _open_below(Path(runs_dir), [check_run_id(run_id), REGISTRATION], what)
    except NotFoundError as e:
        raise RunNotRegisteredError(
            f"run {run_id!r} is not registered at the hub (POST /v1/runs first)"
        ) from e
    with os.fdopen(fd, "rb") as f:
        try:
            reg = json.loads(f.read(1 << 20))
        except ValueError as e:
            raise RunNotRegisteredError(f"the registration of run {run_id!r} is corrupt") from e
    if not isinstance(reg, dict) or reg.get("run_id") != run_id:
        raise RunNotRegisteredError(f"the registration of run {run_id!r} is corrupt")
    return reg


def confine(config: Mapping[str, Any], runs_dir: Path | str) -> dict[str, Any]:
    """A run config as the hub worker runs it: ``out-dir`` forced to ``runs_dir/<run-id>``.

    Refuses (typed errors, the task fails with their message) a run id that names no
    single folder, and a run the hub never registered or registered with other contracts.
    """
    run_id = check_run_id(str(config.get("run-id", "")))
    reg = read_registration(runs_dir, run_id)
    asked = sorted(x for x in str(config.get("contracts", "")).split(",") if x)
    if asked != sorted(map(str, reg.get("contracts", []))):
        raise RunNotRegisteredError(
            f"run {run_id!r} names contracts {asked}, not those registered at the hub"
        )
    return {**config, "out-dir": str(run_folder(runs_dir, run_id))}
