"""Where the demo's robot data comes from, and how it is split into sites.

The demo needs one embodiment for a FedAvg of one model, so it takes one real
recording (the Unitree G1 humanoid, LeRobot v2.1, 100 episodes, one Parquet
file per episode) and gives each site a contiguous range of its episodes:
different recording sessions, i.e. a non-IID split by session / operator.
Each range is written as a LeRobot v2.1 folder of its own, which the site
then *enrolls* with the connector's reader, exactly as a holder would.

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
import pyarrow.parquet as pq

from dataspace.errors import NotFoundError

RECORDING = "unitree-g1-lerobot-v2.1"
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
            n = int(json.loads(info.read_text())["total_episodes"])
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


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def export_range(src: Path, dst: Path, episodes: range, compression: str = "zstd") -> Path:
    """Write episodes ``episodes`` of the v2.1 folder ``src`` as a v2.1 folder at ``dst``.

    Episodes are renumbered from 0 (``episode_index`` and the global ``index``
    rewritten); every other column and the metadata are kept. Idempotent: an
    existing complete ``dst`` is left as it is (written to a temporary folder,
    then renamed, so a half export is never seen).
    """
    if (dst / "meta" / "info.json").exists():
        return dst
    info = json.loads((src / "meta" / "info.json").read_text())
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "meta").mkdir(parents=True)
    chunk = int(info.get("chunks_size", 1000))
    frames = 0
    for new, old in enumerate(episodes):
        rel = info["data_path"].format(episode_chunk=old // chunk, episode_index=old)
        t = pq.read_table(src / rel)
        n = t.num_rows
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
        out = tmp / info["data_path"].format(episode_chunk=new // chunk, episode_index=new)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out, compression=compression)
        frames += n
    meta = src / "meta"
    keep = set(episodes)
    for name in ("episodes.jsonl", "episodes_stats.jsonl"):
        rows = [r for r in _jsonl(meta / name) if r["episode_index"] in keep]
        rows.sort(key=lambda r: r["episode_index"])
        for new, r in enumerate(rows):
            r["episode_index"] = new
        if (meta / name).exists():
            _write_jsonl(tmp / "meta" / name, rows)
    if (meta / "tasks.jsonl").exists():
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
