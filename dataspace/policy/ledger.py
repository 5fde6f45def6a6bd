"""The privacy-budget ledger a connector keeps for its own datasets.

The rules that make a budget mean something, whatever a server sends:

* every release is charged, durably, *before* it is computed, and a charge is
  never taken back (a crashed or cancelled round stays charged: its noise may
  already have been drawn and its update sent);
* a contract is a privacy filter (:func:`dataspace.accountant.admits`): each
  release is described by its mechanism, as the accountant's releases
  ``(noise_multiplier, sample_rate, steps)``, and is admitted only if the RDP
  composition of *everything the contract has released, in all its runs*, this
  one included, stays within the contract's (epsilon, delta). What is charged is
  the increase of that composed epsilon, so a contract's charges add up to the
  accountant's epsilon over what it released, and the dataset's spent is the sum
  of its contracts' (its lifetime budget is the sum of its contracts);
* a (run, round) releases at most once: a second charge of it is refused and
  logged, never answered again (a replay after revocation releases nothing). A
  charge whose process died before it released anything (recorded before any
  reply leaves) runs again under that same charge, never twice at once.

:func:`charge_round` is therefore the gate every release passes on the holder's
machine:

1. the contract exists, is agreed, has started and has not ended (revoked or
   expired means nothing more leaves);
2. the release is the contract's (its purpose and template, when the caller says
   which, a round number within the contract's rounds, round 0 being the
   normalisation statistics), and it was not charged before;
3. the dataset still has the data the contract was made for (fingerprint), and
   the policy in force still permits the contract's terms, including secure
   aggregation where the policy requires it;
4. the filter admits the release under the contract's (epsilon, delta), the
   dataset's budget covers its charge, and it keeps the budget's privacy unit
   (the unit of the dataset's first charge: an epsilon per episode also bounds
   any one frame, so episode rounds may charge a budget counted per frame; a
   frame round would break a budget counted per episode, so it is refused);
5. then the charge is committed to DuckDB, ``round.started`` is logged with the
   mechanism (an auditor recomputes the charge from it), and only then does the
   call return.

A refusal raises :class:`BudgetExceededError`, :class:`ReplayError` or
:class:`ContractError` after logging ``access.refused``; nothing is charged.
Releases that a round's charge already covers (its one evaluation,
:func:`claim_evaluation`) and re-sent statistics (:func:`released_stats`)
re-check the contract (:func:`check_live`) and charge nothing more.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psutil

from dataspace import accountant
from dataspace.errors import DataspaceError, NotFoundError, RefusedError
from dataspace.policy import outbox, store
from dataspace.policy.contracts import Contract, ContractError, find_contract
from dataspace.policy.evaluate import evaluate
from dataspace.policy.odrl import parse_usage_policy
from dataspace.site import log as events

if TYPE_CHECKING:
    import duckdb

    from dataspace.site.folder import Site

__all__ = [
    "BudgetExceededError",
    "BudgetRow",
    "Charge",
    "ContractError",
    "ReplayError",
    "budget_report",
    "charge_round",
    "check_live",
    "claim_evaluation",
    "contract_epsilon",
    "record_round_finished",
    "released_stats",
]

_TOL = 1e-9

#: what a ledger row's release is: the normalisation statistics (round 0) or a round
#: (its DP-SGD update, its train loss and its one evaluation)
RELEASES = ("stats", "round")


class BudgetExceededError(RefusedError):
    """A release that the contract's (epsilon, delta) or the dataset's budget cannot cover."""


class ReplayError(RefusedError):
    """A (run, round) that was already charged, or a round already evaluated: never twice."""


@dataclass(frozen=True)
class Charge:
    """What :func:`charge_round` charged: ``epsilon`` (the increase of the contract's
    epsilon) and ``contract_epsilon`` (the accountant's epsilon over all the contract's
    releases, this one included)."""

    epsilon: float
    contract_epsilon: float


def _le(a: float, b: float) -> bool:
    return a <= b + _TOL * max(1.0, abs(b))


def charge_round(
    site: Site,
    contract_id: str,
    run_id: str,
    round_no: int,
    releases: Sequence[Sequence[float]],
    *,
    release: str = "round",
    mechanism: dict[str, Any] | None = None,
    purpose: str | None = None,
    template: str | None = None,
    privacy_unit: str = "frame",
    secure_aggregation: bool = False,
    noise: str = "csprng",
    now: datetime | None = None,
) -> Charge:
    """Charge one release before its work (module docstring); raise if refused.

    ``releases`` is the release's mechanism as the accountant's entries
    ``(noise_multiplier, sample_rate, steps)``; ``release`` is ``"stats"``
    (round 0) or ``"round"``; ``mechanism`` the readable parameters logged
    with it; ``privacy_unit`` what one unit of epsilon protects ("frame" or
    "episode"); ``secure_aggregation`` whether the round runs under SecAgg+
    (a policy may require it); ``noise`` where its noise comes from.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    fields: dict[str, Any] = {
        "contract_id": contract_id,
        "run_id": run_id,
        "round": round_no,
        "release": release,
        "privacy_unit": privacy_unit,
    }
    try:
        entries = [list(accountant.check_release(r)) for r in releases]
    except accountant.AccountantError as e:
        raise ContractError(f"round {round_no} of run {run_id}: {e}") from e
    outbox.flush(site)  # an earlier crash's entries first (a retry completes them)
    try:
        with store.LOCK, site.db() as con:
            store.ensure_tables(con)
            store.expire_contracts(con, now)
            contract = _contract(con, contract_id)
            t = contract.terms
            fields |= {"dataset_id": t.dataset_id, "consumer": contract.consumer.key_b64}
            _check_state(contract, now)  # revoked or expired: say so first
            # the statistics are no aggregated update: SecAgg+ requirements concern rounds
            _check_policy(con, contract, now, secure_aggregation if release == "round" else None)
            taken_over = _not_charged(con, contract, run_id, round_no, entries)
            if taken_over is not None:  # its first process died before releasing anything
                return taken_over
            _check(con, contract, run_id, round_no, release, purpose, template, now)
            _check_unit(con, t.dataset_id, run_id, round_no, privacy_unit)
            charge = _admit(con, contract, run_id, round_no, entries, now)
            fields["epsilon"] = charge.epsilon
            con.execute("BEGIN TRANSACTION")
            con.execute(
                "INSERT INTO ledger (dataset_id, run_id, round_no, contract_id, epsilon, "
                "charged_at, privacy_unit, release, releases, mechanism, executor) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    t.dataset_id, run_id, round_no, contract_id, charge.epsilon,
                    store.to_db(now), privacy_unit, release, json.dumps(entries),
                    json.dumps(mechanism or {}), _executor(),
                ],
            )  # fmt: skip
            oid = outbox.stage(
                con,
                "round.started",
                contract_id=contract_id,
                run_id=run_id,
                round=round_no,
                release=release,
                epsilon=charge.epsilon,
                contract_epsilon=charge.contract_epsilon,
                releases=entries,
                mechanism=mechanism or {},
                noise=noise,
                secure_aggregation=bool(secure_aggregation),
                dataset_id=t.dataset_id,
                fingerprint=t.fingerprint,
                purpose=t.purpose,
                template=t.template,
                consumer=contract.consumer.key_b64,
                privacy_unit=privacy_unit,
                time=now,
            )
            # COMMIT is the durability point: DuckDB writes and syncs its WAL here.
            con.execute("COMMIT")
    except (ContractError, BudgetExceededError, ReplayError) as e:
        events.refused(site, str(e), time=now, refusal=type(e).__name__, **fields)
        raise
    outbox.publish(site, oid)  # the round.started entry, before anything is computed
    return charge


def _executor() -> str:
    """This process, as a ledger row names the one executing its release."""
    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{me.create_time():.3f}"


def _executor_alive(executor: str | None) -> bool:
    """Could the process that charged a release still be computing it? (Unknown: yes.)"""
    if not executor:
        return True  # charged before executors were recorded: cannot tell
    host, pid, started = executor.rsplit(":", 2)
    if host != socket.gethostname():
        return True  # another machine's process: cannot tell
    try:
        proc = psutil.Process(int(pid))
        return f"{proc.create_time():.3f}" == started  # a reused pid is another process
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _not_charged(
    con: duckdb.DuckDBPyConnection, contract: Contract, run_id: str, round_no: int, entries: list
) -> Charge | None:
    """A (run, round) releases at most once: refuse any earlier charge of it, unless
    its process died before releasing anything; then return that charge, to be used.

    A release is recorded finished (:func:`record_round_finished`) before its reply
    is returned, so a charge without it never left the site. It may run again under
    the same charge once the process that took it is gone (a crash, ``kill -9``) and
    with the same mechanism; while that process lives, the release may be in flight.
    """
    t = contract.terms
    row = con.execute(
        "SELECT contract_id, finished_at IS NOT NULL, executor, releases, epsilon "
        "FROM ledger WHERE dataset_id = ? AND run_id = ? AND round_no = ?",
        [t.dataset_id, run_id, round_no],
    ).fetchone()
    if row is None:
        return None
    cid, finished, executor, releases, epsilon = row
    what = "released" if finished else "charged (its work may be in flight)"
    if finished or cid != t.contract_id or _executor_alive(executor):
        raise ReplayError(
            f"run {run_id} round {round_no} on dataset {t.dataset_id} was already "
            f"{what} under contract {cid}: a round executes at most once"
        )
    if json.loads(releases or "[]") != entries:
        raise ReplayError(
            f"run {run_id} round {round_no} was charged for another mechanism; its "
            "process died before releasing anything, but it runs again only as charged"
        )
    con.execute(
        "UPDATE ledger SET executor = ? WHERE dataset_id = ? AND run_id = ? AND round_no = ?",
        [_executor(), t.dataset_id, run_id, round_no],
    )
    (total,) = con.execute(
        "SELECT SUM(GREATEST(epsilon, COALESCE(epsilon_spent, 0))) FROM ledger "
        "WHERE contract_id = ?",
        [cid],
    ).fetchone()  # type: ignore[misc]
    return Charge(epsilon=float(epsilon), contract_epsilon=float(total))


def _admit(
    con: duckdb.DuckDBPyConnection,
    contract: Contract,
    run_id: str,
    round_no: int,
    entries: list,
    now: datetime,
) -> Charge:
    """The filter: the contract's releases so far plus this one within its (epsilon, delta)."""
    t = contract.terms
    cid = t.contract_id
    rows = con.execute(
        "SELECT releases, GREATEST(epsilon, COALESCE(epsilon_spent, 0)) FROM ledger "
        "WHERE contract_id = ?",
        [cid],
    ).fetchall()
    spent = [r for (js, _) in rows if js for r in json.loads(js)]
    # rows charged before the filter existed carry no releases: their epsilons add on top
    legacy = sum(eps for (js, eps) in rows if not js)
    _, before, after = accountant.admits(spent, entries, t.delta, t.epsilon)
    before, after = before + legacy, after + legacy
    if not _le(after, t.epsilon):
        raise BudgetExceededError(
            f"round {round_no} of run {run_id} would bring contract {cid} to epsilon "
            f"{after:g} (delta {t.delta:g}) over everything it released; it allows "
            f"{t.epsilon:g} ({max(0.0, t.epsilon - before):g} left)"
        )
    charge = Charge(epsilon=max(0.0, after - before), contract_epsilon=after)
    budget = con.execute(
        "SELECT epsilon FROM budgets WHERE dataset_id = ?", [t.dataset_id]
    ).fetchone()
    spent_ds = store.committed(con, t.dataset_id, now).spent
    if budget is None or not _le(spent_ds + charge.epsilon, budget[0]):
        have = 0.0 if budget is None else budget[0]
        raise BudgetExceededError(
            f"round {round_no} of run {run_id} wants epsilon {charge.epsilon:g} but dataset "
            f"{t.dataset_id} has {max(0.0, have - spent_ds):g} of its budget {have:g} left"
        )
    return charge


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


def _contract(con: duckdb.DuckDBPyConnection, contract_id: str) -> Contract:
    contract = find_contract(con, contract_id)
    if contract is None:
        raise ContractError(f"contract {contract_id} does not exist at this site")
    return contract


def _check(
    con: duckdb.DuckDBPyConnection,
    contract: Contract,
    run_id: str,
    round_no: int,
    release: str,
    purpose: str | None,
    template: str | None,
    now: datetime,
) -> None:
    t = contract.terms
    cid = t.contract_id
    _check_state(contract, now)
    if not run_id:
        raise ContractError("a round needs a run id")
    if release not in RELEASES:
        raise ContractError(f"release must be one of {', '.join(RELEASES)}, got {release!r}")
    if purpose is not None and purpose != t.purpose:
        raise ContractError(f"contract {cid} is for purpose {t.purpose!r}, not {purpose!r}")
    if template is not None and template != t.template:
        raise ContractError(
            f"contract {cid} is for model template {t.template!r}, not {template!r}"
        )
    if release == "stats":
        if round_no != 0:
            raise ContractError(f"statistics are released as round 0, not round {round_no}")
        return
    if not 1 <= round_no <= t.rounds:
        raise ContractError(f"round {round_no} is outside contract {cid}'s rounds 1..{t.rounds}")
    (done,) = con.execute(
        "SELECT COUNT(*) FROM ledger WHERE contract_id = ? AND round_no >= 1", [cid]
    ).fetchone()  # type: ignore[misc]
    if done >= t.rounds:
        raise ContractError(f"contract {cid} has used all its {t.rounds} rounds")


def _check_state(contract: Contract, now: datetime) -> None:
    """The contract is agreed, has started and has not ended (revoked, expired)."""
    t = contract.terms
    cid = t.contract_id
    if contract.state_at(now) != "agreed":
        raise ContractError(f"contract {cid} is {contract.state_at(now)}, not agreed")
    if not contract.is_live(now):
        raise ContractError(
            f"contract {cid} is not yet valid: it starts at {t.created.isoformat()}"
        )


def _check_policy(
    con: duckdb.DuckDBPyConnection,
    contract: Contract,
    now: datetime,
    secure_aggregation: bool | None,
) -> None:
    """The data is the contract's and the policy in force still permits it.

    ``secure_aggregation`` None: not a round (an evaluation, re-sent statistics),
    so a policy's aggregation requirement does not apply.
    """
    t = contract.terms
    cid = t.contract_id
    ds = store.dataset_ref(con, t.dataset_id)
    if ds.fingerprint != t.fingerprint:
        raise ContractError(
            f"dataset {ds.dataset_id} now has fingerprint {ds.fingerprint}; contract {cid} "
            f"covers {t.fingerprint}"
        )
    row = store.current_policy_row(con, t.dataset_id)
    if row is None:
        raise ContractError(f"dataset {t.dataset_id} no longer has a usage policy")
    # The holder may have narrowed the policy since the contract was agreed (a
    # purpose withdrawn, a consumer removed, secure aggregation required): the
    # policy in force decides.
    request = t.as_request()
    if secure_aggregation is not None:
        request = replace(request, aggregation="secure" if secure_aggregation else "plain")
    decision = evaluate(parse_usage_policy(row[1]), request, now, check_budget=False)
    if not decision.allowed:
        raise ContractError(
            f"the policy in force no longer permits contract {cid}: {decision.reason}"
        )


def check_live(site: Site, contract_id: str, now: datetime | None = None) -> None:
    """Refuse (logged) unless ``contract_id`` may still release: agreed, live, data and
    policy unchanged. For releases a round's charge already covers."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    fields: dict[str, Any] = {"contract_id": contract_id}
    try:
        with store.LOCK, site.db() as con:
            store.ensure_tables(con)
            store.expire_contracts(con, now)
            contract = _contract(con, contract_id)
            t = contract.terms
            fields |= {"dataset_id": t.dataset_id, "consumer": contract.consumer.key_b64}
            _check_state(contract, now)
            _check_policy(con, contract, now, None)
    except ContractError as e:
        events.refused(site, str(e), time=now, refusal=type(e).__name__, **fields)
        raise


def claim_evaluation(
    site: Site,
    contract_id: str,
    run_id: str,
    round_no: int,
    model_sha256: str,
    now: datetime | None = None,
) -> None:
    """Claim round ``round_no``'s one evaluation before it is computed; log ``round.evaluated``.

    A round's charge covers one held-out loss (:meth:`dp.PrivacyPlan.round_release`);
    this marks it used, durably, after re-checking the contract. Refused (logged,
    nothing released): a round not finished here under this contract, one already
    evaluated (:class:`ReplayError`), or a contract that may no longer release.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    fields: dict[str, Any] = {"contract_id": contract_id, "run_id": run_id, "round": round_no}
    outbox.flush(site)
    try:
        with store.LOCK, site.db() as con:
            store.ensure_tables(con)
            store.expire_contracts(con, now)
            contract = _contract(con, contract_id)
            t = contract.terms
            fields |= {"dataset_id": t.dataset_id, "consumer": contract.consumer.key_b64}
            _check_state(contract, now)
            _check_policy(con, contract, now, None)
            row = con.execute(
                "SELECT finished_at IS NOT NULL, evaluated_at IS NOT NULL FROM ledger "
                "WHERE dataset_id = ? AND run_id = ? AND round_no = ? AND contract_id = ? "
                "AND release = 'round'",
                [t.dataset_id, run_id, round_no, contract_id],
            ).fetchone()
            if row is None or not row[0]:
                raise ContractError(
                    f"evaluate for round {round_no} of run {run_id}: that round was not "
                    "trained (and charged) here"
                )
            if row[1]:
                raise ReplayError(
                    f"round {round_no} of run {run_id} was already evaluated: its charge "
                    "covers one evaluation"
                )
            con.execute("BEGIN TRANSACTION")
            con.execute(
                "UPDATE ledger SET evaluated_at = ? WHERE dataset_id = ? AND run_id = ? "
                "AND round_no = ?",
                [store.to_db(now), t.dataset_id, run_id, round_no],
            )
            oid = outbox.stage(
                con,
                "round.evaluated",
                contract_id=contract_id,
                run_id=run_id,
                round=round_no,
                model_sha256=model_sha256,
                dataset_id=t.dataset_id,
                fingerprint=t.fingerprint,
                purpose=t.purpose,
                time=now,
            )
            con.execute("COMMIT")
    except (ContractError, ReplayError) as e:
        events.refused(
            site, str(e), time=now, refusal=type(e).__name__, release="evaluation", **fields
        )
        raise
    outbox.publish(site, oid)


def contract_epsilon(site: Site, contract_id: str) -> float:
    """What ``contract_id`` has spent: the sum of its charges, i.e. the accountant's
    epsilon over everything it released (module docstring)."""
    with site.db() as con:
        store.ensure_tables(con)
        (spent,) = con.execute(
            "SELECT COALESCE(SUM(GREATEST(epsilon, COALESCE(epsilon_spent, 0))), 0) FROM ledger "
            "WHERE contract_id = ?",
            [contract_id],
        ).fetchone()  # type: ignore[misc]
    return float(spent)


def released_stats(site: Site, contract_id: str) -> dict[str, Any] | None:
    """The statistics this contract already released (any run), or None.

    Sending the same noisy answer again costs nothing (post-processing), so a
    contract releases its normalisation statistics once, whatever number of
    runs or queries ask; the caller re-checks the contract first (:func:`check_live`).
    """
    with site.db() as con:
        store.ensure_tables(con)
        row = con.execute(
            "SELECT payload FROM ledger WHERE contract_id = ? AND release = 'stats' "
            "AND finished_at IS NOT NULL AND payload IS NOT NULL ORDER BY charged_at LIMIT 1",
            [contract_id],
        ).fetchone()
    return None if row is None else json.loads(row[0])


def record_round_finished(
    site: Site,
    contract_id: str,
    run_id: str,
    round_no: int,
    epsilon_spent: float,
    model_sha256: str,
    now: datetime | None = None,
    payload: dict[str, Any] | None = None,
    **metrics: Any,
) -> None:
    """Record what a charged release produced, before it leaves; logs round.finished.

    The contract is checked once more: one revoked or expired while the release was
    computed refuses it (logged; the charge stands, nothing leaves).
    ``model_sha256`` names what leaves (the update, or the statistics' hash);
    ``payload`` is kept in the ledger only (the released statistics, sent again
    by :func:`released_stats`). A release is finished once: a second call is a
    :class:`ReplayError`. If a round reports more epsilon than it was charged,
    the ledger counts the larger (the budget report is never optimistic).
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    taken = {"run_id", "round", "epsilon", "model_sha256", "dataset_id", "fingerprint", "purpose"}
    if clash := sorted(taken.intersection(metrics)):
        raise DataspaceError(f"round.finished metrics may not be named {clash} (event fields)")
    try:
        with store.LOCK, site.db() as con:
            store.ensure_tables(con)
            store.expire_contracts(con, now)
            contract = _contract(con, contract_id)
            # revoked or expired while the release was computed: it does not leave
            _check_state(contract, now)
    except ContractError as e:
        events.refused(
            site, str(e), time=now, refusal=type(e).__name__, contract_id=contract_id,
            run_id=run_id, round=round_no,
        )  # fmt: skip
        raise
    with store.LOCK, site.db() as con:
        store.ensure_tables(con)
        contract = _contract(con, contract_id)
        t = contract.terms
        found = con.execute(
            "SELECT finished_at IS NOT NULL FROM ledger WHERE dataset_id = ? AND run_id = ? "
            "AND round_no = ? AND contract_id = ?",
            [t.dataset_id, run_id, round_no, contract_id],
        ).fetchone()
        if found is None:
            raise ContractError(
                f"run {run_id} round {round_no} was never charged under contract {contract_id}"
            )
        if found[0]:
            raise ReplayError(f"run {run_id} round {round_no} was already released")
        con.execute("BEGIN TRANSACTION")
        con.execute(
            "UPDATE ledger SET finished_at = ?, epsilon_spent = ?, model_sha256 = ?, "
            "metrics = ?, payload = ? WHERE dataset_id = ? AND run_id = ? AND round_no = ?",
            [
                store.to_db(now),
                float(epsilon_spent),
                model_sha256,
                json.dumps(metrics),
                None if payload is None else json.dumps(payload),
                t.dataset_id,
                run_id,
                round_no,
            ],
        )
        oid = outbox.stage(
            con,
            "round.finished",
            contract_id=contract_id,
            run_id=run_id,
            round=round_no,
            epsilon=float(epsilon_spent),
            model_sha256=model_sha256,
            dataset_id=t.dataset_id,
            fingerprint=t.fingerprint,
            purpose=t.purpose,
            time=now,
            **metrics,
        )
        con.execute("COMMIT")
    outbox.publish(site, oid)  # before the release leaves: no entry, no release


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
