"""README.md runs as written: its ```bash blocks, in order, in one shell, in a new folder.

Reference blocks (syntax, ``./dev``, ``docker compose``) are fenced ```sh and not run.
The walkthrough's ports (8000, 8001; the SuperLink's 9093 and the SuperNode's 9094) are
replaced by free ones, so the test runs beside other services; everything else is the
README's text.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dataspace.net import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.slow

FENCE = re.compile(r"^```bash\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def bash_blocks(text: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(text)]


def test_readme_has_its_walkthrough_blocks():
    blocks = bash_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 4
    joined = "\n".join(blocks)
    assert "../shared" not in joined  # a bare clone has no ../shared
    assert not re.search(r"(ds|CID)-?\.\.\.|XXXX", joined)  # no placeholders to fill in


def test_readme_walkthrough_runs_in_a_new_folder(tmp_path: Path):
    if shutil.which("curl") is None:
        pytest.fail("curl is missing: README's walkthrough waits for the services with it")
    script = "\n".join(bash_blocks((REPO / "README.md").read_text()))
    hub, connector = free_port(), free_port()
    script = script.replace(":8000", f":{hub}").replace(":8001", f":{connector}")
    script = script.replace("--port 8000", f"--port {hub}").replace(
        "--port 8001", f"--port {connector}"
    )
    for flower in ("9093", "9094"):  # the SuperLink's, the SuperNode's runtime API
        assert flower in script
        script = script.replace(flower, str(free_port()))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        HOME=str(tmp_path),
    )
    proc = subprocess.Popen(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the services, if it stopped early
            os.killpg(proc.pid, signal.SIGTERM)
    assert proc.returncode == 0, out[-6000:]
    assert "dataspace-hub cosigned" in out
    assert re.search(r"^verified .*witnesses: dataspace-hub \(quorum 1\)", out, re.MULTILINE), out
    report = (work / "runs" / "first" / "report.json").read_text()
    assert '"status": "finished"' in report
    # what the walkthrough made stays in its folder, none of it in the repository
    assert not any((REPO / p).exists() for p in ("keys", "sites", "hub", "runs", "trusted-keys"))
