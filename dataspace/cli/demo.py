"""``dataspace demo``: the whole data space on one machine, on real robot data (issue 7).

    dataspace demo [--workdir DIR] [--sites 3] [--rounds N] [--epsilon E]
                   [--engine hub|deployment|simulation] [--simulate]
                   [--services] [--hub URL] [--port N] [--json]

The work is :func:`dataspace.demo.run_demo`; this module shows its progress on
stderr, then a summary table and the path of the HTML report (or, with
``--json``, one JSON object on stdout).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from dataspace.cli._ui import Col, escape, out_console, print_table

err = Console(stderr=True, soft_wrap=True)  # messages name paths and hashes: never split them


def _f(v: float | None, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


SUMMARY_COLUMNS = (
    Col("site", ident=True),
    Col("episodes", justify="right"),
    Col("quality", justify="right"),
    Col("ε run", justify="right"),
    Col("ε spent", justify="right"),
    Col("ε left", justify="right"),
    Col("held-out (DP)", justify="right"),
    Col("contribution (share)", justify="right"),
    Col("log"),
)


def summary_rows(result) -> list[tuple[Text | str, ...]]:
    """One row per site of the demo's summary (no markup: names print as they are)."""
    rows = []
    for s in result.sites:
        if s.log_verified:
            log = Text(str(s.log_status), style="green") + Text(f" ({s.log_size})")
        else:
            log = Text("FAILED", style="red") + Text(f" {s.log_problem}")
        rows.append(
            (
                Text(str(s.site)) + Text(f" ep {s.episode_range}", style="dim"),
                Text(str(s.episodes)) + Text(f" ({s.frames} fr)", style="dim"),
                _f(s.quality, 0),
                _f(s.epsilon_run, 2),
                _f(s.epsilon_spent, 2),
                f"{_f(s.epsilon_left, 2)} / {_f(s.epsilon_budget, 0)}",
                _f(s.heldout_mse, 4),
                f"{_f(s.contribution, 4)} ({_f((s.share or 0) * 100, 0)}%)",
                log,
            )
        )
    return rows


def summary_title(result) -> str:
    return f"dataspace demo — run {result.run_id} ({result.engine})"


def print_summary(console: Console, result) -> None:
    """A table when it fits the terminal unbroken, else one block per site."""
    print_table(console, summary_title(result), SUMMARY_COLUMNS, summary_rows(result))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command(name="demo")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("demo-work"),
    show_default=True,
    help="Where the hub, the sites, the runs and the report go (reused when rerun).",
)
@click.option("--sites", type=int, default=3, show_default=True, help="Number of holder sites.")
@click.option("--rounds", type=int, default=3, show_default=True, help="Federated rounds.")
@click.option(
    "--epsilon", type=float, default=8.0, show_default=True, help="Epsilon of each contract."
)
@click.option(
    "--engine",
    type=click.Choice(["hub", "deployment", "simulation"]),
    default=None,
    help="How to train: hub (default: the consumer trains through the hub's SuperLink, "
    "the holders' SuperNodes train; processes on 127.0.0.1), deployment (Flower's "
    "deployment engine without the hub; the default with --hub URL), simulation.",
)
@click.option(
    "--simulate",
    is_flag=True,
    help="Same as --engine simulation: one process (the holder's or developer's local mode).",
)
@click.option(
    "--services",
    is_flag=True,
    help="Also run the hub and the connectors as services on 127.0.0.1 (contracts over HTTP).",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the hub and connectors up afterwards (dashboard) until Ctrl-C; implies --services.",
)
@click.option("--hub", "hub_url", default=None, help="Use this running hub instead of a new one.")
@click.option(
    "--port", type=int, default=0, help="Port of the demo hub (implies --services; default: free)."
)
@click.option(
    "--episodes-per-site",
    type=click.IntRange(1),
    default=12,
    show_default=True,
    help="Episodes of the recording each site holds (one contiguous session).",
)
@click.option(
    "--data",
    "source",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="LeRobot v2.1 recording to split (default: ../shared/data, else the bundled sample).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def command(
    workdir: Path,
    sites: int,
    rounds: int,
    epsilon: float,
    engine: str | None,
    simulate: bool,
    services: bool,
    serve: bool,
    hub_url: str | None,
    port: int,
    episodes_per_site: int | None,
    source: Path | None,
    as_json: bool,
) -> None:
    """Run the whole data space on bundled real robot data, end to end.

    Creates a hub and SITES connector sites from a real robot recording, enrolls
    and quality-checks their datasets, publishes usage policies, agrees contracts,
    trains a DP federated policy, verifies every audit log as an auditor would,
    and writes WORKDIR/report.html.
    """
    from dataspace.demo import DemoOptions, run_demo

    # a SIGTERM unwinds like Ctrl-C, so the services and Flower processes are stopped
    signal.signal(signal.SIGTERM, _interrupt)

    opts = DemoOptions(
        workdir=workdir,
        sites=sites,
        rounds=rounds,
        epsilon=epsilon,
        simulate=simulate,
        engine="simulation" if simulate else engine,
        services=services or serve or bool(port),
        keep_services=serve,
        hub_url=hub_url,
        port=port,
        episodes_per_site=episodes_per_site,
        source=source,
    )
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=None)

        def step(msg: str) -> None:
            progress.update(task, description=escape(msg))
            if not err.is_terminal:
                err.print(f"· {msg}", highlight=False, markup=False)

        result = run_demo(opts, step)
    if as_json:
        click.echo(json.dumps(result.to_json(), sort_keys=True))
    else:
        out = out_console()
        print_summary(out, result)
        if result.engine_note:
            out.print(f"[yellow]note:[/yellow] {escape(result.engine_note)}")
        out.print(
            f"global model: held-out MSE {_f(result.heldout_mse, 4)}; consumer's validation "
            f"MSE {_f(result.validation_mse['initial'], 4)} -> "
            f"{_f(result.validation_mse['final'], 4)}; sha256 {result.model_sha256}",
            highlight=False,
            markup=False,
        )
        out.print(
            "data: one real recording (Unitree G1) split by episode ranges, i.e. recording "
            f"sessions, over {len(result.sites)} sites (one embodiment for one model): "
            f"{result.source}" + (" (bundled sample)" if result.bundled_sample else ""),
            highlight=False,
            markup=False,
        )
        anchored = sum(a["ok"] and a["anchored"] for a in result.audit)
        consistent = sum(a["ok"] and not a["anchored"] for a in result.audit)
        out.print(
            f"audit: {anchored}/{len(result.audit)} logs verified with public keys only"
            + (
                f", {consistent} self-consistent only (no witness ran: `--services` runs them)"
                if consistent
                else ""
            )
            + f"; took {result.seconds} s",
            highlight=False,
            markup=False,
        )
        out.print(f"report: {result.report_html}", highlight=False, markup=False)
    svc = getattr(result, "services", None)
    if svc is not None:
        err.print(
            f"dashboard: {svc.dashboard_url} (Ctrl-C stops the services)",
            highlight=False,
            markup=False,
        )
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            svc.stop()
    if not result.verified:
        raise SystemExit(1)
