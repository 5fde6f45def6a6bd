"""``dataspace connector``: a data holder's site (issue 2: init, enroll, list, show).

Other areas add their own subcommands (``policy``, ``budget``) to :data:`group`
from their own modules. Errors are typed (``DataspaceError``) and turned into a
message and exit code by :func:`dataspace.cli.main`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataspace.connectors.site import Site

#: the fields ``enroll --json`` prints (issue 2; a contract with other tools)
ENROLL_FIELDS = (
    "dataset_id",
    "name",
    "format",
    "episodes",
    "frames",
    "state_dim",
    "action_dim",
    "fps",
    "fingerprint",
)

err = Console(stderr=True, soft_wrap=True)  # messages name paths and hashes: never split them


@click.group(name="connector")
def group() -> None:
    """A data holder's connector site: create it, enroll datasets, inspect them."""


@group.command(name="init")
@click.argument("site", type=click.Path(path_type=Path))
@click.option("--org", required=True, help="The holder organisation's name.")
@click.option("--name", default=None, help="Site name (key name in signed notes; no spaces).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def init_cmd(site: Path, org: str, name: str | None, as_json: bool) -> None:
    """Create a site folder: Ed25519 key pair, DuckDB database, config. Refuses to overwrite."""
    s = Site.init(site, org=org, name=name)
    ident = s.identity
    if as_json:
        click.echo(
            json.dumps(
                {"site": str(s.root), "org": s.org, "name": s.name, "public_key": ident.key_b64}
            )
        )
        return
    click.echo(f"site {s.name} created at {s.root} for {s.org}")
    click.echo(f"public key: {ident.key_b64}")


@group.command(name="enroll")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "lerobot", "hdf5", "mcap", "parquet"]),
    default="auto",
    show_default=True,
)
@click.option("--name", default=None, help="Dataset name (default: the folder or file name).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--no-quality",
    is_flag=True,
    help="Skip the automatic quality check (run `dataspace quality check` later).",
)
@click.option("--state-column", default=None, help="LeRobot/Parquet: the state column.")
@click.option("--action-column", default=None, help="LeRobot/Parquet: the action column.")
@click.option("--state-keys", default=None, help="HDF5: obs keys forming the state, comma list.")
@click.option("--fps", type=float, default=None, help="Frame rate where the source has none.")
@click.option("--state-topic", default=None, help="MCAP: JointState topic [/joint_states].")
@click.option("--action-topic", default=None, help="MCAP: action topic.")
@click.option("--episode-gap", type=float, default=None, help="MCAP: pause (s) splitting episodes.")
@click.option("--episode-column", default=None, help="Parquet/CSV: episode column.")
@click.option("--frame-column", default=None, help="Parquet/CSV: frame column.")
@click.option("--timestamp-column", default=None, help="Parquet/CSV: timestamp column (s).")
def enroll_cmd(
    site: Path,
    path: Path,
    fmt: str,
    name: str | None,
    as_json: bool,
    no_quality: bool,
    **options: object,
) -> None:
    """Read, validate, fingerprint and store the dataset at PATH in SITE.

    A newly enrolled dataset is quality-checked at once (issue: enrollment runs
    the check automatically); the dataset stays enrolled if the check fails.
    """
    from dataspace.connectors.enroll import enroll

    s = Site.open(site)
    with Progress(
        TextColumn("[bold]enrolling[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(path.name, total=None)

        def progress(done: int, total: int | None, episodes: int) -> None:
            bar.update(task, completed=done, total=total)

        result = enroll(s, path, format=fmt, name=name, progress=progress, **options)
    quality, quality_error = None, None
    if result.created and not no_quality:
        quality, quality_error = _quality_after_enroll(s, result.dataset_id)
    if as_json:
        out = {k: getattr(result, k) for k in ENROLL_FIELDS}
        out["created"] = result.created
        out["notes"] = list(result.notes)
        out["quality"] = quality
        if quality_error:
            out["quality_error"] = quality_error
        click.echo(json.dumps(out))
        return
    for note in result.notes:
        err.print(f"note: {note}", highlight=False, markup=False)
    verb = "enrolled" if result.created else "already enrolled (same content)"
    click.echo(
        f"{verb}: {result.dataset_id} {result.name!r} ({result.format}) "
        f"{result.episodes} episodes, {result.frames} frames, "
        f"state {result.state_dim} / action {result.action_dim}, {result.fps:g} fps"
    )
    click.echo(f"fingerprint {result.fingerprint}")
    if quality is not None:
        click.echo(f"quality {quality} / 100 (details: dataspace quality check)")
    elif quality_error:
        err.print(f"quality check failed: {quality_error}", highlight=False, markup=False)


@group.command(name="list")
@click.argument("site", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_cmd(site: Path, as_json: bool) -> None:
    """The site's enrolled datasets (metadata only)."""
    from dataspace.connectors.store import list_datasets

    records = list_datasets(Site.open(site))
    if as_json:
        keys = (*ENROLL_FIELDS, "robot_type", "license", "enrolled_at")
        rows = [{k: r.to_json()[k] for k in keys} for r in records]
        click.echo(json.dumps({"datasets": rows}))
        return
    if not records:
        click.echo("no datasets enrolled")
        return
    rows = [("dataset_id", "name", "format", "robot", "episodes", "frames", "S/A", "fps")]
    for r in records:
        rows.append(
            (
                r.dataset_id,
                r.name,
                r.format,
                r.robot_type,
                str(r.episodes),
                str(r.frames),
                f"{r.state_dim}/{r.action_dim}",
                f"{r.fps:g}" if r.fps else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@group.command(name="show")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_cmd(site: Path, dataset: str, as_json: bool) -> None:
    """One dataset's metadata and catalog entry (by id, fingerprint or name)."""
    from dataspace.connectors.store import get_dataset

    r = get_dataset(Site.open(site), dataset)
    d = r.to_json()
    if as_json:
        click.echo(json.dumps(d))
        return
    for k, v in d.items():
        if k in ("catalog", "attachments", "state_names", "action_names"):
            continue
        click.echo(f"{k:13} {v}")
    present = sum(1 for a in r.attachments if a.get("present"))
    click.echo(f"{'attachments':13} {len(r.attachments)} referenced, {present} present")
    click.echo(f"{'state_names':13} {', '.join(r.state_names)}")
    click.echo(f"{'action_names':13} {', '.join(r.action_names)}")


def _quality_after_enroll(site: Site, dataset_id: str) -> tuple[float | None, str | None]:
    """Run the quality suite on a new dataset: (score, None) or (None, why it failed)."""
    from dataspace.errors import DataspaceError

    with err.status("quality check (Great Expectations on DuckDB)"):
        from dataspace.quality.check import run_checks

        try:
            return run_checks(site, dataset_id).score, None
        except DataspaceError as e:
            return None, str(e)


__import__("dataspace.cli.policy_cmds", fromlist=["register"]).register(group)  # policy area
