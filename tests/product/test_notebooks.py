"""The three user notebooks: run in order on one working folder, they enroll a dataset,
agree a contract, train within it and audit the log; committed, they carry their outputs
and are what ``notebooks/make_notebooks.py`` writes."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.product.conftest import ROOT

pytestmark = pytest.mark.slow

NOTEBOOKS = ROOT / "notebooks"
NAMES = ("holder.ipynb", "consumer.ipynb", "auditor.ipynb")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: what a walkthrough must never leave in the repository (issue 14: private keys)
REPO_LITTER = ("keys", "sites", "hub", "runs", "bundle", "trusted-keys", "nb-work")


def execute(name: str, workdir: Path, kernel_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("DATASPACE_NB_WORKDIR", str(workdir))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="dataspace-venv",
        timeout=300,
        # the kernel starts elsewhere: the notebook must move to its working folder itself
        resources={"metadata": {"path": str(workdir.parent)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error (asserts too)
    return nb


def outputs(nb: nbformat.NotebookNode) -> str:
    text = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            text.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return ANSI.sub("", "\n".join(text))


def json_line(text: str, key: str) -> dict:
    """The first printed JSON object that has ``key`` (a command's --json answer)."""
    for line in text.splitlines():
        if line.startswith("{") and f'"{key}"' in line:
            return json.loads(line)
    raise AssertionError(f"no JSON answer with {key!r} in:\n{text}")


def test_notebooks_run_in_order_on_one_workdir(tmp_path, kernel_dir, monkeypatch):
    before = {p for p in REPO_LITTER if (ROOT / p).exists()}
    wd = tmp_path / "work"

    out = outputs(execute("holder.ipynb", wd, kernel_dir, monkeypatch))
    enrolled = json_line(out, "dataset_id")
    ds = enrolled["dataset_id"]
    assert enrolled["episodes"] == 16 and enrolled["format"] == "lerobot"
    assert f"dataset {ds}: score" in out  # the quality report
    assert f"published for {ds}" in out  # the policy
    assert (wd / "sites" / "acme" / "site.toml").exists()
    assert (wd / "keys" / "robotco.key").stat().st_mode & 0o077 == 0
    assert (wd / "acme-quality.html").exists()

    out = outputs(execute("consumer.ipynb", wd, kernel_dir, monkeypatch))
    contract = json_line(out, "contract_id")
    assert contract["state"] == "agreed" and contract["terms"]["dataset_id"] == ds
    reports = list(wd.glob("runs/*/report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["status"] == "finished" and report["contracts"] == [contract["contract_id"]]
    assert 0 < report["epsilon"][ds] <= contract["terms"]["epsilon"]
    assert (reports[0].parent / report["model"]["path"]).exists()
    assert report["model"]["sha256"] in out

    out = outputs(execute("auditor.ipynb", wd, kernel_dir, monkeypatch))
    assert "unanchored" in out  # plain verify refuses a log nobody anchored
    assert "self-consistent only" in out  # --allow-unanchored accepts it as such
    assert "'ok': True" in out and "'verified': False" in out
    assert contract["contract_id"] in out  # the trace shows the consumer's rounds
    assert "entry-signature" in out and "(exit status 4)" in out  # the tampered copy fails

    assert {p for p in REPO_LITTER if (ROOT / p).exists()} == before  # nothing in the repo


def _make_notebooks():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_notebooks_are_committed_current_and_with_outputs():
    fresh = _make_notebooks().notebooks()
    assert tuple(fresh) == NAMES
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert [c.source for c in nb.cells] == [c.source for c in fresh[name].cells], (
            f"{name} differs from make_notebooks.py: run .venv/bin/python "
            "notebooks/make_notebooks.py"
        )
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code), name
        assert all(c.outputs for c in code), name  # every step shows what it did
        assert not [o for c in code for o in c.outputs if o.output_type == "error"], name
        source = "\n".join(c.source for c in nb.cells)
        # what a user would type: the commands and public API, not the demo's internals
        assert "dataspace.demo" not in source, name
