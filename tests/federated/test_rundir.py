"""The hub worker's confinement of a consumer's run (``serve hub-worker --runs-dir``), and
who took part in a run, attacked: a run config that names paths on the hub's host, run ids
that are paths, runs the hub never registered, a hostile site's dataset id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dataspace.federated import rundir
from dataspace.federated.remote import ContractInfo, absent, stopped_message
from dataspace.federated.rundir import (
    REGISTRATION,
    RunDirError,
    RunFileRefusedError,
    RunNotRegisteredError,
    confine,
    write_registration,
)


def _config(run_id: str = "run-1", out: str = "/tmp/evil", contracts: str = "c1,c2") -> dict:
    return {"run-id": run_id, "out-dir": out, "contracts": contracts, "num-rounds": 1}


@pytest.mark.parametrize(
    "out", ["/tmp/evil", "../../hub", "/", "", "relative/elsewhere", "HUB_DATA"]
)
def test_out_dir_is_forced_into_the_runs_folder(tmp_path: Path, out: str):
    runs = tmp_path / "runs"
    hub_data = tmp_path / "hub"
    write_registration(runs, "run-1", "alice", ["c2", "c1"])
    out = str(hub_data) if out == "HUB_DATA" else out
    got = confine(_config(out=out), runs)
    assert got["out-dir"] == str((runs / "run-1").resolve())
    assert got["num-rounds"] == 1 and got["contracts"] == "c1,c2"  # the rest as given
    assert not hub_data.exists() and not Path("/tmp/evil").exists()


@pytest.mark.parametrize("run_id", ["..", ".", "a/b", "../x", "", "x" * 65, "a\x00b", "run 1"])
def test_run_ids_that_are_paths_are_refused(tmp_path: Path, run_id: str):
    with pytest.raises(RunDirError, match="not a valid run id"):
        confine(_config(run_id=run_id), tmp_path / "runs")
    with pytest.raises(RunDirError):
        write_registration(tmp_path / "runs", run_id, "alice", ["c1"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "b").exists()


def test_a_run_the_hub_never_registered_does_not_run(tmp_path: Path):
    runs = tmp_path / "runs"
    with pytest.raises(RunNotRegisteredError, match="not registered at the hub"):
        confine(_config(), runs)
    assert not (runs / "run-1").exists()  # nothing made for it
    write_registration(runs, "run-1", "alice", ["c1", "c2"])
    # another consumer reusing run-1's id with its own contracts
    with pytest.raises(RunNotRegisteredError, match="not those registered"):
        confine(_config(contracts="c9"), runs)
    with pytest.raises(RunNotRegisteredError):
        confine(_config(contracts="c1"), runs)
    (runs / "run-1" / REGISTRATION).write_text("{not json")
    with pytest.raises(RunNotRegisteredError, match="corrupt"):
        confine(_config(), runs)


def test_a_run_folder_planted_as_a_symlink_is_refused(tmp_path: Path):
    runs = tmp_path / "runs"
    runs.mkdir()
    target = tmp_path / "hub-data"
    target.mkdir()
    (target / REGISTRATION).write_text(json.dumps({"run_id": "run-1", "contracts": ["c1", "c2"]}))
    os.symlink(target, runs / "run-1")
    with pytest.raises(RunFileRefusedError):
        confine(_config(), runs)
    with pytest.raises(RunFileRefusedError):
        write_registration(runs, "run-1", "alice", ["c1"])
    # a registration file that is itself a link
    os.unlink(runs / "run-1")
    (runs / "run-1").mkdir()
    os.symlink(target / REGISTRATION, runs / "run-1" / REGISTRATION)
    with pytest.raises(RunFileRefusedError):
        confine(_config(), runs)


def test_run_files_are_named_from_the_history_and_never_a_path():
    history = {
        "stats": {"sites": []},
        "rounds": [
            {"round": 1, "sites": [{"dataset-id": "ds-a"}, {"dataset-id": "../../evil"}]},
            {"round": 2, "sites": [{"dataset-id": "ds-a"}]},
        ],
    }
    names = rundir.run_files(history)
    assert names == [
        "stats.json",
        "rounds/000/global.npz",
        "rounds/001/round.json",
        "rounds/001/global.npz",
        "rounds/001/updates/ds-a.npz",
        "rounds/002/round.json",
        "rounds/002/global.npz",
        "rounds/002/updates/ds-a.npz",
    ]
    assert all(rundir.RUN_FILE.fullmatch(n) for n in names)
    assert rundir.run_files({**history, "spec": {"secagg": True}})[-1] == "rounds/002/global.npz"


C = [
    ContractInfo("c1", "ds-1", "k1", "Plant North"),
    ContractInfo("c2", "ds-2", "k2", "Plant East"),
    ContractInfo("c3", "ds-3", "k3", "Plant South"),
]


def test_a_stopped_run_names_the_sites_that_took_no_part():
    history = {
        "spec": {"run_id": "run-1"},
        "status": "stopped",
        "error": "train round 1: 2 of 3 sites replied, 3 needed (...)",
        "stopped": {
            "replied": [{"dataset-id": "ds-1"}, {"dataset-id": "ds-3"}],
            "failed": [{"node": 77, "reason": "RefusedError: contract c2 is revoked"}],
        },
        "rounds": [],
    }
    assert [c.contract_id for c in absent(history, C)] == ["c2"]
    msg = stopped_message(history, C, 3)
    assert "\n" not in msg
    assert "Plant East (contract c2, dataset ds-2)" in msg and "Plant North" not in msg
    assert "node 77: RefusedError: contract c2 is revoked" in msg
    assert "--min-sites 2" in msg
    # nobody connected: every site is named
    never = [{"reason": "3 site(s) never connected"}]
    none = {"spec": {"run_id": "r"}, "status": "stopped", "rounds": [],
            "stopped": {"replied": [], "failed": never}}  # fmt: skip
    assert len(absent(none, C)) == 3 and "never connected" in stopped_message(none, C, 3)
    # a finished run with --min-sites 2: the missing site is named, from the last round
    done = {"status": "finished", "rounds": [{"round": 1, "sites": [{"dataset-id": "ds-1"},
            {"dataset-id": "ds-2"}], "failed": []}]}  # fmt: skip
    assert [c.holder_name for c in absent(done, C)] == ["Plant South"]
