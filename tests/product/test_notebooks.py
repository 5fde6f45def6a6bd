"""The three user notebooks run top to bottom on small real data, without an error."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.product.conftest import ROOT

pytestmark = pytest.mark.slow

NOTEBOOKS = ROOT / "notebooks"


def execute(name: str, workdir: Path, kernel_dir: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("DATASPACE_NB_WORKDIR", str(workdir))
    monkeypatch.setenv("DATASPACE_NB_EPISODES", "3")
    workdir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="dataspace-venv",
        timeout=600,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    return nb


def outputs(nb: nbformat.NotebookNode) -> str:
    text = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            text.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def test_notebooks_run_in_order_on_one_workdir(tmp_path, kernel_dir, monkeypatch):
    wd = tmp_path / "work"
    holder = execute("holder.ipynb", wd, kernel_dir, monkeypatch)
    assert "overall score" in outputs(holder)
    assert (wd / "my-site" / "site.toml").exists()

    consumer = execute("consumer.ipynb", wd, kernel_dir, monkeypatch)
    out = outputs(consumer)
    assert "sha256" in out and "validation MSE" in out
    runs = list((wd / "runs").glob("nb-*/model.pt"))
    assert len(runs) == 1

    auditor = execute("auditor.ipynb", wd, kernel_dir, monkeypatch)
    out = outputs(auditor)
    assert "round.finished" in out  # the trace shows the consumer's training rounds
    assert "False" in out  # the tampered copy fails verification


def test_notebooks_are_committed_without_outputs():
    for name in ("holder.ipynb", "consumer.ipynb", "auditor.ipynb"):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name
