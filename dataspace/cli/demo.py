"""``dataspace demo``: the one-command tour (issue: product). Not yet built."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("demo-work"))
@click.option("--sites", type=int, default=3, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--epsilon", type=float, default=8.0, show_default=True)
def command(workdir: Path, sites: int, rounds: int, epsilon: float) -> None:
    """Run the whole data space on bundled real robot data (not yet)."""
    click.echo("dataspace demo: not yet (the demo lands with the product issue)")
