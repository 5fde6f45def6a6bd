"""Issue 16: a consumer trains from its own machine, through the hub, against holders it
cannot see into.

As separate processes on 127.0.0.1: the hub service (``dataspace serve hub --runs-dir
--superlink``), a SuperLink (TLS, SuperNode authentication) whose one SuperExec is the
hub worker (``--runs-dir``), and three holders, each a SuperNode and its site worker
over its own site folder. The consumer runs ``dataspace train --hub ...`` with every
file it (or any process it starts, such as ``flwr run``) opens or lists recorded by an
audit hook (``sys.addaudithook`` in a ``sitecustomize`` on its PYTHONPATH): it must open
nothing under any site folder, and still end with the model and the report. Every
site's log and the hub's log then verify, and agree with each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataspace.audit.crosscheck import cross_check
from dataspace.audit.events import parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.verify import verify_source
from dataspace.demo.federation import publish_to_hub
from dataspace.federated.deploy import Deployment, write_app
from dataspace.net import free_port
from tests.services.conftest import Service

BIN = Path(sys.executable).parent

#: installed in every Python process of the consumer: one line per file opened or listed
SITECUSTOMIZE = """
import os, sys
_LOG = os.environ.get("DATASPACE_OPEN_LOG")
if _LOG:
    _FD = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    _EVENTS = ("open", "os.listdir", "os.scandir")

    def _record(event, args):
        if event not in _EVENTS or not args or isinstance(args[0], int) or args[0] is None:
            return
        try:
            path = os.fsdecode(args[0])
            if not os.path.isabs(path):
                path = os.path.join(os.getcwd(), path)
            line = f"{os.getpid()}\\t{event}\\t{path}\\n"
            os.write(_FD, line.encode("utf-8", "surrogateescape"))
        except Exception:
            pass

    sys.addaudithook(_record)
"""


def _attack_the_hub_worker(
    dep: Deployment, contracts: list[str], run_id: str, runs: Path, hub_data: Path, tmp: Path
) -> None:
    """Runs submitted straight to the SuperLink, bypassing the hub: they never run; a
    registered run whose config names a path of the hub's host runs in its runs folder."""
    app = write_app(tmp / "evil-app")
    evil = tmp / "evil"
    base = {"contracts": ",".join(contracts), "num-rounds": 1, "expected-nodes": 3}
    for cfg in (
        {"run-id": "evil-1", "out-dir": str(evil)},  # never registered
        {"run-id": "../evil", "out-dir": str(evil)},  # a path as run id
        {"run-id": run_id, "out-dir": str(evil), "contracts": contracts[0]},  # others' id
        {"run-id": run_id, "out-dir": str(hub_data)},  # registered: writes runs/<id> only
    ):
        dep.run(app, base | cfg, timeout=300)
    log = (dep.root / "logs" / "hub-worker.log").read_text()
    assert log.count("RunNotRegisteredError") == 2 and "RunDirError" in log, log[-3000:]
    assert not evil.exists() and not (runs / "evil-1").exists()
    assert not (runs.parent / "evil").exists()
    assert not (hub_data / "history.json").exists() and not (hub_data / "rounds").exists()
    assert json.loads((runs / run_id / "history.json").read_text())["resumed_from"] == 1
    assert dep.procs["hub-worker"].poll() is None  # refusing them did not stop the worker


def _trusted(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_a_consumer_trains_through_the_hub_and_opens_no_site_file(federation, tmp_path):
    t0 = time.monotonic()
    fed = federation(epsilon=4.0, rounds=1)
    site_roots = [s.root.resolve() for s in fed.sites]
    runs = tmp_path / "hub-runs"
    hub_data = tmp_path / "hub"
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    key = consumer / "robotco.key"
    for suffix in ("", ".pub"):  # the consumer's identity, on its own machine
        src = fed.sites[0].root.parent / f"consumer.key{suffix}"
        Path(f"{key}{suffix}").write_bytes(src.read_bytes())
    os.chmod(key, 0o600)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    opened = tmp_path / "opened.log"
    hub = None
    with Deployment(tmp_path / "deploy", site_roots, runs_dir=runs) as dep:
        assert dep.tls is not None
        trust = [a for s in site_roots for a in ("--trust", str(s / "site.key.pub"))]
        hub = Service(
            ["hub", "--data", str(hub_data), *trust, "--runs-dir", str(runs),
             "--superlink", f"127.0.0.1:{dep.control_port}",
             "--superlink-ca", str(dep.tls.ca_cert)],
            free_port(),
            tmp_path / "hub.log",
        )  # fmt: skip
        try:
            hub.wait_ready()
            # each holder's connector publishes its dataset and copies its agreed contract
            # to the hub (what dataspace.connectors.publisher sends)
            publish_to_hub(hub.url, fed)
            t_consumer = time.monotonic()
            out = consumer / "runs" / "first"
            r = subprocess.run(
                [str(BIN / "dataspace"), "train", "--hub", hub.url,
                 "--contract", ",".join(fed.contract_ids), "--key", str(key),
                 "--rounds", "1", "--out", str(out), "--json"],
                cwd=consumer,
                env={**os.environ, "PYTHONPATH": str(hook), "DATASPACE_OPEN_LOG": str(opened)},
                capture_output=True,
                text=True,
                timeout=600,
            )  # fmt: skip
            consumer_s = time.monotonic() - t_consumer
            assert r.returncode == 0, r.stderr[-4000:] + r.stdout[-2000:]
            run_id = json.loads(r.stdout.strip().splitlines()[-1])["run_id"]
            _attack_the_hub_worker(dep, fed.contract_ids, run_id, runs, hub_data, tmp_path)
            # resubmitting the run resumes it: already finished, nothing more to do
            again = subprocess.run(
                [str(BIN / "dataspace"), "train", "--hub", hub.url, "--run-id", run_id,
                 "--contract", ",".join(fed.contract_ids), "--key", str(key),
                 "--rounds", "1", "--out", str(consumer / "runs" / "first"), "--json"],
                cwd=consumer, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert again.returncode == 0, again.stderr[-4000:]
            assert json.loads(again.stdout.strip().splitlines()[-1])["status"] == "finished"
        finally:
            hub.stop()

    # the run finished and the consumer has the model and the report, as the simulation writes
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["status"] == "finished", report
    assert report == json.loads((out / "report.json").read_text())
    assert (out / "model.pt").exists() and (out / "report.png").exists()
    assert report["model"]["sha256"] == hashlib.sha256((out / "model.pt").read_bytes()).hexdigest()
    assert len(report["rounds"]) == 1 and set(report["epsilon"]) == set(fed.dataset_ids)
    assert {s["dataset-id"] for s in report["rounds"][0]["sites"]} == set(fed.dataset_ids)
    for ds in fed.dataset_ids:
        assert (out / "rounds" / "001" / "updates" / f"{ds}.npz").exists()
    history = json.loads((out / "history.json").read_text())
    assert history["spec"]["out_dir"] == str(out)
    # the run wrote at the hub's runs folder only, whatever its config said
    assert (runs / report["run_id"] / "history.json").exists()

    # the consumer opened no file under any site folder (nor did flwr run, its child)
    lines = [ln.split("\t") for ln in opened.read_text().splitlines()]
    paths = {os.path.realpath(p) for _, _, p in lines}
    assert str(key.resolve()) in paths and str((out / "model.pt").resolve()) in paths
    assert len({pid for pid, _, _ in lines}) >= 2  # the CLI and flwr run were both watched
    touched = sorted(p for p in paths for s in site_roots if Path(p).is_relative_to(s))
    assert not touched, touched

    # the hub logged the run's end with the model the consumer downloaded
    with TransparencyLog.open(hub_data / "log") as log:
        hub_entries = list(log.entries(0, log.size))
    events = [parse_event(e) for e in hub_entries]
    (fin,) = [e for e in events if e.kind == "run.finished"]
    model = hashlib.sha256((out / "rounds" / "001" / "global.npz").read_bytes()).hexdigest()
    assert fin.fields["model_sha256"] == model and fin.fields["status"] == "finished"
    assert sorted(fin.fields["contracts"]) == sorted(fed.contract_ids)
    assert [e.fields["round"] for e in events if e.kind == "round.registered"] == [1]

    # every log verifies with public keys only, and the sites' agree with the hub's
    hub_keys = _trusted(tmp_path / "hub.keys", f"log {hub_data / 'hub.key.pub'}")
    rep = verify_source(hub_data / "log", hub_keys, allow_unanchored=True)
    assert rep.ok, rep.violations
    for s in site_roots:
        keys = _trusted(
            tmp_path / f"{s.name}.keys",
            str(s / "public.vkey"),
            f"actor {s / 'site.key.pub'}",
            f"actor {key}.pub",
        )
        rep = verify_source(s, keys, allow_unanchored=True)
        assert rep.ok, (s, rep.violations)
        assert rep.round_count >= 2  # statistics and round 1
        with TransparencyLog.open(s / "log") as log:
            x = cross_check(log.entries(0, log.size), hub_entries)
        assert x.ok, x.mismatches
    print(f"\nwall: {time.monotonic() - t0:.0f} s, consumer's train: {consumer_s:.0f} s")


@pytest.mark.slow
def test_an_offline_holder_is_named_and_the_run_goes_on_when_the_consumer_allows(
    federation, tmp_path
):
    """Three agreed contracts at the hub, but the third holder's SuperNode never connects:
    with ``--min-sites 2`` the run finishes on the two others and the consumer is told,
    by name, which holder took no part; that holder's log is charged nothing."""
    fed = federation(epsilon=4.0, rounds=1)
    online = [s.root.resolve() for s in fed.sites[:2]]
    offline = fed.sites[2]
    runs = tmp_path / "hub-runs"
    hub_data = tmp_path / "hub"
    key = fed.sites[0].root.parent / "consumer.key"
    with Deployment(tmp_path / "deploy", online, runs_dir=runs) as dep:
        assert dep.tls is not None
        trust = [a for s in fed.sites for a in ("--trust", str(s.root / "site.key.pub"))]
        hub = Service(
            ["hub", "--data", str(hub_data), *trust, "--runs-dir", str(runs),
             "--superlink", f"127.0.0.1:{dep.control_port}",
             "--superlink-ca", str(dep.tls.ca_cert)],
            free_port(),
            tmp_path / "hub.log",
        )  # fmt: skip
        try:
            hub.wait_ready()
            publish_to_hub(hub.url, fed)
            r = subprocess.run(
                [str(BIN / "dataspace"), "train", "--hub", hub.url,
                 "--contract", ",".join(fed.contract_ids), "--key", str(key),
                 "--rounds", "1", "--min-sites", "2", "--connect-timeout", "20",
                 "--out", str(tmp_path / "run"), "--json"],
                capture_output=True, text=True, timeout=900,
            )  # fmt: skip
        finally:
            hub.stop()
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["status"] == "finished"
    assert set(report["epsilon"]) == set(fed.dataset_ids[:2])
    err = " ".join(r.stderr.split())
    assert "took no part" in err and offline.name in err and fed.contract_ids[2] in err
    # nothing was charged at the holder that was offline
    with TransparencyLog.open(offline.root / "log") as log:
        kinds = [parse_event(e).kind for e in log.entries(0, log.size)]
    assert "round.started" not in kinds
