"""``dataspace sample DIR``: the real robot data the package ships, as a folder of yours.

The walkthroughs need data a newcomer has: 16 episodes of the Unitree G1 humanoid
(*pick up the yellow bottle*, LeRobot v2.1, MIT licence, see its README), copied
into DIR so that what you enroll is a folder you own and may change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from dataspace.errors import DataspaceError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "unitree-g1-sample"


@click.command(name="sample")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
def command(directory: Path) -> None:
    """Copy the bundled sample (16 real Unitree G1 episodes, LeRobot v2.1) into DIRECTORY."""
    if directory.exists() and any(directory.iterdir()):
        raise DataspaceError(f"{directory} exists and is not empty; name a new folder")
    shutil.copytree(SAMPLE, directory, dirs_exist_ok=True)
    click.echo(f"{directory}: 16 episodes of the Unitree G1 (LeRobot v2.1, MIT), from {SAMPLE}")
