"""Faults: kill -9 a connector process in the middle of a quality check, then restart.

Other kill -9 cases live with their areas and are not repeated here (see the
assurance table in README.md): enrollment (tests/connectors/test_cli.py), a
log append (tests/audit/test_log.py), a charged round (tests/policy/test_ledger.py),
a site dying mid-run and the run resuming (tests/federated/test_simulation.py).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from dataspace.audit.log import TransparencyLog
from dataspace.quality.check import run_checks
from tests.assurance.conftest import verify_site_log

pytestmark = pytest.mark.slow


def _episodes(site) -> list[tuple]:
    with site.db(read_only=True) as con:
        return con.execute("SELECT * FROM episodes ORDER BY ALL").fetchall()


def _kill_when_working(proc: subprocess.Popen, root: str, timeout: float = 240.0) -> None:
    """kill -9 once the process has a file of the site open (it is checking), or at timeout."""
    p = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if any(f.path.startswith(root) for f in p.open_files()):
                time.sleep(0.5)
                break
        except psutil.Error:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def test_kill_9_during_quality_check(so101_site) -> None:
    site, ds = so101_site
    before_eps = _episodes(site)
    size_before = TransparencyLog.open(site.log_dir).size
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataspace", "quality", "check", str(site.root), ds],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _kill_when_working(proc, str(site.root))
    assert proc.returncode == -signal.SIGKILL
    # nothing lost or half-written: the dataset is intact, the log verifies
    assert _episodes(site) == before_eps
    assert TransparencyLog.open(site.log_dir).size >= size_before
    verify_site_log(site)
    # restart: the check runs to the end and is logged
    run_checks(site, ds)
    report = verify_site_log(site)
    assert report["kinds"].get("quality.reported", 0) >= 1
