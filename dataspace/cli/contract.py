"""``dataspace contract``: ask for, list, approve and reject contracts.

``SITE`` (the holder's site folder, positional as in every command; the older
``--site SITE`` is still accepted) runs both sides on this machine (the holder's
site and the consumer's key). ``--connector URL`` talks to a holder's connector
service (:func:`_request_via_connector`, provided with the services).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dataspace.auth.client import ServiceRefusedError
from dataspace.cli._ui import ACTIONS, TEMPLATE_NAMES, site_alias
from dataspace.cli.policy_cmds import parse_until
from dataspace.connectors.client import contracts_via_hub, request_via_connector
from dataspace.policy.terms import ContractTerms
from dataspace.site.identity import load_identity, load_private_key

if TYPE_CHECKING:
    from dataspace.policy.contracts import Contract, OfferRequest


def _open(site: Path):
    from dataspace.site.folder import Site

    return Site.open(site)


@click.group(name="contract")
def group() -> None:
    """Contracts between a dataset's holder and a consumer."""


def _request_via_connector(
    connector: str, request: OfferRequest, key_file: Path, as_json: bool
) -> dict[str, Any]:
    """Ask a holder's connector service (dataspace.connectors.client, signed requests)."""
    return request_via_connector(
        connector,
        load_private_key(key_file),
        dataset=request.dataset_id,
        **request.terms.as_dict(),
    )


@site_alias(
    note="SITE is the holder's site folder, on this machine (positional in every command; "
    "the older spelling --site SITE is still accepted); --connector URL asks its service instead."
)
@group.command(name="request")
@click.argument("site", type=click.Path(path_type=Path), required=False)
@click.option("--connector", default=None, help="The holder's connector service URL.")
@click.option("--dataset", required=True, help="Dataset id (or name).")
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(path_type=Path),
    help="The consumer's private key file.",
)
@click.option("--purpose", required=True)
@click.option("--epsilon", type=float, required=True, help="Epsilon wanted for the contract.")
@click.option("--rounds", type=int, required=True, help="Training rounds wanted.")
@click.option(
    "--template",
    default=None,
    help=f"Model template the policy must allow ({', '.join(TEMPLATE_NAMES)}).",
)
@click.option("--until", required=True, help="Contract end (ISO 8601; a date is midnight UTC).")
@click.option(
    "--delta",
    type=float,
    default=None,
    help="Delta wanted (default: the share of delta the epsilon is of the budget).",
)
@click.option("--action", default="train", type=click.Choice(ACTIONS), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def request_cmd(
    site: Path | None,
    connector: str | None,
    dataset: str,
    key_file: Path,
    purpose: str,
    epsilon: float,
    rounds: int,
    template: str | None,
    until: str,
    delta: float | None,
    action: str,
    as_json: bool,
) -> None:
    """Ask for a contract; prints the countersigned agreement or exits non-zero with the reason."""
    from dataspace.policy.contracts import OfferRefusedError, OfferRequest, negotiate

    if (site is None) == (connector is None):
        raise click.UsageError("give either SITE (a site folder) or --connector URL")
    req = OfferRequest(
        dataset_id=dataset,
        consumer=load_identity(key_file),
        terms=ContractTerms(
            purpose=purpose,
            epsilon=epsilon,
            rounds=rounds,
            until=parse_until(until),
            template=template,
            action=action,
            delta=delta,
        ),
    )
    if connector is not None:
        try:
            out = _request_via_connector(connector, req, key_file, as_json)
        except ServiceRefusedError as e:
            if as_json:
                click.echo(json.dumps({"allowed": False, "reasons": [e.detail]}))
            raise
    else:
        assert site is not None
        try:
            contract = negotiate(_open(site), req, load_private_key(key_file))
        except OfferRefusedError as e:
            if as_json:
                click.echo(json.dumps({"allowed": False, "reasons": list(e.reasons)}))
            raise
        out = contract.to_json()
    _emit(out, as_json)
    if out.get("state") == "pending":
        click.echo("pending: the holder must approve this contract", err=True)


def _emit(obj: dict[str, Any], as_json: bool) -> None:
    click.echo(json.dumps(obj) if as_json else json.dumps(obj, indent=2))


def _summary(c: Contract) -> tuple[str, ...]:
    return (
        c.terms.contract_id,
        c.state,
        c.terms.dataset_id,
        c.consumer.name,
        c.terms.purpose,
        c.terms.template or "-",
        f"{c.terms.epsilon:g}",
        str(c.terms.rounds),
        c.terms.until.date().isoformat(),
    )


@site_alias(
    note="SITE is the holder's site folder (positional in every command; the older "
    "spelling --site SITE is still accepted); --hub URL lists at the hub instead."
)
@group.command(name="list")
@click.argument("site", type=click.Path(path_type=Path), required=False)
@click.option("--hub", "hub_url", default=None, help="List at the hub instead (needs --key).")
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path),
    envvar="DATASPACE_KEY",
    default=None,
    help="Key that signs the hub request (default: $DATASPACE_KEY).",
)
@click.option(
    "--consumer",
    "consumer_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Only this consumer's contracts (its identity file).",
)
@click.option("--dataset", default=None, help="Only this dataset's contracts.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_cmd(
    site: Path | None,
    hub_url: str | None,
    key_file: Path | None,
    consumer_file: Path | None,
    dataset: str | None,
    as_json: bool,
) -> None:
    """The site's contracts, newest first (or, with --hub, those the hub shows --key)."""
    from dataspace.policy.contracts import list_contracts

    if (site is None) == (hub_url is None):
        raise click.UsageError("give either SITE (a site folder) or --hub URL")
    if hub_url is not None:
        if key_file is None:
            raise click.UsageError("--hub needs --key (or $DATASPACE_KEY)")

        rows = contracts_via_hub(hub_url, load_private_key(key_file), dataset)
        if as_json:
            click.echo(json.dumps({"contracts": rows}))
            return
        for c in rows:
            click.echo(
                f"{c['contract_id']}  {c['state']}  {c['dataset_id']}  {c['purpose']}  "
                f"eps {c['epsilon']:g}  until {c['until']}"
            )
        if not rows:
            click.echo("no contracts")
        return
    consumer = load_identity(consumer_file).key_b64 if consumer_file else None
    cs = list_contracts(_open(site), consumer=consumer, dataset_id=dataset)
    if as_json:
        click.echo(json.dumps({"contracts": [c.to_json() for c in cs]}))
        return
    if not cs:
        click.echo("no contracts")
        return
    rows = [
        (
            "contract",
            "state",
            "dataset",
            "consumer",
            "purpose",
            "template",
            "eps",
            "rounds",
            "until",
        )
    ]
    rows += [_summary(c) for c in cs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@site_alias()
@group.command(name="show")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("contract_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def show_cmd(site: Path, contract_id: str, as_json: bool) -> None:
    """One contract: terms, signatures and state."""
    from dataspace.policy.contracts import load_contract

    _emit(load_contract(_open(site), contract_id).to_json(), as_json)


@site_alias()
@group.command(name="approve")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("contract_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def approve_cmd(site: Path, contract_id: str, as_json: bool) -> None:
    """Approve a pending contract (the holder signs; its epsilon is reserved)."""
    from dataspace.policy.contracts import approve

    _emit(approve(_open(site), contract_id).to_json(), as_json)


@site_alias()
@group.command(name="reject")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("contract_id")
@click.option("--reason", default="rejected by the holder", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def reject_cmd(site: Path, contract_id: str, reason: str, as_json: bool) -> None:
    """Reject a pending contract (logged as access.refused)."""
    from dataspace.policy.contracts import reject

    _emit(reject(_open(site), contract_id, reason).to_json(), as_json)


@site_alias()
@group.command(name="revoke")
@click.argument("site", type=click.Path(path_type=Path))
@click.argument("contract_id")
@click.option("--reason", default="revoked by the holder", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def revoke_cmd(site: Path, contract_id: str, reason: str, as_json: bool) -> None:
    """End an agreed contract: no more rounds; its unspent epsilon is released."""
    from dataspace.policy.contracts import revoke

    _emit(revoke(_open(site), contract_id, reason).to_json(), as_json)
