"""Deployment engine wall time / the same computation in one process (issue 5).

5 rounds of bc-mlp DP training, 3 sites holding thirds of the Unitree G1
recording. Denominator: the one-process engine (SimulationEngine) running the
same apps, data and seed. Numerator: ``flwr run`` on a SuperLink with 3
SuperNodes (TLS, node authentication, the sites' and the hub's warm workers as
SuperExecs, see dataspace.federated.deploy) already started, as they are in a
long-lived deployment; the start-up time of the processes is
reported separately (``start_s``) and in ``ratio_with_startup``. The SuperLink
keeps its state in memory (Flower's default; ``--database file`` for a file).
Last stdout line: ``{"ratio": run_s / local_s, ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from dataspace.demo.federation import make_federation
from dataspace.federated import DeploymentEngine, RunSpec, train

#: the real G1 recording committed with the tests (the same files as ../shared/data's)
UNITREE = Path(__file__).resolve().parents[1] / "tests" / "data" / "unitree-g1-lerobot-v2.1"
ROUNDS = 5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="keep run dirs and logs here")
    ap.add_argument(
        "--database",
        default=":flwr-in-memory:",
        help="SuperLink state: Flower's default in-memory state, or 'file' (the deployment "
        "engine's default, kept for audit)",
    )
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = args.keep.resolve()
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        a = make_federation(tmp / "a", UNITREE, epsilon=8.0, rounds=ROUNDS)
        b = make_federation(tmp / "b", UNITREE, epsilon=8.0, rounds=ROUNDS)
        t = time.perf_counter()
        ha = train(
            RunSpec(
                contracts=a.contract_ids,
                template="bc-mlp",
                rounds=ROUNDS,
                out_dir=tmp / "ra",
                seed=0,
            ),
            a.sites,
            "simulation",
        )
        local = time.perf_counter() - t
        print(f"one process: {local:.1f}s", file=sys.stderr)
        hb = train(
            RunSpec(
                contracts=b.contract_ids,
                template="bc-mlp",
                rounds=ROUNDS,
                out_dir=tmp / "rb",
                seed=0,
            ),
            [s.root for s in b.sites],
            DeploymentEngine(
                timeout=1500, database=None if args.database == "file" else args.database
            ),
        )
        tm = hb["timing"]
        print(f"deployment: {tm}", file=sys.stderr)
        assert ha["status"] == hb["status"] == "finished", hb.get("error")
        same = ha["rounds"][-1]["train_loss"] == hb["rounds"][-1]["train_loss"]
        print(
            json.dumps(
                {
                    "ratio": round(tm["run_s"] / local, 3),
                    "ratio_with_startup": round(tm["total_s"] / local, 3),
                    "local_s": round(local, 2),
                    "deploy_run_s": round(tm["run_s"], 2),
                    "deploy_start_s": round(tm["start_s"], 2),
                    "rounds": ROUNDS,
                    "supernodes": 3,
                    "same_result_as_local": same,
                    "superlink_db": args.database,
                }
            )
        )


if __name__ == "__main__":
    main()
