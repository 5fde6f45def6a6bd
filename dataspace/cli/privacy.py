"""``dataspace privacy-audit``: the holder's empirical check of the DP guarantee (issue 8).

    dataspace privacy-audit SITE DATASET [--epsilon E | --no-dp] [--delta D]
        [--canaries M] [--rounds R] [--epochs K] [--hidden 256,256]
        [--max-frames N] [--confidence C] [--seed S] [--json]

Trains the dataset's model template with canary frames randomly in and out
(one run, Steinke et al. 2023), runs a loss-based membership-inference attack
and prints the attack's AUC and the empirical epsilon lower bound next to the
accountant's epsilon. Nothing leaves the site: the frames are read locally and
only these numbers are printed. Exit code 3 when the empirical bound exceeds
the accountant's epsilon (the accounting would be wrong).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from dataspace.cli._ui import site_alias

err = Console(stderr=True, soft_wrap=True)  # messages name paths and hashes: never split them


@site_alias()
@click.command(name="privacy-audit")
@click.argument("site", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dataset")
@click.option(
    "--epsilon",
    type=click.FloatRange(min=0, min_open=True),
    default=8.0,
    show_default=True,
    help="Target epsilon of the DP training.",
)
@click.option("--no-dp", is_flag=True, help="Train without DP (the leakage baseline).")
@click.option(
    "--delta",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=1e-5,
    show_default=True,
)
@click.option("--canaries", type=click.IntRange(10, 100_000), default=500, show_default=True)
@click.option("--rounds", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option(
    "--epochs",
    type=click.IntRange(1, 10_000),
    default=4,
    show_default=True,
    help="Local epochs per round.",
)
@click.option("--hidden", default="256,256", show_default=True, help="Hidden layer widths.")
@click.option(
    "--max-frames",
    type=click.IntRange(1),
    default=None,
    help="Train on the first N real frames only.",
)
@click.option(
    "--confidence", type=click.FloatRange(0.5, 1, max_open=True), default=0.95, show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(
    site: Path,
    dataset: str,
    epsilon: float,
    no_dp: bool,
    delta: float,
    canaries: int,
    rounds: int,
    epochs: int,
    hidden: str,
    max_frames: int | None,
    confidence: float,
    seed: int,
    as_json: bool,
) -> None:
    """Empirical privacy audit: canaries, membership inference, epsilon lower bound."""
    try:
        widths = tuple(int(w) for w in hidden.split(",") if w.strip())
    except ValueError:
        raise click.BadParameter(f"{hidden!r}: expected widths like 256,256") from None
    if not widths or any(not 1 <= w <= 4096 for w in widths):
        raise click.BadParameter(f"{hidden!r}: widths must be 1..4096", param_hint="--hidden")
    # torch and Opacus load only when an audit really runs (not for `dataspace --help`)
    from dataspace.assurance.privacy_audit import AuditConfig, audit_site
    from dataspace.site.folder import Site

    cfg = AuditConfig(
        epsilon=None if no_dp else epsilon, delta=delta, canaries=canaries, rounds=rounds,
        epochs=epochs, hidden=widths, max_frames=max_frames, confidence=confidence, seed=seed,
    )  # fmt: skip
    with err.status("training with canaries and attacking"):
        res = audit_site(Site.open(site), dataset, cfg)
    out = res.to_json()
    if as_json:
        click.echo(json.dumps(out, sort_keys=True))
    else:
        acc = "none (no DP)" if res.accountant_epsilon is None else f"{res.accountant_epsilon:.3f}"
        click.echo(f"accountant epsilon:  {acc}  (delta {res.delta:g})")
        click.echo(
            f"empirical epsilon:   {res.empirical_epsilon:.3f}  (lower bound, "
            f"{res.confidence:.0%} confidence, {res.correct}/{res.guesses} guesses right)"
        )
        click.echo(f"attack AUC:          {res.auc:.3f}  ({res.canaries} canaries, "
                   f"{res.included} in training)")  # fmt: skip
    if res.accountant_epsilon is not None and res.empirical_epsilon > res.accountant_epsilon:
        raise click.exceptions.Exit(3)
