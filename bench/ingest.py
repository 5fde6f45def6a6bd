"""Enrollment throughput and memory on a generated LeRobot v3.0 dataset (issue 2).

    .venv/bin/python bench/ingest.py [--frames 1000000] [--dim 14] [--repeat 2]

1. Writes a synthetic LeRobot v3.0 dataset of ``--frames`` frames (episodes of
   1000 frames, 100 episodes per data file) in a temporary folder.
2. Baseline: a plain pyarrow read-and-write of the same data files
   (``pq.read_table`` then ``pq.write_table(..., compression="zstd")``), in this
   process.
3. Enrollment: ``dataspace.connectors.enroll.enroll`` into a fresh site, in a
   child process; its time is the ``enroll()`` call measured inside the child
   (interpreter start-up excluded), its peak RSS the child's ``ru_maxrss``.

Each of 2 and 3 runs ``--repeat`` times, alternating; the best time of each is
kept (the machine is shared). The last stdout line is JSON with
``frames_per_s`` (enrollment), ``peak_rss_mb`` (enrolling process) and
``ratio`` = enrollment throughput / baseline throughput. Targets: ratio >= 0.5,
peak RSS < 1024 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataspace.connectors.synthetic import write_lerobot_v3  # noqa: E402

CHILD = """
import json, sys, time
from dataspace.site import Site, create_site
from dataspace.connectors.enroll import enroll
site = create_site(sys.argv[1], org="bench")
t = time.perf_counter()
r = enroll(site, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "frames": r.frames,
                  "fingerprint": r.fingerprint}))
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def baseline(src: Path, out: Path) -> float:
    """Seconds for a plain pyarrow read + zstd write of every data file."""
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for i, f in enumerate(sorted(src.glob("data/chunk-*/*.parquet"))):
        pq.write_table(pq.read_table(f), out / f"copy-{i:03d}.parquet", compression="zstd")
    return time.perf_counter() - t


def enroll_child(site: Path, src: Path) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(site), str(src)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"enrollment failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=14, help="state and action dimensions")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    episode_len = 1000
    episodes = -(-args.frames // episode_len)
    with tempfile.TemporaryDirectory(prefix="dataspace-bench-") as tmp:
        root = Path(tmp)
        src = root / "lerobot"
        t = time.perf_counter()
        frames = write_lerobot_v3(src, episodes, episode_len, args.dim, args.dim)
        size_mb = sum(f.stat().st_size for f in src.rglob("*.parquet")) / 2**20
        log(f"generated {frames} frames ({size_mb:.0f} MB) in {time.perf_counter() - t:.1f}s")
        base_s, enroll_s = [], []
        for i in range(args.repeat):
            base_s.append(baseline(src, root / f"baseline{i}"))
            log(f"baseline pyarrow read+write: {base_s[-1]:.2f}s")
            r = enroll_child(root / f"site{i}", src)
            assert r["frames"] == frames, r
            enroll_s.append(r["seconds"])
            log(f"enroll: {enroll_s[-1]:.2f}s  fingerprint {r['fingerprint'][:16]}")
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    fps_enroll = frames / min(enroll_s)
    fps_base = frames / min(base_s)
    print(
        json.dumps(
            {
                "frames": frames,
                "state_dim": args.dim,
                "action_dim": args.dim,
                "enroll_s": round(min(enroll_s), 3),
                "baseline_s": round(min(base_s), 3),
                "frames_per_s": round(fps_enroll),
                "baseline_frames_per_s": round(fps_base),
                "peak_rss_mb": round(peak_kb / 1024, 1),
                "ratio": round(fps_enroll / fps_base, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
