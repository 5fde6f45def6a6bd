"""Control: ODRL usage policies, contracts and the privacy-budget ledger of a holder's site.

The front doors:

* a usage policy: :func:`build_policy` / :func:`parse_usage_policy` make a
  :class:`UsagePolicy`, :func:`publish_policy` sets it for a dataset,
  :func:`current_policy` reads it back;
* a contract: :func:`negotiate` (both sides on one machine), or
  :func:`request_offer`, :func:`countersign` and :func:`accept` (the holder and
  the consumer apart); the holder's :func:`approve`, :func:`reject` and
  :func:`revoke`; :func:`load_contract`, :func:`list_contracts`;
  :func:`verify_agreement` for an auditor. What a contract permits is one
  :class:`ContractTerms` (``contract.terms.epsilon``);
* the budget: every release is charged first (:func:`charge_round`), re-checked
  (:func:`check_live`, :func:`claim_evaluation`) and recorded
  (:func:`record_round_finished`); :func:`budget_report` and
  :func:`contract_epsilon` say what is spent; :func:`sign_budget_statement` and
  :func:`read_budget_statement` carry a dataset's budget, signed by its site, to the hub.

Refusals are typed (all :class:`~dataspace.errors.RefusedError` but
:class:`PolicyError`): :class:`ContractError` (:class:`OfferRefusedError`,
:class:`BadSignatureError`), :class:`BudgetExceededError`, :class:`ReplayError`.
"""

from typing import TYPE_CHECKING

from dataspace import lazy

if TYPE_CHECKING:
    from dataspace.policy.budget_statement import (
        BudgetSignatureError,
        BudgetStatement,
        BudgetStatementError,
        read_budget_statement,
        sign_budget_statement,
    )
    from dataspace.policy.contracts import (
        Agreement,
        BadSignatureError,
        Contract,
        ContractError,
        OfferRefusedError,
        OfferRequest,
        Terms,
        accept,
        approve,
        countersign,
        list_contracts,
        load_contract,
        negotiate,
        reject,
        request_offer,
        revoke,
        verify_agreement,
    )
    from dataspace.policy.ledger import (
        BudgetExceededError,
        BudgetRow,
        Charge,
        ReplayError,
        budget_report,
        charge_round,
        check_live,
        claim_evaluation,
        contract_epsilon,
        record_round_finished,
        released_stats,
    )
    from dataspace.policy.odrl import PolicyError, UsagePolicy, build_policy, parse_usage_policy
    from dataspace.policy.policies import PublishedPolicy, current_policy, publish_policy
    from dataspace.policy.terms import ContractTerms

__all__ = [
    "Agreement",
    "BadSignatureError",
    "BudgetExceededError",
    "BudgetRow",
    "BudgetSignatureError",
    "BudgetStatement",
    "BudgetStatementError",
    "Charge",
    "Contract",
    "ContractError",
    "ContractTerms",
    "OfferRefusedError",
    "OfferRequest",
    "PolicyError",
    "PublishedPolicy",
    "ReplayError",
    "Terms",
    "UsagePolicy",
    "accept",
    "approve",
    "budget_report",
    "build_policy",
    "charge_round",
    "check_live",
    "claim_evaluation",
    "contract_epsilon",
    "countersign",
    "current_policy",
    "list_contracts",
    "load_contract",
    "negotiate",
    "parse_usage_policy",
    "publish_policy",
    "read_budget_statement",
    "record_round_finished",
    "reject",
    "released_stats",
    "request_offer",
    "revoke",
    "sign_budget_statement",
    "verify_agreement",
]

# heavy (DuckDB, pyarrow): each name is imported on first use (dataspace.lazy)
__getattr__ = lazy.exports(
    __name__,
    {
        "Agreement": "dataspace.policy.contracts",
        "BadSignatureError": "dataspace.policy.contracts",
        "Contract": "dataspace.policy.contracts",
        "ContractError": "dataspace.policy.contracts",
        "OfferRefusedError": "dataspace.policy.contracts",
        "OfferRequest": "dataspace.policy.contracts",
        "Terms": "dataspace.policy.contracts",
        "accept": "dataspace.policy.contracts",
        "approve": "dataspace.policy.contracts",
        "countersign": "dataspace.policy.contracts",
        "list_contracts": "dataspace.policy.contracts",
        "load_contract": "dataspace.policy.contracts",
        "negotiate": "dataspace.policy.contracts",
        "reject": "dataspace.policy.contracts",
        "request_offer": "dataspace.policy.contracts",
        "revoke": "dataspace.policy.contracts",
        "verify_agreement": "dataspace.policy.contracts",
        "BudgetSignatureError": "dataspace.policy.budget_statement",
        "BudgetStatement": "dataspace.policy.budget_statement",
        "BudgetStatementError": "dataspace.policy.budget_statement",
        "read_budget_statement": "dataspace.policy.budget_statement",
        "sign_budget_statement": "dataspace.policy.budget_statement",
        "BudgetExceededError": "dataspace.policy.ledger",
        "BudgetRow": "dataspace.policy.ledger",
        "Charge": "dataspace.policy.ledger",
        "ReplayError": "dataspace.policy.ledger",
        "budget_report": "dataspace.policy.ledger",
        "charge_round": "dataspace.policy.ledger",
        "check_live": "dataspace.policy.ledger",
        "claim_evaluation": "dataspace.policy.ledger",
        "contract_epsilon": "dataspace.policy.ledger",
        "record_round_finished": "dataspace.policy.ledger",
        "released_stats": "dataspace.policy.ledger",
        "PolicyError": "dataspace.policy.odrl",
        "UsagePolicy": "dataspace.policy.odrl",
        "build_policy": "dataspace.policy.odrl",
        "parse_usage_policy": "dataspace.policy.odrl",
        "PublishedPolicy": "dataspace.policy.policies",
        "current_policy": "dataspace.policy.policies",
        "publish_policy": "dataspace.policy.policies",
        "ContractTerms": "dataspace.policy.terms",
    },
)
