"""The privacy-budget ledger a connector keeps for its own datasets.

The rule that makes a budget mean something: a round's epsilon is charged,
durably, *before* the round reads any data, and a charge is never taken back
(a crashed or cancelled round stays charged: its noise may already have been
drawn and its update sent). :func:`charge_round` is therefore the gate every
round passes on the holder's machine, whatever the server or the consumer asks:

1. the contract exists, is agreed, has started and has not ended;
2. the round is the contract's (its purpose and template, when the caller says
   which, and a round number within the contract's rounds);
3. the dataset still has the data the contract was made for (fingerprint),
   and the policy in force still permits the contract's terms;
4. the contract's share and the dataset's budget both cover the epsilon, and
   the round keeps the budget's privacy unit, the unit of the dataset's first
   charge: an epsilon per episode also bounds any one frame, so episode rounds
   may charge a budget counted per frame; a frame round would break a budget
   counted per episode, so it is refused (the unit of an episode budget is
   fixed for the dataset's lifetime);
5. then the charge is committed to DuckDB, ``round.started`` is logged, and
   only then does the call return.

A refusal raises :class:`BudgetExceededError` or :class:`ContractError` after
logging ``access.refused``. Charging the same (dataset, run, round) again is a
no-op, so a retried message never double-charges.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dataspace.errors import DataspaceError, NotFoundError, RefusedError
from dataspace.policy import events, store
from dataspace.policy.contracts import ContractError, _from_row, _row, _terms_request
from dataspace.policy.evaluate import evaluate
from dataspace.policy.odrl import parse_policy

if TYPE_CHECKING:
    import duckdb

    from dataspace.connectors.site import Site

__all__ = [
    "BudgetExceededError",
    "BudgetRow",
    "ContractError",
    "budget_report",
    "charge_round",
    "record_round_finished",
]

_TOL = 1e-9


class BudgetExceededError(RefusedError):
    """A round whose epsilon the contract's share or the dataset's budget cannot cover."""


def _le(a: float, b: float) -> bool:
    return a <= b + _TOL * max(1.0, abs(b))


def charge_round(
    site: Site,
    contract_id: str,
    run_id: str,
    round_no: int,
    epsilon: float,
    *,
    purpose: str | None = None,
    template: str | None = None,
    privacy_unit: str = "frame",
    now: datetime | None = None,
) -> None:
    """Charge one round's epsilon before its work (module docstring); raise if refused.

    ``privacy_unit`` is what one unit of ``epsilon`` protects ("frame" or "episode").
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    fields: dict[str, Any] = {
        "contract_id": contract_id,
        "run_id": run_id,
        "round": round_no,
        "epsilon": epsilon,
        "privacy_unit": privacy_unit,
    }
    try:
        with store.LOCK, site.db() as con:
            store.ensure_tables(con)
            store.expire_contracts(con, now)
            contract = _contract(con, contract_id)
            fields |= {"dataset_id": contract.dataset_id, "consumer": contract.consumer.key_b64}
            if _already_charged(con, contract, run_id, round_no, epsilon, privacy_unit):
                return
            _check(con, contract, run_id, round_no, epsilon, purpose, template, now)
            _check_unit(con, contract.dataset_id, run_id, round_no, privacy_unit)
            con.execute("BEGIN TRANSACTION")
            con.execute(
                "INSERT INTO ledger (dataset_id, run_id, round_no, contract_id, epsilon, "
                "charged_at, privacy_unit) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    contract.dataset_id, run_id, round_no, contract_id, epsilon,
                    store.to_db(now), privacy_unit,
                ],
            )  # fmt: skip
            # COMMIT is the durability point: DuckDB writes and syncs its WAL here.
            con.execute("COMMIT")
    except (ContractError, BudgetExceededError) as e:
        events.refused(site, str(e), time=now, **fields)
        raise
    events.record(
        site,
        "round.started",
        contract_id=contract_id,
        run_id=run_id,
        round=round_no,
        epsilon=epsilon,
        dataset_id=contract.dataset_id,
        fingerprint=contract.fingerprint,
        purpose=contract.purpose,
        template=contract.template,
        consumer=contract.consumer.key_b64,
        privacy_unit=privacy_unit,
        time=now,
    )


def _check_unit(
    con: duckdb.DuckDBPyConnection, dataset_id: str, run_id: str, round_no: int, unit: str
) -> None:
    """A frame round may not charge a budget counted per episode (module docstring, 4)."""
    if unit not in ("frame", "episode"):
        raise ContractError(f"privacy unit must be 'frame' or 'episode', got {unit!r}")
    if unit != "frame":
        return  # an episode-level epsilon bounds any one frame too: it composes with either
    (episode, frame) = con.execute(
        "SELECT count(*) FILTER (WHERE privacy_unit = 'episode'), "
        "count(*) FILTER (WHERE privacy_unit = 'frame') FROM ledger WHERE dataset_id = ?",
        [dataset_id],
    ).fetchone()  # type: ignore[misc]
    if episode and not frame:
        raise ContractError(
            f"round {round_no} of run {run_id} counts epsilon per frame, but dataset "
            f"{dataset_id}'s budget is counted per episode ({episode} rounds so far): a "
            "frame-level epsilon does not bound what one episode reveals, so the dataset's "
            "privacy_unit stays 'episode' for its lifetime"
        )


def _contract(con: duckdb.DuckDBPyConnection, contract_id: str):  # -> Contract
    row = _row(con, contract_id)
    if row is None:
        raise ContractError(f"contract {contract_id} does not exist at this site")
    return _from_row(row)


def _already_charged(
    con: duckdb.DuckDBPyConnection,
    contract,
    run_id: str,
    round_no: int,
    epsilon: float,
    unit: str = "frame",
) -> bool:
    row = con.execute(
        "SELECT contract_id, epsilon, privacy_unit FROM ledger WHERE dataset_id = ? "
        "AND run_id = ? AND round_no = ?",
        [contract.dataset_id, run_id, round_no],
    ).fetchone()
    if row is None:
        return False
    if (
        row[0] != contract.contract_id
        or not math.isclose(row[1], epsilon, rel_tol=1e-12)
        or row[2] != unit
    ):
        raise ContractError(
            f"run {run_id} round {round_no} on dataset {contract.dataset_id} was already "
            f"charged epsilon {row[1]:g} per {row[2]} under contract {row[0]}"
        )
    return True


def _check(
    con: duckdb.DuckDBPyConnection,
    contract,
    run_id: str,
    round_no: int,
    epsilon: float,
    purpose: str | None,
    template: str | None,
    now: datetime,
) -> None:
    cid = contract.contract_id
    if contract.state_at(now) != "agreed":
        raise ContractError(f"contract {cid} is {contract.state_at(now)}, not agreed")
    if not contract.is_live(now):
        raise ContractError(
            f"contract {cid} is not yet valid: it starts at {contract.created.isoformat()}"
        )
    if isinstance(epsilon, bool) or not (math.isfinite(epsilon) and epsilon > 0):
        raise ContractError(f"round epsilon must be a finite number > 0, got {epsilon!r}")
    if not run_id:
        raise ContractError("a round needs a run id")
    if purpose is not None and purpose != contract.purpose:
        raise ContractError(f"contract {cid} is for purpose {contract.purpose!r}, not {purpose!r}")
    if template is not None and template != contract.template:
        raise ContractError(
            f"contract {cid} is for model template {contract.template!r}, not {template!r}"
        )
    if not 1 <= round_no <= contract.rounds:
        raise ContractError(
            f"round {round_no} is outside contract {cid}'s rounds 1..{contract.rounds}"
        )
    (done,) = con.execute("SELECT COUNT(*) FROM ledger WHERE contract_id = ?", [cid]).fetchone()  # type: ignore[misc]
    if done >= contract.rounds:
        raise ContractError(f"contract {cid} has used all its {contract.rounds} rounds")
    ds = store.dataset_ref(con, contract.dataset_id)
    if ds.fingerprint != contract.fingerprint:
        raise ContractError(
            f"dataset {ds.dataset_id} now has fingerprint {ds.fingerprint}; contract {cid} "
            f"covers {contract.fingerprint}"
        )
    row = store.current_policy_row(con, contract.dataset_id)
    if row is None:
        raise ContractError(f"dataset {contract.dataset_id} no longer has a usage policy")
    # The holder may have narrowed the policy since the contract was agreed (a
    # purpose withdrawn, a consumer removed): the policy in force decides.
    decision = evaluate(
        parse_policy(row[1]), _terms_request(contract.terms), now, check_budget=False
    )
    if not decision.allowed:
        raise ContractError(
            f"the policy in force no longer permits contract {cid}: {decision.reason}"
        )
    (spent_c,) = con.execute(
        "SELECT COALESCE(SUM(GREATEST(epsilon, COALESCE(epsilon_spent, 0))), 0) FROM ledger "
        "WHERE contract_id = ?",
        [cid],
    ).fetchone()  # type: ignore[misc]
    if not _le(spent_c + epsilon, contract.epsilon):
        raise BudgetExceededError(
            f"round {round_no} of run {run_id} wants epsilon {epsilon:g} but contract {cid} has "
            f"{max(0.0, contract.epsilon - spent_c):g} of its {contract.epsilon:g} left"
        )
    budget = con.execute(
        "SELECT epsilon FROM budgets WHERE dataset_id = ?", [contract.dataset_id]
    ).fetchone()
    spent = store.committed(con, contract.dataset_id, now).spent
    if budget is None or not _le(spent + epsilon, budget[0]):
        have = 0.0 if budget is None else budget[0]
        raise BudgetExceededError(
            f"round {round_no} of run {run_id} wants epsilon {epsilon:g} but dataset "
            f"{contract.dataset_id} has {max(0.0, have - spent):g} of its budget {have:g} left"
        )


def record_round_finished(
    site: Site,
    contract_id: str,
    run_id: str,
    round_no: int,
    epsilon_spent: float,
    model_sha256: str,
    now: datetime | None = None,
    **metrics: Any,
) -> None:
    """Record what a charged round actually spent and produced; logs round.finished.

    If a round reports more epsilon than it was charged, the ledger counts the
    larger (the budget report is never optimistic).
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    taken = {"run_id", "round", "epsilon", "model_sha256", "dataset_id", "fingerprint", "purpose"}
    if clash := sorted(taken.intersection(metrics)):
        raise DataspaceError(f"round.finished metrics may not be named {clash} (event fields)")
    with store.LOCK, site.db() as con:
        store.ensure_tables(con)
        contract = _contract(con, contract_id)
        found = con.execute(
            "SELECT 1 FROM ledger WHERE dataset_id = ? AND run_id = ? AND round_no = ? "
            "AND contract_id = ?",
            [contract.dataset_id, run_id, round_no, contract_id],
        ).fetchone()
        if found is None:
            raise ContractError(
                f"run {run_id} round {round_no} was never charged under contract {contract_id}"
            )
        con.execute(
            "UPDATE ledger SET finished_at = ?, epsilon_spent = ?, model_sha256 = ?, metrics = ? "
            "WHERE dataset_id = ? AND run_id = ? AND round_no = ?",
            [
                store.to_db(now),
                float(epsilon_spent),
                model_sha256,
                json.dumps(metrics),
                contract.dataset_id,
                run_id,
                round_no,
            ],
        )
    events.record(
        site,
        "round.finished",
        contract_id=contract_id,
        run_id=run_id,
        round=round_no,
        epsilon=float(epsilon_spent),
        model_sha256=model_sha256,
        dataset_id=contract.dataset_id,
        fingerprint=contract.fingerprint,
        purpose=contract.purpose,
        time=now,
        **metrics,
    )


@dataclass(frozen=True)
class BudgetRow:
    """One dataset's budget as ``connector budget`` shows it (epsilon, then delta)."""

    dataset_id: str
    fingerprint: str
    budget: float
    reserved: float
    spent: float
    remaining: float
    delta_budget: float
    delta_reserved: float
    delta_spent: float
    delta_remaining: float
    live_contracts: int
    rounds: int
    policy_sha256: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def budget_report(
    site: Site, dataset_id: str | None = None, now: datetime | None = None
) -> list[BudgetRow]:
    """Budget, reserved, spent and remaining of each dataset that has a policy."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    with site.db() as con:
        store.ensure_tables(con)
        if dataset_id is not None:
            ds = store.dataset_ref(con, dataset_id)
            rows = con.execute(
                "SELECT dataset_id, fingerprint, epsilon, delta, policy_sha256 FROM budgets "
                "WHERE dataset_id = ?",
                [ds.dataset_id],
            ).fetchall()
            if not rows:
                raise NotFoundError(f"dataset {ds.dataset_id} has no usage policy, so no budget")
        else:
            rows = con.execute(
                "SELECT dataset_id, fingerprint, epsilon, delta, policy_sha256 FROM budgets "
                "ORDER BY dataset_id"
            ).fetchall()
        out = []
        for did, fp, eps, delta, sha in rows:
            c = store.committed(con, did, now)
            out.append(
                BudgetRow(
                    dataset_id=did,
                    fingerprint=fp,
                    budget=eps,
                    reserved=c.reserved,
                    spent=c.spent,
                    remaining=eps - c.reserved - c.spent,
                    delta_budget=delta,
                    delta_reserved=c.delta_reserved,
                    delta_spent=c.delta_spent,
                    delta_remaining=delta - c.delta_reserved - c.delta_spent,
                    live_contracts=c.live_contracts,
                    rounds=c.rounds,
                    policy_sha256=sha,
                )
            )
    return out
