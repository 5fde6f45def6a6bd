"""Speed of the full quality suite on 10 million generated frames (issue 6).

1. A child process generates a site with one dataset of ``FRAMES`` frames
   (episodes of 500 frames, 14 state + 14 action joints, 30 fps; smooth random
   walks) written through the connectors' FrameWriter, with real episode hashes.
2. Baseline: one DuckDB scan over the canonical Parquet computing the same
   statistics (the per-episode profile SQL, quality/profile.py, which has every
   aggregate and window the checks read) -- ``baseline_s``.
3. Suite: ``run_suites`` -- workspace build, the three GE validations with all
   expectations, flag collection -- ``suite_s``. Measured in a fresh child
   process so ``peak_rss_mb`` is the suite's own peak resident memory.

Last stdout line: {"frames", "ratio" (= suite_s / baseline_s), "peak_rss_mb", ...}.
Targets: ratio <= 3, peak RSS < 2 GB.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAMES = int(os.environ.get("FRAMES", 10_000_000))
EP_LEN = 500
DIMS = 14


def generate(root: Path, frames: int) -> str:
    """Write the dataset in chunks of 200 episodes straight to canonical Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dataspace.schema import (
        Episode,
        dataset_id_for,
        episode_hash,
        fingerprint,
        frame_schema,
    )
    from dataspace.site import create_site, store

    site = create_site(root, org="bench")
    rng = np.random.default_rng(0)
    n_eps = frames // EP_LEN
    hashes = []
    t_us = np.rint(np.arange(EP_LEN) / 30.0 * 1e6).astype(np.int64)
    schema = frame_schema(DIMS, DIMS)
    chunk = 200
    with store.staging(site) as st:
        writer = pq.ParquetWriter(st.directory / "part-00000.parquet", schema)
        for first in range(0, n_eps, chunk):
            k = min(chunk, n_eps - first)
            s = np.cumsum(rng.normal(0, 0.01, (k, EP_LEN, DIMS)), axis=1).astype(np.float32)
            a = s + np.float32(0.001)
            for i in range(k):
                hashes.append(episode_hash(Episode(t_us, s[i], a[i])))
            n = k * EP_LEN
            table = pa.Table.from_arrays(
                [
                    pa.array(np.repeat(np.arange(first, first + k), EP_LEN)),
                    pa.array(np.tile(np.arange(EP_LEN), k)),
                    pa.array(np.tile(t_us / 1e6, k)),
                    pa.FixedSizeListArray.from_arrays(pa.array(s.reshape(-1)), DIMS),
                    pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), DIMS),
                    pa.array(np.zeros(n, dtype=np.int64)),
                    pa.nulls(n, pa.float32()),
                    pa.nulls(n, pa.bool_()),
                    pa.array(np.arange(first * EP_LEN, first * EP_LEN + n)),
                ],
                schema=schema,
            )
            writer.write_table(table, row_group_size=122_880)
            if first % 4000 == 0:
                print(f"generated {first * EP_LEN} frames", file=sys.stderr)
        writer.close()
        fp = fingerprint(hashes).hex()
        did = dataset_id_for(bytes.fromhex(fp))
        row = {
            "dataset_id": did,
            "name": "speed",
            "fingerprint": fp,
            "format": "synthetic",
            "robot_type": "test",
            "fps": 30.0,
            "state_dim": DIMS,
            "action_dim": DIMS,
            "episodes": n_eps,
            "frames": n_eps * EP_LEN,
            "state_names": [str(i) for i in range(DIMS)],
            "action_names": [str(i) for i in range(DIMS)],
            "tasks": ["move"],
            "license": "CC0-1.0",
            "source_path": None,
            "catalog": {},
            "attachments": [],
        }
        table = pa.table(
            {
                "dataset_id": [did] * n_eps,
                "episode_index": list(range(n_eps)),
                "hash": [h.hex() for h in hashes],
                "frames": [EP_LEN] * n_eps,
                "task_index": [0] * n_eps,
                "duration_s": [float(t_us[-1]) / 1e6] * n_eps,
            }
        )
        store.commit(site, st, row, table)
    return did


def measure(root: Path, did: str) -> dict:
    import duckdb

    from dataspace.quality.check import _dataset, layout_for
    from dataspace.quality.profile import dataset_scales, frames_view_sql, profile_select_sql
    from dataspace.quality.suite import run_suites
    from dataspace.site import Site

    site = Site.open(root)
    ds, hashes = _dataset(site, did)
    layout = layout_for(site, ds)
    con = duckdb.connect()
    con.execute(frames_view_sql(layout))
    # the dataset's scales (ranges, motion partners) shape the profile's SQL; the suite
    # measures them too (a sample of whole episodes), inside its own time
    scales = dataset_scales(con, layout)
    t0 = time.perf_counter()
    # materialise every column: a count(*) over it would let DuckDB prune the aggregates
    con.sql(profile_select_sql(layout, scales)).to_arrow_table()
    baseline = time.perf_counter() - t0
    con.close()
    print(f"baseline scan {baseline:.2f}s", file=sys.stderr)
    t0 = time.perf_counter()
    res = run_suites(site.root / "quality" / "work", layout, hashes, declared_frames=ds["frames"])
    suite = time.perf_counter() - t0
    print(f"suite {suite:.2f}s, {len(res.checks)} expectations", file=sys.stderr)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "frames": res.frames,
        "episodes": res.episodes,
        "expectations": len(res.checks),
        "flags": len(res.flags),
        "baseline_s": round(baseline, 2),
        "suite_s": round(suite, 2),
        "ratio": round(suite / baseline, 2),
        "peak_rss_mb": round(rss, 1),
    }


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--generate":
        print(generate(Path(sys.argv[2]), FRAMES))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        print(json.dumps(measure(Path(sys.argv[2]), sys.argv[3])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "site"
        t0 = time.perf_counter()
        did = (
            subprocess.run(
                [sys.executable, __file__, "--generate", str(root)],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        print(f"generated in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        out = (
            subprocess.run(
                [sys.executable, __file__, "--measure", str(root), did],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        result = json.loads(out)
        result["targets_met"] = result["ratio"] <= 3 and result["peak_rss_mb"] < 2048
        print(json.dumps(result))


if __name__ == "__main__":
    main()
