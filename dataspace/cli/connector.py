"""``dataspace connector``: a data holder's site (issue 2: init, enroll, list, show;
issue 14: licence, attachments; declared ranges after enrollment: ranges).

Other areas add their own subcommands (``policy``, ``budget``) to :data:`group`
from their own modules. Errors are typed (``DataspaceError``) and turned into a
message and exit code by :func:`dataspace.cli.main`. Every command names the
site by its folder, the positional ``SITE`` (``--site SITE`` is accepted too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataspace.cli._ui import escape, site_alias
from dataspace.errors import DataspaceError

if TYPE_CHECKING:
    from dataspace.site import Site

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

RANGES_HELP = (
    'A JSON file of the robot\'s feature ranges, {"observation.state": {NAME: [LO, HI]}, '
    '"action": {NAME: [LO, HI]}} by the dataset\'s own names; the quality check may only '
    "narrow its out-of-range limits to them."
)

err = Console(stderr=True, soft_wrap=True)  # messages name paths and hashes: never split them

LICENCE_HELP = (
    "The licence the holder grants, an SPDX id or expression (e.g. CC-BY-4.0, Apache-2.0, "
    "LicenseRef-NAME); the quality check counts a stated licence."
)


def _open(site: Path):
    from dataspace.site import Site

    return Site.open(site)


@click.group(name="connector")
def group() -> None:
    """A data holder's connector site: create it, enroll datasets, inspect them."""


@site_alias()
@group.command(name="init")
@click.argument("site", type=click.Path(path_type=Path))
@click.option("--org", required=True, help="The holder organisation's name.")
@click.option("--name", default=None, help="Site name (key name in signed notes; no spaces).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def init_cmd(site: Path, org: str, name: str | None, as_json: bool) -> None:
    """Create a site folder: Ed25519 key pair, DuckDB database, config. Refuses to overwrite."""
    from dataspace.site import create_site

    s = create_site(site, org=org, name=name)
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


@site_alias()
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
@click.option("--licence", "--license", "licence", default=None, help=LICENCE_HELP)
@click.option(
    "--ranges",
    "ranges_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=RANGES_HELP,
)
def enroll_cmd(
    site: Path,
    path: Path,
    fmt: str,
    name: str | None,
    as_json: bool,
    no_quality: bool,
    licence: str | None,
    ranges_file: Path | None,
    **options: object,
) -> None:
    """Read, validate, fingerprint and store the dataset at PATH in SITE.

    A newly enrolled dataset is quality-checked at once (issue: enrollment runs
    the check automatically); the dataset stays enrolled if the check fails.
    --licence states its licence (else the one the source names, if any).

    --ranges declares the robot's feature ranges (a JSON file; the catalog entry
    carries them and the quality check narrows its out-of-range limits to them).
    """
    from dataspace.connectors.enroll import enroll
    from dataspace.connectors.metadata import check_license, set_license
    from dataspace.connectors.ranges import load_ranges

    if licence is not None:
        licence = check_license(licence)  # before the (long) enrollment
    declared = load_ranges(ranges_file) if ranges_file is not None else None
    s = _open(site)
    with Progress(
        TextColumn("[bold]enrolling[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(escape(path.name), total=None)

        def progress(done: int, total: int | None, episodes: int) -> None:
            bar.update(task, completed=done, total=total)

        result = enroll(
            s,
            path,
            format=fmt,
            name=name,
            progress=progress,
            declared_ranges=declared,
            **options,
        )
    relicensed = False
    if licence is not None:
        from dataspace.site.store import get_dataset

        if get_dataset(s, result.dataset_id).license != licence:
            set_license(s, result.dataset_id, licence)
            relicensed = True
    quality, quality_error = None, None
    if (result.created or relicensed) and not no_quality:
        quality, quality_error = _quality_after_enroll(s, result.dataset_id)
    if as_json:
        out = {k: getattr(result, k) for k in ENROLL_FIELDS}
        out["created"] = result.created
        out["notes"] = list(result.notes)
        out["quality"] = quality
        if quality is not None:  # the checks that cost points (dataspace quality check: why)
            out["quality_shortfalls"] = _SHORTFALLS.get(result.dataset_id, [])
        out["license"] = licence if licence is not None else result_license(s, result.dataset_id)
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
    _print_quality(quality, quality_error, site, result.dataset_id)


def result_license(site: Site, dataset_id: str) -> str | None:
    from dataspace.site.store import get_dataset

    return get_dataset(site, dataset_id).license


@site_alias()
@group.command(name="list")
@click.argument("site", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_cmd(site: Path, as_json: bool) -> None:
    """The site's enrolled datasets (metadata only)."""
    from dataspace.site.store import list_datasets

    records = list_datasets(_open(site))
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


@site_alias()
@group.command(name="show")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_cmd(site: Path, dataset: str, as_json: bool) -> None:
    """One dataset's metadata and catalog entry (by id, fingerprint or name)."""
    from dataspace.site.store import get_dataset

    r = get_dataset(_open(site), dataset)
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


@site_alias()
@group.command(name="licence")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("dataset")
@click.argument("licence", metavar="SPDX-ID")
@click.option(
    "--no-quality",
    is_flag=True,
    help="Do not re-run the quality check (it counts the licence from its next run).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def licence_cmd(site: Path, dataset: str, licence: str, no_quality: bool, as_json: bool) -> None:
    """State the licence of DATASET at SITE: an SPDX id or expression.

    E.g. CC-BY-4.0, Apache-2.0, "MIT OR Apache-2.0", LicenseRef-ACME-internal.
    The catalog entry shows it; the quality check, re-run here, counts it
    (accessibility: licence stated).
    """
    from dataspace.connectors.metadata import set_license

    s = _open(site)
    rec = set_license(s, dataset, licence)
    quality, quality_error = (
        (None, None) if no_quality else _quality_after_enroll(s, rec.dataset_id)
    )
    if as_json:
        out = {"dataset_id": rec.dataset_id, "license": rec.license, "quality": quality}
        if quality_error:
            out["quality_error"] = quality_error
        click.echo(json.dumps(out))
        return
    click.echo(f"licence of {rec.dataset_id} ({rec.name}): {rec.license}")
    _print_quality(quality, quality_error, site, rec.dataset_id)


# the US spelling, as the JSON field is spelt: same command, not listed twice
group.add_command(
    click.Command(
        name="license",
        params=licence_cmd.params,
        callback=licence_cmd.callback,
        help=licence_cmd.help,
        hidden=True,
    )
)
site_alias(note=None)(group.commands["license"])


@site_alias()
@group.command(name="ranges")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("dataset")
@click.option(
    "--ranges",
    "ranges_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=RANGES_HELP,
)
@click.option("--clear", is_flag=True, help="Withdraw the declaration (the data's own limits).")
@click.option(
    "--no-quality",
    is_flag=True,
    help="Do not re-run the quality check (it applies the ranges from its next run).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ranges_cmd(
    site: Path,
    dataset: str,
    ranges_file: Path | None,
    clear: bool,
    no_quality: bool,
    as_json: bool,
) -> None:
    """Declare (--ranges FILE) or withdraw (--clear) the feature ranges of DATASET at SITE.

    The file is checked as `enroll --ranges` checks it, against the dataset's own
    names; the site's log records the change (dataset.ranges) before the catalog
    entry carries it. The quality check, re-run here when the declaration changed,
    narrows its out-of-range limits to the declared ranges.
    """
    from dataspace.connectors.metadata import declare_ranges
    from dataspace.connectors.ranges import load_ranges, stored_ranges

    if (ranges_file is None) == (not clear):
        raise click.UsageError("give one of --ranges FILE or --clear")
    declared = load_ranges(ranges_file) if ranges_file is not None else None
    s = _open(site)
    rec, changed = declare_ranges(s, dataset, declared, ranges_file)
    now = stored_ranges(rec.catalog)
    quality, quality_error = None, None
    if changed and not no_quality:
        quality, quality_error = _quality_after_enroll(s, rec.dataset_id)
    if as_json:
        out = {
            "dataset_id": rec.dataset_id,
            "declared_ranges": now,
            "changed": changed,
            "quality": quality,
        }
        if quality is not None:  # the checks that cost points (dataspace quality check: why)
            out["quality_shortfalls"] = _SHORTFALLS.get(rec.dataset_id, [])
        if quality_error:
            out["quality_error"] = quality_error
        click.echo(json.dumps(out))
        return
    what = "no declared ranges" if now is None else f"declared ranges {json.dumps(now)}"
    click.echo(f"{rec.dataset_id} ({rec.name}): {what}" + ("" if changed else " (unchanged)"))
    _print_quality(quality, quality_error, site, rec.dataset_id)


@site_alias()
@group.command(name="attachments")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("dataset")
@click.option(
    "--refresh",
    is_flag=True,
    help="Look for the files again (they may have been added since enrollment).",
)
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="With --refresh: the folder they are in (default: the one enrolled from).",
)
@click.option(
    "--no-quality",
    is_flag=True,
    help="With --refresh: do not re-run the quality check.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def attachments_cmd(
    site: Path,
    dataset: str,
    refresh: bool,
    source: Path | None,
    no_quality: bool,
    as_json: bool,
) -> None:
    """The files DATASET's source references (LeRobot videos): present or absent.

    The quality check's completeness dimension counts the share present. Files
    added after enrollment count once --refresh has found them.
    """
    from dataspace.connectors.metadata import refresh_attachments
    from dataspace.site.store import get_dataset

    if source is not None and not refresh:
        raise click.UsageError("--source goes with --refresh")
    s = _open(site)
    rec = refresh_attachments(s, dataset, source) if refresh else get_dataset(s, dataset)
    quality, quality_error = None, None
    if refresh and rec.attachments and not no_quality:
        quality, quality_error = _quality_after_enroll(s, rec.dataset_id)
    present = sum(1 for a in rec.attachments if a.get("present"))
    if as_json:
        out = {
            "dataset_id": rec.dataset_id,
            "attachments": rec.attachments,
            "present": present,
            "referenced": len(rec.attachments),
            "quality": quality,
        }
        if quality_error:
            out["quality_error"] = quality_error
        click.echo(json.dumps(out))
        return
    click.echo(
        f"{rec.dataset_id}: {present} of {len(rec.attachments)} referenced files present"
        + (f" (under {source or rec.source_path})" if rec.attachments else "")
    )
    for a in rec.attachments:
        click.echo(f"  {'present' if a.get('present') else 'ABSENT '} {a.get('path')}")
    _print_quality(quality, quality_error, site, rec.dataset_id)


#: the last quality check's checks that cost points, by dataset id (for _quality_line)
_SHORTFALLS: dict[str, list[str]] = {}


def _quality_after_enroll(site: Site, dataset_id: str) -> tuple[float | None, str | None]:
    """Run the quality suite on a dataset: (score, None) or (None, why it failed)."""
    with err.status("quality check (Great Expectations on DuckDB)"):
        from dataspace.quality.check import run_checks

        try:
            out = run_checks(site, dataset_id)
        except DataspaceError as e:
            return None, str(e)
    _SHORTFALLS[dataset_id] = [s["check"] for s in out.full.get("shortfalls") or []]
    return out.score, None


def _print_quality(
    quality: float | None, quality_error: str | None, site: Path, dataset_id: str
) -> None:
    """The re-run quality check's line (:func:`_quality_line`), or why it failed (stderr);
    nothing when it was not run."""
    if quality is not None:
        click.echo(_quality_line(quality, site, dataset_id))
    elif quality_error:
        err.print(f"quality check failed: {quality_error}", highlight=False, markup=False)


def _quality_line(quality: float, site: Path, dataset_id: str) -> str:
    """``quality S / 100``, naming the checks that cost points and where the details are."""
    lost = _SHORTFALLS.get(dataset_id) or []
    why = f"; points lost to {', '.join(lost)}" if lost else ""
    return f"quality {quality} / 100{why} (details: dataspace quality check {site} {dataset_id})"


__import__("dataspace.cli.policy_cmds", fromlist=["register"]).register(group)  # policy area
