"""Where the demo's robot data comes from, and how it is split into sites.

The demo needs one embodiment for a FedAvg of one model, so it takes one real
recording (the Unitree G1 humanoid, LeRobot v2.1, 100 episodes, one Parquet
file per episode) and gives each site a contiguous range of its episodes:
different recording sessions, i.e. a non-IID split by session / operator.
Each range is written as a LeRobot v2.1 folder of its own, which the site
then *enrolls* with the connector's reader, exactly as a holder would.

A LeRobot v3.0 recording (``--data``; many episodes per file) is split the same
way: its episodes' rows are written out as v2.1 files, one per episode.

Search order for the recording: ``$DATASPACE_DEMO_DATA``; ``../shared/data``
beside the repository (tests and CI have it); the small sample shipped in the
package (``dataspace/data/unitree-g1-sample``, a few real episodes) so that
``./dev demo`` works from any fresh clone.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dataspace.connectors.reader import CorruptFileError, path_template
from dataspace.errors import NotFoundError

RECORDING = "unitree-g1-lerobot-v2.1"
V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "unitree-g1-sample"
_REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Source:
    """A LeRobot v2.1 recording the demo splits into sites."""

    path: Path
    episodes: int
    bundled: bool  # True: the small sample shipped in the package


def find_source(explicit: Path | None = None) -> Source:
    """The recording to split (module docstring gives the search order)."""
    candidates: list[tuple[Path, bool]] = []
    if explicit is not None:
        candidates.append((Path(explicit), False))
    elif os.environ.get("DATASPACE_DEMO_DATA"):
        candidates.append((Path(os.environ["DATASPACE_DEMO_DATA"]), False))
    else:
        candidates += [
            (_REPO.parent / "shared" / "data" / RECORDING, False),
            (SAMPLE, True),
        ]
    for path, bundled in candidates:
        info = path / "meta" / "info.json"
        if info.exists():
            n = _info(path).get("total_episodes")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise CorruptFileError(f"total_episodes must be a count, not {n!r}", info)
            return Source(path, n, bundled or path.resolve() == SAMPLE)
    raise NotFoundError(
        "no robot recording found: looked in "
        + ", ".join(str(p) for p, _ in candidates)
        + " (a LeRobot v2.1 folder with meta/info.json)"
    )


def episode_ranges(n_episodes: int, sites: int, per_site: int | None = None) -> list[range]:
    """``sites`` contiguous, disjoint ranges; each at most ``per_site`` episodes long.

    With ``per_site`` the ranges are spread over the whole recording (early,
    middle and late sessions) rather than packed at its start.
    """
    if sites < 1 or n_episodes < sites:
        raise NotFoundError(f"{n_episodes} episodes cannot be split over {sites} sites")
    bounds = np.linspace(0, n_episodes, sites + 1).round().astype(int)
    out = []
    for i in range(sites):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if per_site is not None:
            hi = min(hi, lo + per_site)
        out.append(range(lo, hi))
    return out


def _info(src: Path) -> dict:
    """``meta/info.json`` of a LeRobot folder, as an object (else a typed error)."""
    path = src / "meta" / "info.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise CorruptFileError(f"not readable JSON ({e})", path) from e
    if not isinstance(info, dict):
        raise CorruptFileError("not a JSON object", path)
    return info


def _is_v3(src: Path, info: dict) -> bool:
    version = str(info.get("codebase_version", ""))
    return version.startswith("v3") or (
        not version.startswith("v2") and (src / "meta" / "episodes").is_dir()
    )


def _v3_tables(src: Path, episodes: range) -> dict[int, pa.Table]:
    """The rows of each wanted episode of a v3.0 folder (many episodes per data file)."""
    wanted = set(episodes)
    out: dict[int, list[pa.Table]] = {}
    files = sorted((src / "data").glob("chunk-*/*.parquet"))
    if not files:
        raise CorruptFileError("no data/chunk-*/*.parquet files (LeRobot v3.0)", src)
    for f in files:
        try:
            t = pq.read_table(f)
        except (pa.ArrowException, OSError) as e:
            raise CorruptFileError(f"not a readable Parquet file ({e})", f) from e
        if "episode_index" not in t.column_names:
            raise CorruptFileError("no episode_index column", f)
        eps = t["episode_index"]
        for old in sorted(wanted & set(pc.unique(eps).to_pylist())):
            out.setdefault(old, []).append(t.filter(pc.equal(eps, old)))
    missing = sorted(wanted - set(out))
    if missing:
        raise CorruptFileError(f"episodes {missing[:10]} have no rows in the data files", src)
    return {ep: pa.concat_tables(parts) for ep, parts in out.items()}


def _v3_tasks(src: Path) -> list[dict]:
    path = src / "meta" / "tasks.parquet"
    if not path.exists():
        return []
    t = pq.read_table(path)
    name = next((c for c in ("task", "__index_level_0__") if c in t.column_names), None)
    if name is None or "task_index" not in t.column_names:
        return []
    pairs = zip(t["task_index"].to_pylist(), t[name].to_pylist(), strict=True)
    return [{"task_index": i, "task": str(n)} for i, n in sorted(pairs, key=lambda p: p[0])]


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def export_range(src: Path, dst: Path, episodes: range, compression: str = "zstd") -> Path:
    """Write episodes ``episodes`` of the LeRobot folder ``src`` (v2.1, or v3.0) as a
    v2.1 folder at ``dst``.

    Episodes are renumbered from 0 (``episode_index`` and the global ``index``
    rewritten); every other column and the metadata are kept. Idempotent: an
    existing complete ``dst`` is left as it is (written to a temporary folder,
    then renamed, so a half export is never seen).
    """
    if (dst / "meta" / "info.json").exists():
        return dst
    info = _info(src)
    v3 = _is_v3(src, info)
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "meta").mkdir(parents=True)
    chunk = info.get("chunks_size", 1000)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise CorruptFileError(f"chunks_size must be a positive integer, not {chunk!r}", src)
    # a v3.0 folder is written out in the v2.1 layout (one file per episode)
    data_path = V2_DATA_PATH if v3 else (info.get("data_path") or V2_DATA_PATH)
    fields = {"episode_chunk": int, "episode_index": int}
    path_template(data_path, fields, "data_path", src / "meta" / "info.json")
    tables = _v3_tables(src, episodes) if v3 else {}
    lengths: list[int] = []
    frames = 0
    for new, old in enumerate(episodes):
        if v3:
            t = tables.pop(old)
        else:
            rel = data_path.format(episode_chunk=old // chunk, episode_index=old)
            try:
                t = pq.read_table(src / rel)
            except (pa.ArrowException, OSError) as e:
                raise CorruptFileError(f"not a readable Parquet file ({e})", src / rel) from e
        n = t.num_rows
        lengths.append(n)
        t = t.set_column(
            t.schema.get_field_index("episode_index"),
            "episode_index",
            pa.array(np.full(n, new, np.int64)),
        )
        if "index" in t.column_names:
            t = t.set_column(
                t.schema.get_field_index("index"),
                "index",
                pa.array(np.arange(frames, frames + n, dtype=np.int64)),
            )
        out = tmp / data_path.format(episode_chunk=new // chunk, episode_index=new)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out, compression=compression)
        frames += n
    meta = src / "meta"
    keep = set(episodes)
    if v3:
        tasks = _v3_tasks(src)
        _write_jsonl(tmp / "meta" / "tasks.jsonl", tasks)
        names = [t["task"] for t in tasks[:1]]
        _write_jsonl(
            tmp / "meta" / "episodes.jsonl",
            [{"episode_index": i, "tasks": names, "length": n} for i, n in enumerate(lengths)],
        )
        info.update(codebase_version="v2.1", data_path=data_path, video_path=None)
        for key in ("data_files_size_in_mb", "video_files_size_in_mb"):
            info.pop(key, None)
    for name in ("episodes.jsonl", "episodes_stats.jsonl") if not v3 else ():
        rows = [r for r in _jsonl(meta / name) if r["episode_index"] in keep]
        rows.sort(key=lambda r: r["episode_index"])
        for new, r in enumerate(rows):
            r["episode_index"] = new
        if (meta / name).exists():
            _write_jsonl(tmp / "meta" / name, rows)
    if not v3 and (meta / "tasks.jsonl").exists():
        shutil.copy(meta / "tasks.jsonl", tmp / "meta" / "tasks.jsonl")
    if (src / "LICENSE").exists():
        shutil.copy(src / "LICENSE", tmp / "LICENSE")
    info.update(
        total_episodes=len(episodes),
        total_frames=frames,
        total_videos=0,
        total_chunks=max(1, (len(episodes) + chunk - 1) // chunk),
        splits={"train": f"0:{len(episodes)}"},
    )
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst
