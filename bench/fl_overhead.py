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

The consumer's path (issue 16, ``hub_*`` fields; ``--no-hub`` skips it): the same
federation again, now with the hub service (``dataspace serve hub --runs-dir
--superlink``), its SuperLink and hub worker, and the three holders' SuperNodes and
site workers as separate processes, and the consumer as one more process,
``dataspace train --hub URL --key KEY --contract C1,C2,C3`` in a folder of its own.
``hub_ratio`` = the consumer's wall time (submitting, training, downloading the
model, the hub logging run.finished) / the one-process engine's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dataspace.demo.federation import Federation, make_federation, publish_to_hub
from dataspace.demo.services import Process
from dataspace.federated import DeploymentEngine, RunSpec, train
from dataspace.federated.deploy import Deployment
from dataspace.net import free_port

#: the real G1 recording committed with the tests (the same files as ../shared/data's)
UNITREE = Path(__file__).resolve().parents[1] / "tests" / "data" / "unitree-g1-lerobot-v2.1"
ROUNDS = 5


def through_hub(tmp: Path, fed: Federation, database: str | None) -> dict:
    """The consumer's path as separate processes; seconds for start-up and the consumer."""
    t0 = time.perf_counter()
    runs = tmp / "hub-runs"
    with Deployment(tmp / "deploy", [s.root for s in fed.sites], runs_dir=runs,
                    database=database) as dep:  # fmt: skip
        assert dep.tls is not None
        trust = [a for s in fed.sites for a in ("--trust", str(s.root / "site.key.pub"))]
        hub = Process.spawn(
            "hub",
            ["hub", "--data", str(tmp / "hub"), *trust, "--runs-dir", str(runs),
             "--superlink", f"127.0.0.1:{dep.control_port}",
             "--superlink-ca", str(dep.tls.ca_cert)],
            free_port(),
            tmp / "logs",
        )  # fmt: skip
        try:
            hub.wait_ready()
            publish_to_hub(hub.url, fed)
            start = time.perf_counter() - t0
            consumer = tmp / "consumer"
            consumer.mkdir()
            t = time.perf_counter()
            r = subprocess.run(
                [str(Path(sys.executable).parent / "dataspace"), "train", "--hub", hub.url,
                 "--key", str(fed.sites[0].root.parent / "consumer.key"),
                 "--contract", ",".join(fed.contract_ids), "--rounds", str(ROUNDS),
                 "--out", str(consumer / "run"), "--json"],
                cwd=consumer, capture_output=True, text=True, timeout=3000,
            )  # fmt: skip
            consumer_s = time.perf_counter() - t
        finally:
            hub.stop()
    if r.returncode != 0:
        raise SystemExit(f"dataspace train --hub failed: {r.stderr[-3000:]}")
    report = json.loads(r.stdout.strip().splitlines()[-1])
    return {"start_s": start, "consumer_s": consumer_s, "report": report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="keep run dirs and logs here")
    ap.add_argument(
        "--database",
        default=":flwr-in-memory:",
        help="SuperLink state: Flower's default in-memory state, or 'file' (the deployment "
        "engine's default, kept for audit)",
    )
    ap.add_argument("--no-hub", action="store_true", help="skip the consumer's path")
    args = ap.parse_args()
    database = None if args.database == "file" else args.database
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
            DeploymentEngine(timeout=1500, database=database),
        )
        tm = hb["timing"]
        print(f"deployment: {tm}", file=sys.stderr)
        assert ha["status"] == hb["status"] == "finished", hb.get("error")
        same = ha["rounds"][-1]["train_loss"] == hb["rounds"][-1]["train_loss"]
        hub: dict = {}
        if not args.no_hub:
            c = make_federation(tmp / "c", UNITREE, epsilon=8.0, rounds=ROUNDS)
            got = through_hub(tmp / "hub-path", c, database)
            print(f"through the hub: consumer {got['consumer_s']:.1f}s", file=sys.stderr)
            assert got["report"]["status"] == "finished", got["report"]
            hub = {
                "hub_ratio": round(got["consumer_s"] / local, 3),
                "hub_ratio_with_startup": round((got["consumer_s"] + got["start_s"]) / local, 3),
                "hub_consumer_s": round(got["consumer_s"], 2),
                "hub_start_s": round(got["start_s"], 2),
                "hub_final_loss": got["report"]["rounds"][-1].get("train_loss"),
            }
        print(
            json.dumps(
                {
                    **hub,
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
