"""``dataspace connector policy`` and ``dataspace connector budget`` (attached by :func:`register`).

They live here, not in ``connector.py``, because the policy area owns them;
``connector.py`` calls :func:`register` on its group.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from dataspace.cli._ui import ACTIONS, TEMPLATE_NAMES, site_alias
from dataspace.policy.odrl import build_policy
from dataspace.site.identity import load_identity


def _open(site: Path):
    from dataspace.site.folder import Site

    return Site.open(site)


def parse_until(value: str) -> datetime:
    """A CLI date: ``2027-01-01`` (midnight UTC) or an ISO date-time (UTC if no zone)."""
    try:
        dt = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError as e:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date or date-time") from e
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


@site_alias()
@click.command(name="policy")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("dataset")
@click.option(
    "--file",
    "file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="An ODRL JSON-LD policy document (docs/odrl-profile.md).",
)
@click.option("--purpose", default=None, help="Permitted purposes, comma separated.")
@click.option(
    "--consumer", default=None, help="Permitted consumers' identity files, comma separated."
)
@click.option("--epsilon", type=float, default=None, help="The dataset's whole-life epsilon.")
@click.option("--delta", type=float, default=None, help="The dataset's whole-life delta.")
@click.option("--until", default=None, help="Expiry date (ISO 8601; a date is midnight UTC).")
@click.option("--max-rounds", type=int, default=None, help="Most rounds one contract may have.")
@click.option(
    "--templates",
    default=None,
    help=f"Permitted model templates, comma separated ({', '.join(TEMPLATE_NAMES)}).",
)
@click.option(
    "--actions",
    default="train",
    show_default=True,
    help=f"Permitted actions, comma separated ({', '.join(ACTIONS)}).",
)
@click.option(
    "--manual-approval", is_flag=True, help="Hold every contract for the holder's approval."
)
@click.option(
    "--require-secagg",
    is_flag=True,
    help="Every training round must run under SecAgg+ (ODRL: aggregation eq secure); "
    "the sites refuse, logged and uncharged, a round without it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def policy(
    site: Path,
    dataset: str,
    file: Path | None,
    purpose: str | None,
    consumer: str | None,
    epsilon: float | None,
    delta: float | None,
    until: str | None,
    max_rounds: int | None,
    templates: str | None,
    actions: str,
    manual_approval: bool,
    require_secagg: bool,
    as_json: bool,
) -> None:
    """Set DATASET's usage policy (from --file or from flags); without either, print it."""
    from dataspace.policy.policies import current_policy, publish_policy
    from dataspace.site.store import get_dataset

    s = _open(site)
    flags = (purpose, consumer, epsilon, delta, until, max_rounds, templates)
    if file is None and all(f is None for f in flags) and not (manual_approval or require_secagg):
        doc = current_policy(s, dataset).to_jsonld()
        click.echo(json.dumps(doc) if as_json else json.dumps(doc, indent=2))
        return
    ds = get_dataset(s, dataset)
    if file is not None:
        if any(f is not None for f in flags):
            raise click.UsageError("give --file or the policy flags, not both")
        if require_secagg:  # a document states it itself, in its train permission
            raise click.UsageError(
                "--require-secagg is a policy flag: with --file, put the constraint "
                "aggregation eq secure in the document's train permission"
            )
        # the raw document goes to publish_policy, which reports and logs what is wrong
        doc: Any = file.read_bytes()
        if manual_approval:
            with contextlib.suppress(ValueError):
                doc = json.loads(doc)
                if isinstance(doc, dict):
                    doc["approval"] = "manual"
        pub = publish_policy(s, doc, dataset_id=ds.dataset_id)
    else:
        if epsilon is None or delta is None:
            raise click.UsageError("--epsilon and --delta are required (the privacy budget)")
        built = build_policy(
            dataset_id=ds.dataset_id,
            fingerprint=ds.fingerprint,
            assigner=s.identity.key_b64,
            epsilon=epsilon,
            delta=delta,
            purposes=_csv(purpose),
            consumers=[load_identity(Path(p)).key_b64 for p in _csv(consumer)],
            until=parse_until(until) if until else None,
            max_rounds=max_rounds,
            templates=_csv(templates),
            actions=_csv(actions),
            manual_approval=manual_approval,
            secure_aggregation=require_secagg,
        )
        pub = publish_policy(s, built)
    parsed = pub.policy
    out = {
        "dataset_id": parsed.dataset_id,
        "fingerprint": parsed.fingerprint,
        "policy_sha256": pub.policy_sha256,
        "epsilon": parsed.budget_epsilon,
        "delta": parsed.budget_delta,
        "manual_approval": parsed.manual_approval,
        "log_index": pub.log_index,
        "policy": parsed.to_jsonld(),
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        click.echo(
            f"policy {pub.policy_sha256[:16]} published for {parsed.dataset_id}: "
            f"epsilon {parsed.budget_epsilon:g}, delta {parsed.budget_delta:g}"
            + (", manual approval" if parsed.manual_approval else "")
            + (", SecAgg+ required" if require_secagg else "")
        )


@site_alias()
@click.command(name="budget")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("dataset", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def budget(site: Path, dataset: str | None, as_json: bool) -> None:
    """Privacy budget, reserved, spent and remaining epsilon (and delta) per dataset."""
    from dataspace.policy.ledger import budget_report

    rows = budget_report(_open(site), dataset)
    if as_json:
        click.echo(json.dumps({"datasets": [r.to_json() for r in rows]}))
        return
    if not rows:
        click.echo("no dataset of this site has a usage policy yet")
        return
    table = [("dataset", "budget", "reserved", "spent", "remaining", "delta left", "contracts")]
    for r in rows:
        table.append(
            (
                r.dataset_id,
                f"{r.budget:g}",
                f"{r.reserved:g}",
                f"{r.spent:g}",
                f"{r.remaining:g}",
                f"{r.delta_remaining:.3g}",
                str(r.live_contracts),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


_COMMANDS = (policy, budget)


def register(group: click.Group) -> None:
    """Attach ``policy`` and ``budget`` to the ``connector`` group."""
    for c in _COMMANDS:
        group.add_command(c)
