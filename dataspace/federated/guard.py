"""The one gate before a site's data is touched (the policy area's ledger).

Every release a ClientApp makes (statistics, a round) goes through
:func:`authorize_round` BEFORE any frame is read: the ledger's privacy filter
(:func:`dataspace.policy.ledger.charge_round`) checks that the contract is
live, the round within its rounds, never charged before, and that the
contract's (epsilon, delta) still covers everything it released plus this;
then it writes the charge durably and logs ``round.started`` with the
mechanism; or it logs ``access.refused`` and raises. Charging before the work
means a crashed round still counts; a (run, round) executes at most once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from dataspace.policy.contracts import Contract
from dataspace.policy.contracts import load_contract as _load_contract
from dataspace.policy.ledger import Charge, charge_round
from dataspace.site.folder import Site


def held_contracts(site: Site, contract_ids: Sequence[str]) -> set[str]:
    """Which of ``contract_ids`` this site holds (one query, whatever their number)."""
    ids = sorted(set(contract_ids))
    if not ids:
        return set()
    with site.db(read_only=True) as con:
        try:
            rows = con.execute(
                "SELECT contract_id FROM contracts WHERE list_contains(?, contract_id)", [ids]
            ).fetchall()
        except duckdb.CatalogException:  # a site with no contracts table yet
            return set()
    return {r[0] for r in rows}


def load_contract(site: Site, contract_id: str) -> Contract:
    """The contract from the site's registry (metadata only, no data read)."""
    return _load_contract(site, contract_id)


def authorize_round(
    site: Site,
    contract_id: str,
    run_id: str,
    round_no: int,
    releases: Sequence[Sequence[float]],
    **kw: Any,
) -> Charge:
    """Charge ``releases`` for round ``round_no`` of ``run_id`` under ``contract_id``.

    ``kw`` as :func:`dataspace.policy.ledger.charge_round` (release, mechanism,
    privacy_unit, secure_aggregation, noise). Raises
    ``dataspace.policy.ledger.BudgetExceededError``, ``ReplayError`` or
    ``ContractError`` (all :class:`~dataspace.errors.RefusedError`) when refused.
    """
    return charge_round(site, contract_id, run_id, round_no, releases, **kw)
