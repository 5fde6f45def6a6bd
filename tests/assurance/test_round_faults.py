"""Faults: kill -9 the process running a site's ClientApp in the middle of a round, resume.

``dataspace train --simulate SITE`` runs the connector's ClientApp in its own
process; it is killed once the site's log shows the round's charge
(round.started). Afterwards the ledger holds at least the charge of the round
that was started, the site log verifies, and the same run resumes to the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataspace.audit.log import TransparencyLog
from dataspace.demo.federation import make_federation
from tests.assurance.conftest import verify_site_log
from tests.conftest import UNITREE

pytestmark = pytest.mark.slow


def _log_size(site) -> int:
    with TransparencyLog.open(site.log_dir) as log:
        return log.size


def test_kill_9_during_a_round_then_resume(tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "fed", UNITREE, 1, epsilon=4.0, rounds=3,
                          episodes_per_site=[range(0, 5)])  # fmt: skip
    site, contract = fed.sites[0], fed.contract_ids[0]
    before = _log_size(site)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dataspace", "train", "--contract", contract, "--rounds", "3",
           "--simulate", str(site.root), "--out", str(out), "--run-id", "run-kill"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _log_size(site) > before:  # a release charged: round.started is in the log
                break
        except Exception:  # the log is being written; look again
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    with site.db(read_only=True) as con:
        charged = con.execute(
            "SELECT round_no, epsilon FROM ledger WHERE run_id = 'run-kill' ORDER BY round_no"
        ).fetchall()
    # the first release (the statistics, round 0) stays paid
    assert charged and charged[0][0] == 0 and charged[0][1] > 0
    verify_site_log(site)
    # the same run resumes and finishes
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr
    with site.db(read_only=True) as con:
        rounds = con.execute(
            "SELECT count(*), sum(epsilon) FROM ledger WHERE run_id = 'run-kill'"
        ).fetchone()
    # the statistics, taken over by the resumed run (their process died before releasing
    # them: never charged twice), and the three rounds, within the contract
    assert rounds[0] == 4 and rounds[1] <= 4.0 + 1e-9
    verify_site_log(site)
