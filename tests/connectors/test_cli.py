"""``dataspace connector ...`` end to end, and interrupted enrollments (SIGINT, kill -9)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dataspace.cli.connector import group
from dataspace.connectors.enroll import enroll
from dataspace.connectors.synthetic import write_lerobot_v3
from dataspace.site import Site, create_site, store
from tests.conftest import SO101, UNITREE
from tests.connectors.conftest import small_v21, snapshot

ENROLL_FIELDS = {
    "dataset_id",
    "name",
    "format",
    "episodes",
    "frames",
    "state_dim",
    "action_dim",
    "fps",
    "fingerprint",
}


#: rich wraps stderr at the terminal width (80 without one); keep messages on one line
ENV = {**os.environ, "COLUMNS": "1000"}


def dataspace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataspace", *args], capture_output=True, text=True, env=ENV
    )


def test_init_creates_site_and_refuses_existing(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(group, ["init", str(tmp_path / "s"), "--org", "ACME Robotics"])
    assert res.exit_code == 0, res.output
    site = Site.open(tmp_path / "s")
    assert site.org == "ACME Robotics"
    assert stat.S_IMODE(site.key_path.stat().st_mode) == 0o600
    assert "PRIVATE" not in res.output and site.key_path.read_text() not in res.output
    assert site.identity.key_b64 in res.output
    again = dataspace("connector", "init", str(tmp_path / "s"), "--org", "Other")
    assert again.returncode != 0 and "refusing" in again.stderr
    assert Site.open(tmp_path / "s").org == "ACME Robotics"


def test_enroll_json_list_show(tmp_path: Path) -> None:
    runner = CliRunner()
    s = str(tmp_path / "s")
    assert runner.invoke(group, ["init", s, "--org", "H"]).exit_code == 0
    res = runner.invoke(group, ["enroll", s, str(UNITREE), "--json", "--name", "g1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) >= ENROLL_FIELDS
    assert out["name"] == "g1" and out["format"] == "lerobot"
    assert (out["episodes"], out["frames"], out["state_dim"], out["action_dim"]) == (
        100,
        35965,
        26,
        26,
    )
    assert out["fps"] == 30.0 and len(out["fingerprint"]) == 64

    human = runner.invoke(group, ["enroll", s, str(SO101)])
    assert human.exit_code == 0 and "enrolled" in human.stdout and "1492 frames" in human.stdout

    listed = json.loads(runner.invoke(group, ["list", s, "--json"]).stdout)
    assert [d["name"] for d in listed["datasets"]] == ["g1", SO101.name]
    plain = runner.invoke(group, ["list", s]).stdout
    assert out["dataset_id"] in plain and "35965" in plain

    shown = json.loads(runner.invoke(group, ["show", s, "g1", "--json"]).stdout)
    assert shown["dataset_id"] == out["dataset_id"]
    assert shown["catalog"]["@type"] == "dcat:Dataset"
    assert "episodes_rows" not in shown  # metadata only


def test_enroll_error_exit_code_and_message(tmp_path: Path) -> None:
    site = create_site(tmp_path / "s", org="H")
    root = small_v21(tmp_path / "g1")
    (root / "meta/episodes.jsonl").unlink()
    res = dataspace("connector", "enroll", str(site.root), str(root), "--json")
    assert res.returncode == 1
    assert "episodes.jsonl" in res.stderr and "missing" in res.stderr
    assert res.stdout == "" and "Traceback" not in res.stderr


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic LeRobot v3.0 dataset large enough to interrupt (240k frames)."""
    root = tmp_path_factory.mktemp("big") / "big"
    write_lerobot_v3(root, episodes=300, frames_per_episode=800, episodes_per_file=50)
    return root


def _interrupted_enrollment(tmp_path: Path, big: Path, sig: int) -> tuple[Site, tuple, str, int]:
    """Start `dataspace connector enroll` on ``big``, send ``sig`` once it has begun
    staging; returns the site, its snapshot from before, stderr and the
    exit status.

    On a loaded machine the poll can miss the window (the enrollment finishes
    first); then it tries again on a fresh site, at most five times.
    """
    for attempt in range(5):
        site = create_site(tmp_path / f"s{attempt}", org="H")
        enroll(site, SO101)
        before = snapshot(site)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dataspace", "connector", "enroll", str(site.root), str(big)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            # as from a terminal: an xdist worker ignores SIGINT, and a child that inherits
            # SIG_IGN never gets Python's KeyboardInterrupt handler
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            # as soon as it stages (a loaded machine sees the first part file late, often
            # after the last: then the enrollment is committing, which no signal splits)
            if site.staging_dir.is_dir() and any(site.staging_dir.iterdir()):
                proc.send_signal(sig)
                _, err = proc.communicate(timeout=600)
                if proc.returncode == 0 and sig != signal.SIGKILL:
                    # the signal landed after the enrollment's last write (a loaded machine):
                    # then it must have finished whole; try again on a fresh site
                    assert len(store.list_datasets(site)) == 2, err
                    break
                return site, before, err, proc.returncode
            time.sleep(0.005)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err  # it finished (or failed) before we saw it write
    raise AssertionError("never caught the enrollment while it was writing")


@pytest.mark.slow
def test_kill_9_leaves_no_half_dataset(tmp_path: Path, big: Path) -> None:
    site, (_, ds_before, eps_before), _, rc = _interrupted_enrollment(tmp_path, big, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    # nothing visible: same rows, no new store folder, nothing listed
    _, ds_after, eps_after = snapshot(site)
    assert (ds_after, eps_after) == (ds_before, eps_before)
    assert [d.name for d in store.list_datasets(site)] == [SO101.name]
    assert sorted(p.name for p in site.store_dir.iterdir()) == [ds_before[0][2]]
    # the dead process's staging folder is swept by the next enrollment, which succeeds
    assert any(site.staging_dir.iterdir())
    r = enroll(site, small_v21(tmp_path / "g1"))
    assert r.created and r.episodes == 3
    assert not any(site.staging_dir.iterdir())
    assert sorted(p.name for p in site.store_dir.iterdir()) == sorted(
        [ds_before[0][2], r.fingerprint]
    )


@pytest.mark.slow
def test_sigint_cleans_up_at_once(tmp_path: Path, big: Path) -> None:
    site, before, err, rc = _interrupted_enrollment(tmp_path, big, signal.SIGINT)
    assert rc == 130, err
    assert "interrupted" in err or "aborted" in err
    assert not any(site.staging_dir.iterdir())
    assert snapshot(site) == before
    assert [d.name for d in store.list_datasets(site)] == [SO101.name]
    assert len(list(site.store_dir.iterdir())) == 1


def test_orphan_store_folder_is_invisible_and_swept(site: Site) -> None:
    """A crash between the rename into the store and the DB commit leaves a folder
    no row points at: invisible, and removed by the next sweep."""
    orphan = site.dataset_dir("ab" * 32)
    orphan.mkdir(parents=True)
    (orphan / "part-00000.parquet").write_bytes(b"PAR1")
    assert store.list_datasets(site) == []
    removed = store.sweep(site)
    assert orphan in removed and not orphan.exists()


def test_live_staging_is_not_swept(site: Site) -> None:
    """A concurrent enrollment's staging folder survives a sweep (its lock is held)."""
    with store.staging(site) as st:
        (st.directory / "part-00000.parquet").write_bytes(b"x")
        assert store.sweep(site) == []
        assert st.directory.exists()
    assert not st.directory.exists()


@pytest.mark.slow
def test_concurrent_enrollments_of_the_same_content(tmp_path: Path) -> None:
    """Two processes enrolling the same data at once: one dataset, created once."""
    site = create_site(tmp_path / "s", org="H")
    # the connector group alone: `dataspace` itself also imports every other area
    launcher = "from dataspace.cli.connector import group; group()"
    cmd = [sys.executable, "-c", launcher, "enroll", str(site.root), str(SO101)]
    procs = [
        subprocess.Popen([*cmd, "--json"], stdout=subprocess.PIPE, text=True, env=ENV)
        for _ in range(2)
    ]
    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0]["dataset_id"] == outs[1]["dataset_id"]
    assert sorted(o["created"] for o in outs) == [False, True]
    assert len(store.list_datasets(site)) == 1
    assert len(store.episode_rows(site, outs[0]["dataset_id"])) == 4
    assert len(list(site.store_dir.iterdir())) == 1
    assert not any(site.staging_dir.iterdir())
