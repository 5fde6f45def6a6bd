"""Fixtures of the product tests (demo, notebooks, compose file, dashboard)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data dir with a kernelspec running this venv's python (JUPYTER_PATH)."""
    d = tmp_path_factory.mktemp("jupyter")
    spec = d / "kernels" / "dataspace-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "dataspace venv",
                "language": "python",
            }
        )
    )
    return d
