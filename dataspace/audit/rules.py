"""The data space's business rules over a log's events, in log order (:class:`RuleChecker`).

Step 3 of an audit (:mod:`dataspace.audit.verify`); each rule is named in the report:

* contracts: every ``round.started`` cites an earlier ``contract.agreed``
  (``contract-unknown``) that is live at the round's time (``contract-expired``) and
  covers its dataset, fingerprint, purpose and consumer (``contract-dataset``,
  ``contract-fingerprint``, ``contract-purpose``, ``contract-consumer``), within the
  contract's rounds (``contract-rounds``: rounds from 1 count, not round 0, the
  normalisation statistics) and epsilon (``contract-epsilon``); cumulative epsilon per
  dataset never exceeds the budget of its latest ``policy.published``
  (``budget-epsilon``); no event but ``access.refused`` cites a contract after its
  ``until`` (``after-expiry``), and no ``round.started``, ``round.finished`` or
  ``round.evaluated`` cites one after an ``access.refused`` with ``contract_state``
  "revoked" (``after-revocation``; the structured field, never the reason's text);
* the mechanism (``round-mechanism``): a ``round.started`` logs its ``release``
  ("stats" as round 0, "round" from round 1) and ``releases`` (the accountant's
  ``[noise, sample_rate, steps]``, :func:`dataspace.accountant.check_release`); its
  ``epsilon`` is what :mod:`dataspace.accountant` gives, at the contract's delta, for
  the contract's earlier releases (its earlier round.started entries, in log order)
  with these, less without them, and its ``contract_epsilon`` the former (relative
  tolerance 1e-6, absolute 1e-9); an entry with no usable releases is flagged and its
  epsilon then counts on top, as the site's ledger counts legacy rows. The larger of
  the logged and the recomputed charge counts against the contract and the dataset;
* rounds: every ``round.finished`` follows a ``round.started`` of the same contract,
  run, round and dataset (``round-not-started``), reports no more epsilon than that
  round.started charged (``round-epsilon``; the excess also counts against the
  contract and the dataset, as the ledger counts it; less is allowed: the charge
  stands), and names its model's SHA-256 (``round-model``); a round's epsilon is a
  non-negative number (``round-malformed``); a (contract, run, round, dataset) is
  started once and finished once, the statistics released once per (run, dataset)
  (``round-repeated``: a second round.finished is a replay, a fresh noise draw of one
  charge); a ``round.evaluated`` follows its round's round.finished, once, never of
  round 0 (``round-evaluated``: a round's charge covers one evaluation, more would
  be a free oracle on the data), naming the model evaluated (``round-model``);
* runs: a ``run.finished`` names a run an earlier ``run.registered`` of the same log
  registered (the hub's log) or, in a site's log, a run whose rounds that site
  trained under the same contract (an earlier ``round.finished``) (``run-unknown``),
  with a status "finished" or "stopped" and a model hash that is null or 64
  lower-case hex digits (``run-malformed``);
* units: no round counts its epsilon per "frame" (the unit when an event names none)
  on a dataset whose first round counted it per "episode" (``round-privacy-unit``: a
  frame-level epsilon does not bound one episode; the reverse composes, as the
  site's ledger allows).

The rules see each event as its parsed fields (the entry without ``sig``, as
:func:`dataspace.audit.events.check_entry` returns them) and its time.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dataspace import accountant
from dataspace.audit.events import EventError, parse_time
from dataspace.audit.report import AuditReport, RoundRecord, Violation

#: float slack when summing epsilons
EPS_TOL = 1e-9
#: slack between a logged charge and the accountant's recomputation (rule round-mechanism):
#: the ledger sums a contract's curve in its database's row order, not necessarily the log's
MECH_REL_TOL = 1e-6
MECH_ABS_TOL = 1e-9
#: the kinds that make a round's data leave (rule after-revocation)
ROUND_KINDS = frozenset(("round.started", "round.finished", "round.evaluated"))
#: what a round.started releases: the normalisation statistics (round 0) or a round (>= 1)
RELEASES = ("stats", "round")


def consumer_key(c: Any) -> str | None:
    """A consumer as its base64 public key, from a key string or an identity-like object."""
    if c is None:
        return None
    if isinstance(c, dict):
        return c.get("key") or c.get("public_key")
    return str(c)


def _num(v: Any) -> float | None:
    return float(v) if type(v) in _NUMBER else None


#: JSON numbers (``type`` rather than isinstance: a bool is not an epsilon)
_NUMBER = (int, float)
#: a model hash as round.finished names it: SHA-256, lower-case hex
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(slots=True)
class _Terms:
    """What the rules need of a ``contract.agreed``, read once per contract."""

    fields: dict[str, Any]
    until: datetime | None
    dataset_id: str | None
    fingerprint: str | None
    purpose: str | None
    consumer: str | None
    rounds: float | None
    epsilon: float | None
    delta: float | None


class _Round:
    """One charged (contract, run, round, dataset): what its round.started entries charged,
    and whether it was finished and evaluated (rules round-repeated, round-evaluated)."""

    __slots__ = ("epsilon", "evaluated", "finished", "stats")

    def __init__(self, epsilon: float, stats: bool) -> None:
        self.epsilon = epsilon
        self.stats = stats
        self.finished = False
        self.evaluated = False


class _Contract:
    """The contract's releases as the accountant composes them (rule round-mechanism).

    One RDP curve over :data:`accountant.ORDERS` per contract, not every release:
    memory per contract stays bounded however many rounds it ran.
    """

    __slots__ = ("curve", "epsilon", "legacy")

    def __init__(self) -> None:
        self.curve: list[float] = [0.0] * len(accountant.ORDERS)
        #: the accountant's epsilon of ``curve`` at the contract's delta
        self.epsilon = 0.0
        #: what round.started entries with no usable releases charged: added on top, as the
        #: site's ledger adds the epsilon of rows charged before it recorded releases
        self.legacy = 0.0


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=MECH_REL_TOL, abs_tol=MECH_ABS_TOL)


class RuleChecker:
    """The data-space rules over events in log order (module docstring).

    Events come in as their parsed fields (the entry without ``sig``) and time.
    Rounds are tracked per contract by (run, round, dataset), with their strings
    interned: a million rounds cost about 200 MB. Per contract, one composed RDP
    curve (about 70 floats) stands for all its releases.
    """

    def __init__(self, report: AuditReport, keep_rounds: bool = True) -> None:
        self.r = report
        self.keep_rounds = keep_rounds
        self.contracts: dict[str, _Terms] = {}
        self.budget: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.contract_spent: dict[str, float] = {}
        #: contract id -> round digest -> what its round.started entries charged, and its state
        self.charged: dict[str | None, dict[tuple, _Round]] = {}
        #: contract id -> rounds >= 1 it charged (round 0, the statistics, does not count)
        self.rounds_used: dict[str | None, int] = {}
        #: (run, dataset) -> entry index of its statistics release (round 0), at most one
        self.stats_runs: dict[tuple, int] = {}
        #: contract id -> its releases composed (rule round-mechanism)
        self.mechanisms: dict[str, _Contract] = {}
        #: contract id -> index of the access.refused that revoked it (rule after-revocation)
        self.revoked: dict[str, int] = {}
        self.open_rounds: dict[tuple[str | None, tuple], RoundRecord] = {}
        #: dataset -> (privacy unit of its first round, that round's entry index)
        self.units: dict[str, tuple[str, int]] = {}
        #: run ids of the log's run.registered entries (rule run-unknown)
        self.runs: set[str] = set()
        #: (run id, contract id) of the log's round.finished entries (a site's run.finished)
        self.trained: set[tuple[str, str]] = set()

    def _flag(self, index: int, rule: str, msg: str, **values: Any) -> None:
        self.r.violations.append(Violation(rule, msg, index, values))

    @staticmethod
    def _round_key(run_id: Any, round_no: Any, dataset: str | None) -> tuple:
        # interned: a million open rounds share their run and dataset strings
        if type(run_id) is str:
            run_id = sys.intern(run_id)
        if type(dataset) is str:
            dataset = sys.intern(dataset)
        return (run_id, round_no, dataset)

    def feed(self, i: int, f: dict[str, Any], t: datetime) -> None:
        """Check entry ``i``: its fields ``f`` (without ``sig``) and its parsed time ``t``."""
        kind = f["kind"]
        if kind == "policy.published":
            eps = _num(f.get("epsilon"))
            key = f["dataset_id"] or f["fingerprint"]
            if key is not None and eps is not None:
                self.budget[key] = eps
            return
        if kind == "contract.agreed":
            self._contract(i, f)
            return
        if kind == "run.registered":
            if type(f.get("run_id")) is str:
                self.runs.add(f["run_id"])
            return
        if kind == "run.finished":
            self._run_finished(i, f)
            return
        cid = f["contract_id"]
        if kind == "access.refused":
            # the structured state, never the reason's text: a reason is free prose
            if cid is not None and f.get("contract_state") == "revoked":
                self.revoked.setdefault(cid, i)
            return
        ok = True
        if cid is not None:
            c = self.contracts.get(cid)
            if c is not None and c.until is not None and t > c.until:
                self._flag(
                    i,
                    "contract-expired" if kind == "round.started" else "after-expiry",
                    f"{kind} at {f['time']} after contract {cid} expired",
                    contract_id=cid,
                    time=f["time"],
                    until=c.fields.get("until"),
                )
                ok = False
            revoked_at = self.revoked.get(cid)
            if revoked_at is not None and kind in ROUND_KINDS:
                self._flag(
                    i,
                    "after-revocation",
                    f"{kind} cites contract {cid}, revoked at entry {revoked_at}: "
                    "nothing may leave under it since",
                    contract_id=cid,
                    revoked_index=revoked_at,
                )
                ok = False
        if kind == "round.started":
            self._round(i, f, ok)
        elif kind == "round.finished":
            self._finished(i, f)
            if type(f.get("run_id")) is str and cid is not None:
                self.trained.add((f["run_id"], cid))
        elif kind == "round.evaluated":
            self._evaluated(i, f)

    def _run_finished(self, i: int, f: dict[str, Any]) -> None:
        run_id = f.get("run_id")
        # a site's entry names its contract; the hub's names the run's contracts
        site_entry = type(run_id) is str and (run_id, f.get("contract_id")) in self.trained
        if type(run_id) is not str or not (run_id in self.runs or site_entry):
            self._flag(
                i,
                "run-unknown",
                f"run.finished of run {run_id!r}, which no earlier run.registered registered "
                "and no round of this log trained",
                run_id=run_id,
            )
        model = f.get("model_sha256")
        if f.get("status") not in ("finished", "stopped") or (
            model is not None and (type(model) is not str or not _SHA256_HEX.fullmatch(model))
        ):
            self._flag(
                i,
                "run-malformed",
                "run.finished needs status finished or stopped and a null or SHA-256 model hash",
                status=f.get("status"),
                model_sha256=model,
            )

    def _contract(self, i: int, f: dict[str, Any]) -> None:
        cid = f["contract_id"]
        if cid is None:
            self._flag(i, "contract-malformed", "contract.agreed without contract_id")
            return
        if cid in self.contracts:
            self._flag(i, "contract-duplicate", f"contract {cid} agreed twice", contract_id=cid)
            return
        until = f.get("until")
        try:
            t = parse_time(until) if until is not None else None
        except EventError:
            self._flag(i, "contract-malformed", f"contract {cid} until {until!r} is not RFC 3339")
            t = None
        consumer = consumer_key(f.get("consumer"))
        self.contracts[cid] = _Terms(
            f,
            t,
            f["dataset_id"],
            f["fingerprint"],
            f["purpose"],
            consumer,
            _num(f.get("rounds")),
            _num(f.get("epsilon")),
            _num(f.get("delta")),
        )
        self.r.contracts[cid] = {
            "index": i,
            "dataset_id": f["dataset_id"],
            "fingerprint": f["fingerprint"],
            "purpose": f["purpose"],
            "consumer": consumer,
            "template": f.get("template"),
            "epsilon": f.get("epsilon"),
            "delta": f.get("delta"),
            "rounds": f.get("rounds"),
            "until": until,
            "time": f["time"],
        }

    def _round(self, i: int, f: dict[str, Any], ok: bool = True) -> None:
        cid = f["contract_id"]
        dataset_id, fingerprint, purpose = f["dataset_id"], f["fingerprint"], f["purpose"]
        eps = _num(f.get("epsilon"))
        run_id, round_no = f.get("run_id"), f.get("round")
        consumer = f.get("consumer")
        if consumer is not None and type(consumer) is not str:
            consumer = consumer_key(consumer)
        vio = self.r.violations
        n_before = len(vio)
        self.r.round_count += 1
        if eps is None or eps < 0:
            self._flag(
                i,
                "round-malformed",
                "round.started without a non-negative epsilon",
                epsilon=f.get("epsilon"),
            )
            eps = None
        recorded = eps or 0.0  # a negative charge must not lower the sums below
        self._unit(i, f, dataset_id or fingerprint)
        # what this round charged, for its round.finished (and the distinct rounds)
        key = self._round_key(run_id, round_no, dataset_id or fingerprint)
        stats = f.get("release") == "stats" and type(round_no) is int and round_no == 0
        self._charge(i, cid, key, stats, recorded)
        rec = None
        if self.keep_rounds:  # memory per round: only ``show`` needs the records
            rec = RoundRecord(
                i,
                f["time"],
                cid,
                dataset_id,
                fingerprint,
                consumer,
                purpose,
                run_id,
                round_no,
                recorded,
                ok=ok,
            )
            self.r.rounds.append(rec)
            self.open_rounds[(cid, key)] = rec
        c = self.contracts.get(cid) if cid is not None else None
        if c is None:
            self._flag(
                i,
                "contract-unknown",
                f"round.started cites contract {cid!r}, which no earlier contract.agreed agreed",
                contract_id=cid,
            )
            if rec is not None:
                rec.ok = False
            return
        if rec is not None:
            rec.consumer = rec.consumer or c.consumer
        if dataset_id is not None and dataset_id != c.dataset_id:
            self._mismatch(i, "dataset", cid, dataset_id, c.dataset_id)
        if fingerprint is not None and fingerprint != c.fingerprint:
            self._mismatch(i, "fingerprint", cid, fingerprint, c.fingerprint)
        if purpose is not None and purpose != c.purpose:
            self._mismatch(i, "purpose", cid, purpose, c.purpose)
        if consumer is not None and consumer != c.consumer:
            self._mismatch(i, "consumer", cid, consumer, c.consumer)
        if purpose is None and c.purpose is not None:
            self._flag(
                i,
                "contract-purpose",
                "round.started names no purpose",
                contract_id=cid,
                contract=c.purpose,
            )
        used = self.rounds_used.get(cid, 0)
        if c.rounds is not None and used > c.rounds:
            self._flag(
                i,
                "contract-rounds",
                f"round {used} of contract {cid} exceeds its {int(c.rounds)} rounds",
                contract_id=cid,
                rounds=used,
                limit=int(c.rounds),
            )
        computed = self._mechanism(i, f, c, cid, eps)
        # what left counts, whichever is larger: a charge logged too low must not hide it
        spend = recorded if computed is None else max(recorded, computed)
        self._spend(i, c, cid, dataset_id or fingerprint or c.dataset_id or c.fingerprint, spend)
        if rec is not None and len(vio) > n_before:
            rec.ok = False

    def _charge(self, i: int, cid: str | None, key: tuple, stats: bool, eps: float) -> None:
        """Record a round.started's charge; rule ``round-repeated``: a (run, round) on a
        dataset is charged once, the statistics once per (run, dataset)."""
        charged = self.charged.get(cid)
        if charged is None:
            charged = self.charged[cid] = {}
        run_id, round_no, dataset = key
        got = charged.get(key)
        if got is not None:
            got.epsilon += eps  # both charges were spent: the sums count both
            self._flag(
                i,
                "round-repeated",
                f"a second round.started of run {run_id!r} round {round_no!r} on dataset "
                f"{dataset!r} under contract {cid!r}: a round executes at most once",
                contract_id=cid,
                run_id=run_id,
                round=round_no,
                dataset=dataset,
            )
            return
        charged[key] = _Round(eps, stats)
        if not stats:
            self.rounds_used[cid] = self.rounds_used.get(cid, 0) + 1
            return
        first = self.stats_runs.setdefault((run_id, dataset), i)
        if first != i:
            self._flag(
                i,
                "round-repeated",
                f"a second statistics release (round 0) of run {run_id!r} on dataset "
                f"{dataset!r}, first at entry {first}: they are released once per run",
                contract_id=cid,
                run_id=run_id,
                round=round_no,
                dataset=dataset,
                first_index=first,
            )

    def _mechanism(
        self, i: int, f: dict[str, Any], c: _Terms, cid: str, eps: float | None
    ) -> float | None:
        """Rule ``round-mechanism``: recompute the charge from the releases the entry logs.

        The charge is the accountant's epsilon of the contract's releases so far (its
        earlier round.started entries, in log order) with these, less without them; the
        contract's epsilon is the former. Returns the recomputed charge, or None when the
        entry gives nothing to recompute from (then flagged).
        """
        release, round_no = f.get("release"), f.get("round")
        values: dict[str, Any] = {"contract_id": cid, "run_id": f.get("run_id"), "round": round_no}
        zero = type(round_no) is int and round_no == 0
        if release not in RELEASES or (release == "stats") != zero:
            self._flag(
                i,
                "round-mechanism",
                f"release {release!r} of round {round_no!r}: the statistics are released as "
                "round 0 (release 'stats'), rounds from 1 (release 'round')",
                release=release,
                **values,
            )
        if c.delta is None or not 0 < c.delta < 1:
            self._flag(
                i,
                "round-mechanism",
                f"contract {cid} names no delta in (0, 1) ({c.fields.get('delta')!r}): "
                "its charges cannot be recomputed",
                delta=c.fields.get("delta"),
                **values,
            )
            return None
        m = self.mechanisms.get(cid)
        if m is None:
            m = self.mechanisms[cid] = _Contract()
        releases = f.get("releases")
        try:
            if type(releases) is not list or not releases:
                raise accountant.AccountantError(
                    f"releases must be a non-empty list of [noise, rate, steps], got {releases!r}"
                )
            parsed = [accountant.check_release(r) for r in releases]
            curve = accountant.compose_onto(m.curve, parsed)
            after = accountant.epsilon_at(curve, c.delta)
        except (ArithmeticError, ValueError) as e:  # AccountantError, or numbers past floats
            self._flag(i, "round-mechanism", f"round.started releases: {e}", **values)
            m.legacy += eps or 0.0  # what it charged still counts in the contract's epsilon
            return None
        charge = max(0.0, after - m.epsilon)
        m.curve, m.epsilon = curve, after
        total = after + m.legacy
        if eps is not None and not _close(eps, charge):
            self._flag(
                i,
                "round-mechanism",
                f"round.started charges epsilon {eps!r}, but the accountant gives {charge!r} "
                f"for its releases after contract {cid}'s earlier ones (delta {c.delta:g})",
                epsilon=eps,
                accountant=charge,
                **values,
            )
        logged = f.get("contract_epsilon")
        logged_num = _num(logged)
        if logged_num is None or not _close(logged_num, total):
            self._flag(
                i,
                "round-mechanism",
                f"round.started says contract {cid} has spent epsilon {logged!r}, but the "
                f"accountant gives {total!r} over all it released (delta {c.delta:g})",
                contract_epsilon=logged,
                accountant=total,
                **values,
            )
        return charge

    def _mismatch(self, i: int, name: str, cid: str, got: Any, want: Any) -> None:
        self._flag(
            i,
            f"contract-{name}",
            f"round {name} {got!r} is not contract {cid}'s {want!r}",
            contract_id=cid,
            round=got,
            contract=want,
        )

    def _spend(self, i: int, c: _Terms, cid: str, dataset: str | None, eps: float) -> None:
        """Add ``eps`` to the contract's and the dataset's cumulative epsilon; check both."""
        spent = self.contract_spent.get(cid, 0.0) + eps
        self.contract_spent[cid] = spent
        if c.epsilon is not None and spent > c.epsilon + EPS_TOL:
            self._flag(
                i,
                "contract-epsilon",
                f"cumulative epsilon {spent:g} exceeds contract {cid}'s {c.epsilon:g}",
                contract_id=cid,
                spent=spent,
                limit=c.epsilon,
            )
        if dataset is None:
            return
        total = self.spent.get(dataset, 0.0) + eps
        self.spent[dataset] = self.r.epsilon_by_dataset[dataset] = total
        budget = self.budget.get(dataset)
        if budget is not None and total > budget + EPS_TOL:
            self._flag(
                i,
                "budget-epsilon",
                f"cumulative epsilon {total:g} on dataset {dataset} "
                f"exceeds the policy budget {budget:g}",
                dataset=dataset,
                spent=total,
                budget=budget,
            )

    def _unit(self, i: int, f: dict[str, Any], dataset: str | None) -> None:
        """Rule ``round-privacy-unit``: no frame round on an episode budget (module docstring)."""
        unit = f.get("privacy_unit")
        unit = unit if type(unit) is str else "frame"
        if dataset is None:
            return
        first = self.units.get(dataset)
        if first is None:
            self.units[dataset] = (unit, i)
        elif first[0] == "episode" and unit != "episode":
            self._flag(
                i,
                "round-privacy-unit",
                f"a round on dataset {dataset!r} counts epsilon per {unit!r}, but its rounds "
                f"since entry {first[1]} count it per {first[0]!r}",
                dataset=dataset,
                privacy_unit=unit,
                first_unit=first[0],
                first_index=first[1],
            )

    def _finished(self, i: int, f: dict[str, Any]) -> None:
        """A round.finished: its round.started came first, charged at least the epsilon it
        reports, it names the model it produced, and it is the round's only one (rules
        ``round-not-started``, ``round-epsilon``, ``round-model``, ``round-repeated``)."""
        cid = f["contract_id"]
        c = self._cited(i, f)
        run_id, round_no = f.get("run_id"), f.get("round")
        dataset = f["dataset_id"] or f["fingerprint"]
        key = self._round_key(run_id, round_no, dataset)
        got = self.charged.get(cid, {}).get(key)
        charged = got.epsilon if got is not None else None
        vio = self.r.violations
        n_before = len(vio)
        repeated = got is not None and got.finished
        if got is None:
            self._flag(
                i,
                "round-not-started",
                f"round.finished of run {run_id!r} round {round_no!r} on dataset {dataset!r} "
                f"under contract {cid!r} has no earlier round.started",
                contract_id=cid,
                run_id=run_id,
                round=round_no,
                dataset=dataset,
            )
        elif repeated:  # the replay: one charge, its release sent again (a fresh noise draw)
            self._flag(
                i,
                "round-repeated",
                f"a second round.finished of run {run_id!r} round {round_no!r} on dataset "
                f"{dataset!r} under contract {cid!r}: one charge covers one release",
                contract_id=cid,
                run_id=run_id,
                round=round_no,
                dataset=dataset,
            )
        else:
            got.finished = True
        eps = _num(f.get("epsilon"))
        if eps is None or eps < 0:
            self._flag(
                i,
                "round-malformed",
                "round.finished without a non-negative epsilon",
                epsilon=f.get("epsilon"),
            )
        elif charged is not None and eps > charged + EPS_TOL * max(1.0, charged):
            self._flag(
                i,
                "round-epsilon",
                f"round.finished reports epsilon {eps:g} but its round.started charged {charged:g}",
                contract_id=cid,
                run_id=run_id,
                round=round_no,
                charged=charged,
                finished=eps,
            )
            if c is not None:  # the excess was spent all the same: it counts (as the ledger's)
                self._spend(i, c, cid, dataset or c.dataset_id or c.fingerprint, eps - charged)
        self._unit(i, f, dataset)
        model = self._model(i, f, "round.finished")
        rec = self.open_rounds.get((cid, key))
        if rec is not None:
            if not repeated:
                rec.model_sha256 = model if type(model) is str else None
                unit = f.get("privacy_unit")
                rec.privacy_unit = unit if type(unit) is str else None
                rec.finished_index = i
            if len(vio) > n_before:
                rec.ok = False

    def _evaluated(self, i: int, f: dict[str, Any]) -> None:
        """A round.evaluated: after its round's round.finished, once, never of the
        statistics (rule ``round-evaluated``: a round's charge covers one evaluation; more
        would be a free oracle on the data), naming the model evaluated (``round-model``)."""
        cid = f["contract_id"]
        self._cited(i, f)
        run_id, round_no = f.get("run_id"), f.get("round")
        dataset = f["dataset_id"] or f["fingerprint"]
        key = self._round_key(run_id, round_no, dataset)
        got = self.charged.get(cid, {}).get(key)
        vio = self.r.violations
        n_before = len(vio)
        values = {"contract_id": cid, "run_id": run_id, "round": round_no, "dataset": dataset}
        what = f"round.evaluated of run {run_id!r} round {round_no!r} on dataset {dataset!r}"
        if got is None or not got.finished:
            self._flag(
                i,
                "round-evaluated",
                f"{what} under contract {cid!r} has no earlier round.finished",
                **values,
            )
        elif got.stats:
            self._flag(
                i,
                "round-evaluated",
                f"{what}: the statistics (round 0) have no evaluation",
                **values,
            )
        elif got.evaluated:
            self._flag(
                i,
                "round-evaluated",
                f"a second {what} under contract {cid!r}: its charge covers one evaluation",
                **values,
            )
        else:
            got.evaluated = True
        self._model(i, f, "round.evaluated")
        rec = self.open_rounds.get((cid, key))
        if rec is not None and len(vio) > n_before:
            rec.ok = False

    def _cited(self, i: int, f: dict[str, Any]) -> _Terms | None:
        """The contract a round.finished or round.evaluated cites (``contract-unknown``)."""
        cid = f["contract_id"]
        c = self.contracts.get(cid) if cid is not None else None
        if cid is not None and c is None:
            self._flag(
                i,
                "contract-unknown",
                f"{f['kind']} cites unknown contract {cid!r}",
                contract_id=cid,
            )
        return c

    def _model(self, i: int, f: dict[str, Any], kind: str) -> Any:
        """Rule ``round-model``: the entry names its model's SHA-256; returns it as given."""
        model = f.get("model_sha256")
        if type(model) is not str or _SHA256_HEX.fullmatch(model) is None:
            self._flag(
                i,
                "round-model",
                f"{kind} names no model hash (model_sha256, 64 lower-case hex digits)",
                contract_id=f["contract_id"],
                run_id=f.get("run_id"),
                round=f.get("round"),
                model_sha256=model,
            )
        return model
