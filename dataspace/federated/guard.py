"""The one gate before a site's data is touched (issue 5; the policy area's ledger).

Every round a ClientApp runs, for statistics or training, goes through
:func:`authorize_round` BEFORE any frame is read: it charges the round's
epsilon to the site's own budget ledger
(:func:`dataspace.policy.ledger.charge_round` checks that the contract is live,
the round within its rounds and the budget sufficient, writes the charge
durably and logs ``round.started``; or logs ``access.refused`` and raises) and
returns the contract. Charging before the work means a crashed round still
counts; charging the same (run, round) again with the same epsilon is a no-op,
which is how the statistics query and the first training round share round 1.
"""

from __future__ import annotations

from dataspace.connectors.site import Site
from dataspace.policy.contracts import Contract
from dataspace.policy.contracts import load_contract as _load_contract
from dataspace.policy.ledger import charge_round


def load_contract(site: Site, contract_id: str) -> Contract:
    """The contract from the site's registry (metadata only, no data read)."""
    return _load_contract(site, contract_id)


def authorize_round(
    site: Site,
    contract_id: str,
    run_id: str,
    round_no: int,
    epsilon: float,
    privacy_unit: str = "frame",
) -> Contract:
    """Charge ``epsilon`` for round ``round_no`` of ``run_id`` under ``contract_id``.

    Raises ``dataspace.policy.ledger.BudgetExceededError`` or
    ``dataspace.policy.contracts.ContractError`` (both
    :class:`~dataspace.errors.RefusedError`) when the round is not allowed.
    """
    charge_round(site, contract_id, run_id, round_no, epsilon, privacy_unit=privacy_unit)
    return _load_contract(site, contract_id)
