"""The root command: every area registers, and starting it stays light."""

from __future__ import annotations

import subprocess
import sys

from dataspace.cli import cli

HEAVY = (
    "torch",
    "flwr",
    "opacus",
    "great_expectations",
    "matplotlib",
    "pandas",
    "sqlalchemy",
    "duckdb",
)


def test_every_area_is_registered() -> None:
    names = set(cli.commands)
    for area in ("connector", "keys", "audit", "contract", "catalog", "quality", "train", "serve"):
        assert area in names, f"`dataspace {area}` is missing"
    assert "demo" in names


def test_starting_the_cli_imports_no_heavy_library() -> None:
    # `dataspace --help` and every quick command must not pay for torch or
    # Great Expectations (seconds each): those load inside the commands that use them.
    # every area loaded, as `dataspace --help` does (issue 14: no DuckDB either)
    code = (
        "import sys, dataspace.cli; dataspace.cli._register(); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_one_command_loads_only_its_area() -> None:
    # `dataspace train --rounds x` must not import every area (issue 14: argument errors fast)
    code = (
        "import sys; from dataspace.cli import cli; assert cli.commands.get('train'); "
        "print(sorted(m for m in sys.modules if m.startswith('dataspace.cli.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['dataspace.cli._ui', 'dataspace.cli.train']"
