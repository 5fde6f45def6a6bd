"""``dataspace quality``: check an enrolled dataset on site (issue 6).

``dataspace quality check SITE DATASET [--html FILE] [--json] [--exclude CHECK ...]``
runs the expectation suites, replaces the dataset's episode flags, signs and
stores the publishable report and logs ``quality.reported``. It prints every
check (the dataset-level ones too: licence stated, referenced files present,
...) and then each check that cost points, how many and how to fix it.
``--json`` prints one object: the publishable report plus ``report_sha256``,
``flags`` (count), ``log_index`` and ``shortfalls`` (the checks that cost
points, with ``points``, ``detail`` and ``fix``); ``--html`` writes the full
on-site page.

``dataspace quality contribution RUN_DIR --validation PATH [--quality REPORT ...]
[--json]`` computes each dataset's contribution to a finished ``dataspace train``
run (GTG-Shapley, :mod:`dataspace.federated.contribution`) on the consumer's own
episodes at PATH, writes ``RUN_DIR/contribution.json`` and ``value.json`` and
refreshes the run's ``report.json`` / ``report.png``. Each ``--quality`` is a
dataset's quality report (the JSON ``quality check --json`` prints, or the
signed report from the catalog): the value then also credits each dataset only
for its usable share (``quality_adjusted``, :mod:`dataspace.quality.value`).
``--json`` prints ``value.json``'s object.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataspace.cli._ui import escape, site_alias

err = Console(stderr=True, soft_wrap=True)  # messages name paths and hashes: never split them


@click.group(name="quality")
def group() -> None:
    """Data quality and value, computed on site; only aggregates leave."""


def _open(site: Path):
    from dataspace.site.folder import Site

    return Site.open(site)


@site_alias()
@group.command(name="check")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("dataset")
@click.option(
    "--html",
    "html",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the full (on-site) HTML report here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--exclude",
    multiple=True,
    help="Skip a check (repeatable; names as in the report's checks).",
)
def check_cmd(
    site: Path, dataset: str, html: Path | None, as_json: bool, exclude: tuple[str, ...]
) -> None:
    """Run the quality checks of DATASET at SITE; store flags and the signed report."""
    # Great Expectations takes seconds to import: only when a check really runs.
    from dataspace.quality.check import STEPS, run_checks
    from dataspace.quality.report import write_html
    from dataspace.quality.suite import CHECKS, FRAME_CHECKS

    known = sorted({*CHECKS, *FRAME_CHECKS})
    unknown = sorted(set(exclude) - set(known))
    if unknown:
        raise click.BadParameter(
            f"unknown check(s) {', '.join(unknown)}; known: {', '.join(known)}",
            param_hint="--exclude",
        )

    s = _open(site)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=as_json,
    ) as bar:
        task = bar.add_task("quality check", total=STEPS)

        def progress(done: int, total: int, msg: str) -> None:
            bar.update(task, completed=done, total=total, description=escape(msg))

        out = run_checks(s, dataset, exclude=exclude, progress=progress)
        bar.update(task, completed=STEPS, description="done")
    if html is not None:
        write_html(out.full, html)
    if as_json:
        click.echo(
            json.dumps(
                out.public
                | {
                    "report_sha256": out.report_sha256,
                    "flags": out.flags,
                    "log_index": out.log_index,
                    "shortfalls": out.full.get("shortfalls", []),
                }
            )
        )
        return
    for line in summary_lines(out.full, site, out.dataset_id):
        click.echo(line)
    click.echo(f"report sha256 {out.report_sha256}" + (f", html {html}" if html else ""))


def summary_lines(full: dict, site: Path | str, dataset_id: str) -> list[str]:
    """The text summary of a full report: dimensions, every check, and what cost points.

    A dataset-level facet (licence stated, referenced files present, joint
    names, frames readable) is listed with the suite's checks: each one that
    costs points says how many, what was found and how to fix it.
    """
    lines = [
        f"dataset {dataset_id}: score {full['score']} / 100, "
        f"{full['episodes_flagged']} of {full['episodes']} episodes flagged"
    ]
    for d in full["dimensions"]:
        lines.append(f"  {d['name']:<13} {d['gbt_36344']:<5} {d['score']}")
    suite = {c["check"] for c in full["checks"]}
    for c in full["checks"]:
        mark = "ok  " if c["success"] else "FAIL"
        lines.append(f"  {mark} {c['check']:<22} flagged {c['flagged']}")
    for d in full["dimensions"]:
        for check, score in (d.get("checks") or {}).items():
            if check in suite:
                continue
            mark = "ok  " if score >= 100 else "FAIL"
            lines.append(f"  {mark} {check:<22} {d['name']} {score:g} / 100")
    short = full.get("shortfalls") or []
    if short:
        lost = sum(s["points"] for s in short)
        lines.append(f"points lost: about {lost:.1f} (the score is the mean of the dimensions)")
        names = f"{site} {dataset_id}"
        for s in short:
            where = f"{s['dimension']} -{s['dimension_points']:.1f}"
            lines.append(f"  -{s['points']:.1f}  {s['check']} ({where}): {s['detail']}")
            lines.append(f"         fix: {s['fix'].replace('SITE DATASET', names)}")
    return lines


@site_alias()
@group.command(name="flags")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def flags_cmd(site: Path, dataset: str, as_json: bool) -> None:
    """List the episode flags of DATASET (on-site only)."""
    from dataspace.quality.check import _dataset
    from dataspace.quality.flags import list_flags

    s = _open(site)
    ds, _ = _dataset(s, dataset)
    rows = list_flags(s, ds["dataset_id"])
    if as_json:
        click.echo(
            json.dumps(
                {
                    "dataset_id": ds["dataset_id"],
                    "flags": [{"episode_index": e, "check": c, "detail": d} for e, c, d in rows],
                }
            )
        )
        return
    for e, c, d in rows:
        click.echo(f"{e}\t{c}\t{d}")


@group.command(name="contribution")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--validation",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="The consumer's own episodes (any enrollable format), held by no site.",
)
@click.option(
    "--quality",
    "quality_reports",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A dataset's quality report JSON (repeatable): credit each dataset for its usable share.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def contribution_cmd(
    run_dir: Path, validation: Path, quality_reports: tuple[Path, ...], as_json: bool
) -> None:
    """Each dataset's contribution to the run in RUN_DIR and a suggested revenue split."""
    from dataspace.connectors.detect import read_episodes
    from dataspace.federated.contribution import contribution_for_run
    from dataspace.federated.report import write_report

    quality = _quality_reports(quality_reports) if quality_reports else None
    value = contribution_for_run(run_dir, read_episodes(validation), quality=quality)
    write_report(run_dir)
    if as_json:
        click.echo(json.dumps(value, sort_keys=True))
        return
    mse = value["validation_mse"]
    click.echo(f"validation MSE {mse['initial']:.4f} -> {mse['final']:.4f} ({value['method']})")
    adjusted = value.get("quality_adjusted") or {}
    for d, c in sorted(value["contribution"].items(), key=lambda kv: -kv[1]):
        line = f"  {d}  contribution {c:+.4f}  share {value['split'][d] * 100:.0f}%"
        if d in adjusted:
            share = value["quality_adjusted_split"][d] * 100
            line += f"  usable {value['usable_share'].get(d, 1.0):.3f}"
            line += f"  quality-adjusted {adjusted[d]:+.4f} (share {share:.0f}%)"
        click.echo(line)
    click.echo(value["meaning"])
    if adjusted:
        click.echo(value["quality_meaning"])


def _quality_reports(paths: tuple[Path, ...]) -> dict[str, dict]:
    """Quality reports by dataset id; a file that is not one is a usage error."""
    out: dict[str, dict] = {}
    for p in paths:
        try:
            report = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise click.BadParameter(f"{p}: not a JSON quality report ({e})") from e
        if not isinstance(report, dict) or not isinstance(report.get("dataset_id"), str):
            raise click.BadParameter(f"{p}: no dataset_id: not a quality report")
        out[report["dataset_id"]] = report
    return out
