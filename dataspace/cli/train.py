"""``dataspace train``: a consumer's federated DP training run (issue 5).

    dataspace train --hub URL --key KEY --contract ID[,ID...] [--template bc-mlp]
                    [--rounds N] [--out DIR] [--run-id R] [--min-sites N]
                    [--connect-timeout SECONDS]
                    [--superlink HOST:PORT --root-certificates CA] [--seed S] [--secagg]
                    [--validation PATH] [--stats-from PATH] [--json]
    dataspace train SITE... --contract ID[,ID...] ...        (local mode)

Two modes, one report:

* ``--hub URL --key KEY`` (the consumer's): from the consumer's own machine,
  through the hub. The hub's registry says each contract's holder (a contract that
  is not the caller's, or not agreed, is refused); the run is registered at the hub
  and submitted to its Flower SuperLink (``flwr run``; address and CA from the hub,
  or ``--superlink HOST:PORT --root-certificates CA``); rounds are reported as the
  hub's copy of the run directory grows; at the end its files are downloaded into
  OUT and the hub logs ``run.finished`` with the final model's SHA-256
  (:class:`dataspace.federated.remote.HubEngine`). The consumer reads no site
  folder and reaches no site. A run that cannot go on names the holders that took
  no part (offline or refused); ``--min-sites N`` lets it go on with N of them.
  ``--run-id R`` resubmits run R, which resumes after its last completed round.
* ``SITE...`` (the holder's or a developer's local mode: site folders on this
  machine, positional as in every command; the older spelling ``--simulate SITE``,
  once per site, is still accepted) runs the ServerApp and each site's ClientApp in
  this process (the connector's code, reading each site's own store and ledger).

Both write into OUT the model (``model.pt``, its SHA-256 in ``report.json``),
``report.json`` and ``report.png``; each site's ledger logs round.started /
round.finished.
``--secagg`` aggregates with SecAgg+ (:mod:`dataspace.federated.secagg`): no
single site's update reaches the server, and none is kept in OUT.
``--validation PATH`` (the consumer's own episodes, held by no site) computes
each dataset's contribution after the run (GTG-Shapley,
:func:`dataspace.federated.contribution.run_contributions`) into
``OUT/contribution.json`` and ``value.json``; ``report.json`` shows it.
``--stats-from PATH`` (the consumer's own episodes in any format the
connectors read, or a JSON file ``{"state_mean", "state_std", "action_mean",
"action_std"}``) normalises with statistics computed here from the
consumer's data (:mod:`dataspace.federated.public_stats`): the sites then
release no statistics and spend the whole epsilon on training
(``report.json`` ``stats_source``: ``"public"``, else ``"dp"``).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataspace.cli._ui import TEMPLATE_NAMES, escape, site_alias
from dataspace.site.identity import load_private_key

err = Console(stderr=True, soft_wrap=True)  # messages name paths and hashes: never split them


@site_alias(
    "--simulate",
    "--site",
    note="SITE... are the site folders to train on, in this process (positional as in every "
    "command; the older spelling --simulate SITE, once per site, is still accepted).",
)
@click.command(name="train")
@click.argument(
    "sites",
    metavar="[SITE]...",
    nargs=-1,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--contract", "contracts", required=True, help="Contract id(s), comma-separated.")
@click.option(
    "--template",
    default="bc-mlp",
    show_default=True,
    help=f"Model template: {' or '.join(TEMPLATE_NAMES)} (the contracts' policies must allow it).",
)
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--hub",
    default=None,
    help="Hub URL: train from this machine through the hub (its SuperLink runs the run).",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DATASPACE_KEY",
    default=None,
    help="With --hub: the consumer's identity key (default: $DATASPACE_KEY).",
)
@click.option(
    "--superlink",
    default=None,
    help="With --hub: HOST:PORT of the hub's SuperLink (default: what the hub names).",
)
@click.option(
    "--root-certificates",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --hub: CA certificate of the SuperLink's TLS (default: the hub's).",
)
@click.option(
    "--min-sites",
    type=click.IntRange(1),
    default=None,
    help="With --hub: go on with at least N sites (default: every contract's).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(1, 86_400),
    default=120.0,
    show_default=True,
    help="Seconds a round waits for the sites to be connected before it goes on with those "
    "there (at least --min-sites) or stops, naming the others.",
)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    help="Peak learning rate of the recipe's optimizer (default: DP-Adam's 3e-3).",
)
@click.option("--run-id", default=None, help="Resume this run (its OUT must exist).")
@click.option(
    "--secagg",
    is_flag=True,
    help="Secure aggregation (Flower's SecAgg+): the server sees only the weighted sum of "
    "the sites' updates.",
)
@click.option(
    "--validation",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="The consumer's own episodes: compute each dataset's contribution (GTG-Shapley).",
)
@click.option(
    "--stats-from",
    "stats_from",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Normalise with statistics of the consumer's own data (a dataset folder or file, or "
    "a JSON file of state_mean/state_std/action_mean/action_std): no site releases any.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def command(
    contracts: str,
    template: str,
    rounds: int,
    sites: tuple[Path, ...],
    hub: str | None,
    key_path: Path | None,
    superlink: str | None,
    root_certificates: Path | None,
    min_sites: int | None,
    connect_timeout: float,
    out_dir: Path | None,
    seed: int,
    lr: float | None,
    run_id: str | None,
    secagg: bool,
    validation: Path | None,
    stats_from: Path | None,
    as_json: bool,
) -> None:
    """Train a policy across the contracts' sites with DP-SGD and FedAvg."""
    from dataspace.federated import RunSpec, train
    from dataspace.federated.report import write_report
    from dataspace.federated.templates import get_template

    get_template(template)  # unknown names fail before anything starts
    ids = [c.strip() for c in contracts.split(",") if c.strip()]
    if hub and sites:
        raise click.UsageError("give either --hub URL (a consumer) or SITE... (local mode)")
    if not hub and not sites:
        raise click.UsageError("give --hub URL (train through the hub) or SITE... (local mode)")
    if not hub and (key_path or superlink or root_certificates or min_sites):
        raise click.UsageError("--key, --superlink, --root-certificates, --min-sites need --hub")
    if hub and key_path is None:
        raise click.UsageError("--hub needs --key (the consumer's key, or $DATASPACE_KEY)")
    if validation is not None and secagg:
        raise click.UsageError("--validation needs each site's update; --secagg keeps none")
    if stats_from is not None and secagg:
        raise click.UsageError(
            "--stats-from with --secagg is not supported yet: SecAgg+ sizes its weight range "
            "from the DP statistics round"
        )
    public = None
    if stats_from is not None:
        public = _public_stats(stats_from)  # before anything starts
    run_id = run_id or f"run-{uuid.uuid4().hex[:12]}"
    out = out_dir or Path("runs") / run_id
    engine = "simulation"
    if hub:
        from dataspace.federated.remote import HubEngine

        engine = HubEngine(hub, load_private_key(key_path), superlink, root_certificates, min_sites)
    with Progress(
        TextColumn("[bold]round"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        disable=as_json and not err.is_terminal,
    ) as progress:
        task = progress.add_task("statistics", total=rounds)

        def on_round(r: dict) -> None:
            eps = max(r["epsilon"].values(), default=0.0)
            progress.update(
                task,
                advance=1,
                description=(
                    f"loss {r['train_loss']:.4f} held-out {r['eval_mse']:.4f} eps {eps:.2f}"
                ),
            )

        try:
            spec = RunSpec(
                contracts=ids, template=template, rounds=rounds, out_dir=str(out), run_id=run_id,
                seed=seed, lr=lr, secagg=secagg, public_stats=public,
                connect_timeout=connect_timeout,
            )  # fmt: skip
            history = train(spec, list(sites), engine, on_round)
            if validation is not None:
                from dataspace.connectors.detect import read_episodes
                from dataspace.federated.contribution import contribution_for_run

                progress.update(task, description="contributions (GTG-Shapley)")
                contribution_for_run(out, read_episodes(validation))
        finally:
            if (out / "history.json").exists():
                report = write_report(out)
    for site in history.get("absent", []):  # through the hub, with --min-sites
        err.print(f"[yellow]took no part:[/yellow] {escape(site)}", highlight=False)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    click.echo(f"run {report['run_id']}: {report['status']}, {len(report['rounds'])} rounds")
    click.echo(f"model: {out / 'model.pt'} sha256 {report['model']['sha256']}")
    click.echo(f"held-out MSE: {report['heldout_mse']:.5f}")
    click.echo(f"normalisation statistics: {report.get('stats_source') or 'dp'}")
    units = report.get("privacy_unit") or {}
    for d, e in sorted(report["epsilon"].items()):
        click.echo(f"epsilon {d}: {e:.3f} (per {units.get(d, 'frame')})")
    for d, c in sorted((report.get("contribution") or {}).items()):
        share = (report.get("contribution_split") or {}).get(d, 0.0)
        click.echo(f"contribution {d}: {c:+.4f} (suggested share {share * 100:.0f}%)")
    click.echo(f"report: {out / 'report.json'}, plot: {out / 'report.png'}")
    if (out / "lerobot" / "config.json").exists():
        click.echo(
            f"policy for LeRobot: {out / 'lerobot'} (or dataspace.load_policy({str(out)!r}))"
        )


def _public_stats(path: Path):
    """``--stats-from``: a JSON file of the four lists, or a dataset of the consumer's own
    in any enrollable format (its statistics computed exactly: the data is the consumer's)."""
    from dataspace.federated import public_stats

    if path.is_file() and path.suffix.lower() == ".json":
        return public_stats.load_public_stats(path)
    from dataspace.connectors.detect import read_episodes

    episodes = read_episodes(path)
    return public_stats.check_stats(public_stats.stats_from_episodes(episodes), where=str(path))
