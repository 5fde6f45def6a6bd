"""``dataspace catalog``: search the hub's catalog (signed with the caller's key)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dataspace.auth.client import call, signed_client
from dataspace.cli._ui import Col, out_console, print_table
from dataspace.site.identity import load_private_key

KEY_HELP = "identity key that signs the request (default: $DATASPACE_KEY)"


@click.command(name="catalog")
@click.option("--hub", "hub_url", required=True, envvar="DATASPACE_HUB", help="the hub's URL")
@click.option("--query", "-q", default=None, help="text in a dataset's id, title or tasks")
@click.option("--robot-type", default=None, help="exact robot type, e.g. so101_follower")
@click.option("--task", default=None, help="text in one of the dataset's tasks")
@click.option("--fps", type=float, default=None)
@click.option(
    "--min-quality",
    type=click.FloatRange(0, 100),
    default=None,
    help="lowest quality score (0..100)",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    envvar="DATASPACE_KEY",
    required=True,
    help=KEY_HELP,
)
@click.option("--json", "as_json", is_flag=True, help="print the hub's answer as one JSON object")
def command(
    hub_url: str,
    query: str | None,
    robot_type: str | None,
    task: str | None,
    fps: float | None,
    min_quality: float | None,
    limit: int,
    key_path: Path,
    as_json: bool,
) -> None:
    """Search the data space's catalog: metadata and quality scores, never data."""

    params = {
        "q": query,
        "robot_type": robot_type,
        "task": task,
        "fps": fps,
        "min_quality": min_quality,
        "limit": limit,
    }
    params = {k: v for k, v in params.items() if v is not None}
    with signed_client(hub_url, load_private_key(key_path)) as client:
        page = call(client, "GET", "/v1/catalog", params=params)
    if as_json:
        click.echo(json.dumps(page))
        return

    # the dataset id and the connector URL are what a consumer copies: never cut
    cols = [
        Col("dataset", ident=True),
        Col("robot"),
        Col("fps", justify="right"),
        Col("episodes", justify="right"),
        Col("frames", justify="right"),
        Col("quality", justify="right"),
        Col("holder"),
        Col("connector", ident=True),
    ]
    rows = []
    for e in page["entries"]:
        q = e.get("quality_score")
        rows.append(
            (
                e["dataset_id"],
                e.get("robot_type") or "",
                f"{e.get('fps') or ''}",
                f"{e.get('episodes') or ''}",
                f"{e.get('frames') or ''}",
                "" if q is None else f"{q:.1f}",
                e.get("holder_name") or e["holder"],
                e.get("connector_url") or "",
            )
        )
    print_table(out_console(), f"{page['total']} dataset(s) at {hub_url}", cols, rows)
