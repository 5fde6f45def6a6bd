"""A site's privacy budget as it tells the data space: one signed statement per dataset.

The holder's ledger is the truth about a dataset's budget (:func:`budget_report`).
What the hub shows of it is what the site signed: a ``budget.reported`` event
(:mod:`dataspace.audit.events`: RFC 8785 canonical JSON, actor = the site, signed
with the site's key). It is a statement, not a log entry: the connector sends it
to the hub (``POST /v1/budget``), which verifies it and keeps the latest per
dataset; anyone the hub shows it to can check the signature against the holder's
key. Its figures derive from the site's log (``policy.published``,
``contract.agreed``, ``round.started``), which auditors verify.

Members: the standard ones (``dataset_id``, ``fingerprint``, ``time``; no contract,
no purpose) and exactly these details:

==================  =============================================================
budget              the dataset's lifetime epsilon (the policy in force)
reserved            epsilon live contracts may still charge
spent               epsilon charged so far (every charge, never taken back)
remaining           budget - reserved - spent
delta_budget, ...   the same four for delta (``delta_reserved``, ``delta_spent``,
                    ``delta_remaining``)
live_contracts      agreed contracts not yet ended
rounds              training rounds charged
policy_sha256       the policy in force
site_log_size       SITE/log's size when the report was made
==================  =============================================================

Order: a statement is newer than another of the same dataset when its
``(site_log_size, time)`` is larger (the log only grows, and every change that
moves a budget appends to it; the time orders reports of one log size, e.g. after
a contract expired). :func:`read_budget_statement` refuses what no honest ledger says:
NaN or infinite numbers, negatives, spent and reserved above the lifetime budget,
a remaining that is not budget - reserved - spent, a delta above 1.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dataspace.audit.events import (
    EventError,
    EventSignatureError,
    make_event,
    verify_event,
)
from dataspace.errors import DataspaceError, RefusedError

if TYPE_CHECKING:
    from dataspace.policy.ledger import BudgetRow
    from dataspace.site.folder import Site

KIND = "budget.reported"
EPSILONS = ("budget", "reserved", "spent", "remaining")
DELTAS = ("delta_budget", "delta_reserved", "delta_spent", "delta_remaining")
COUNTS = ("live_contracts", "rounds", "site_log_size")
DETAILS = frozenset((*EPSILONS, *DELTAS, *COUNTS, "policy_sha256"))
#: the largest epsilon a statement may carry (the hub's contract schema has the same bound)
MAX_EPSILON = 1e6
#: JSON integers are exact up to here (RFC 8785 writes numbers as IEEE doubles)
MAX_COUNT = 2**53 - 1
#: relative slack of the sums (the ledger's own tolerance is 1e-9)
TOL = 1e-6
#: the longest statement a hub accepts (a real one is about 700 characters)
MAX_CHARS = 8192
_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,200}")
_HEX = re.compile(r"[0-9a-f]{1,128}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BudgetStatementError(DataspaceError):
    """A budget statement that is malformed or states what no ledger can (a 422)."""

    http_status = 422
    code = "invalid_request"


class BudgetSignatureError(RefusedError):
    """A budget statement not signed by the holder that sends it."""

    code = "bad_report_signature"


@dataclass(frozen=True)
class BudgetStatement:
    """A verified statement: who said it, of which dataset, when, and the figures."""

    holder: str
    holder_name: str
    dataset_id: str
    fingerprint: str
    time: datetime
    figures: dict[str, Any]
    entry: str

    @property
    def site_log_size(self) -> int:
        return int(self.figures["site_log_size"])

    @property
    def order(self) -> tuple[int, datetime]:
        """Larger is newer (module docstring)."""
        return (self.site_log_size, self.time)

    def to_json(self) -> dict[str, Any]:
        """The statement as the hub keeps and serves it (the signed text included)."""
        return {
            "holder": self.holder,
            "holder_name": self.holder_name,
            "dataset_id": self.dataset_id,
            "fingerprint": self.fingerprint,
            "reported_at": self.time.astimezone(UTC).isoformat(),
            **self.figures,
            "statement": self.entry,
        }


def figures_of(row: BudgetRow, site_log_size: int) -> dict[str, Any]:
    """The details of ``row``'s statement (module docstring)."""
    return {
        "budget": float(row.budget),
        "reserved": float(row.reserved),
        "spent": float(row.spent),
        "remaining": float(row.remaining),
        "delta_budget": float(row.delta_budget),
        "delta_reserved": float(row.delta_reserved),
        "delta_spent": float(row.delta_spent),
        "delta_remaining": float(row.delta_remaining),
        "live_contracts": int(row.live_contracts),
        "rounds": int(row.rounds),
        "policy_sha256": row.policy_sha256,
        "site_log_size": int(site_log_size),
    }


def sign_budget_statement(
    site: Site, row: BudgetRow, site_log_size: int, now: datetime | None = None
) -> str:
    """``row`` (what :func:`budget_report` says) as a statement signed by the site."""
    entry = make_event(
        KIND,
        site.key,
        site.identity,
        dataset_id=row.dataset_id,
        fingerprint=row.fingerprint,
        time=now or datetime.now(UTC),
        **figures_of(row, site_log_size),
    )
    return entry.decode()


def read_budget_statement(entry: str, holder_key: str) -> BudgetStatement:
    """Verify ``entry``: a well-formed statement signed by ``holder_key`` (base64).

    Raises :class:`BudgetSignatureError` (signed by another key, or not at all) or
    :class:`BudgetStatementError` (malformed, or figures no ledger can state).
    """
    if len(entry) > MAX_CHARS:
        raise BudgetStatementError(f"statement: {len(entry)} characters, at most {MAX_CHARS}")
    try:
        raw_key = base64.b64decode(holder_key, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BudgetSignatureError(f"holder key is not base64: {e}") from e
    try:
        ev = verify_event(entry.encode(), {raw_key})
    except EventSignatureError as e:  # untrusted actors included
        raise BudgetSignatureError(f"statement not signed by the sending holder: {e}") from e
    except EventError as e:
        raise BudgetStatementError(f"statement: {e}") from e
    if ev.kind != KIND:
        raise BudgetStatementError(f"statement: kind is {ev.kind!r}, not {KIND!r}")
    _check_ids(ev.dataset_id, ev.fingerprint, ev.contract_id, ev.purpose)
    figures = check_figures(ev.details)
    return BudgetStatement(
        holder=holder_key,
        holder_name=ev.actor_name,
        dataset_id=str(ev.dataset_id),
        fingerprint=str(ev.fingerprint),
        time=ev.time.astimezone(UTC),
        figures=figures,
        entry=entry,
    )


def _check_ids(dataset_id: Any, fingerprint: Any, contract_id: Any, purpose: Any) -> None:
    if not isinstance(dataset_id, str) or not _ID.fullmatch(dataset_id):
        raise BudgetStatementError(f"statement: dataset_id {dataset_id!r} is not an id")
    if not isinstance(fingerprint, str) or not _HEX.fullmatch(fingerprint):
        raise BudgetStatementError(f"statement: fingerprint {fingerprint!r} is not hex")
    if contract_id is not None or purpose is not None:
        raise BudgetStatementError("statement: a budget names no contract and no purpose")


def check_figures(details: dict[str, Any]) -> dict[str, Any]:
    """The details of a statement, checked (module docstring); raises BudgetStatementError."""
    names = set(details)
    if names != DETAILS:
        missing, extra = sorted(DETAILS - names), sorted(names - DETAILS)
        raise BudgetStatementError(f"statement: missing {missing}, unknown {extra}")
    out: dict[str, Any] = {}
    for name in EPSILONS:
        low = None if name == "remaining" else 0.0
        out[name] = _number(details, name, low, MAX_EPSILON)
    for name in DELTAS:
        low = None if name == "delta_remaining" else 0.0
        out[name] = _number(details, name, low, 1.0)
    for name in COUNTS:
        out[name] = _count(details, name)
    sha = details["policy_sha256"]
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise BudgetStatementError(f"statement: policy_sha256 {sha!r} is not a SHA-256")
    out["policy_sha256"] = sha
    _check_sums(out, "", "epsilon")
    _check_sums(out, "delta_", "delta")
    return out


def _number(d: dict[str, Any], name: str, low: float | None, high: float) -> float:
    v = d[name]
    if type(v) not in (int, float) or not math.isfinite(v):
        raise BudgetStatementError(f"statement: {name} is {v!r}, not a finite number")
    lo = -high if low is None else low
    if not lo <= v <= high:
        raise BudgetStatementError(f"statement: {name} is {v!r}, outside [{lo:g}, {high:g}]")
    return float(v)


def _count(d: dict[str, Any], name: str) -> int:
    v = d[name]
    if type(v) is not int or not 0 <= v <= MAX_COUNT:
        raise BudgetStatementError(f"statement: {name} is {v!r}, not a count")
    return v


def _check_sums(f: dict[str, Any], prefix: str, what: str) -> None:
    """Spent and reserved within the lifetime budget; remaining is what is left."""
    budget, reserved = f[prefix + "budget"], f[prefix + "reserved"]
    spent, remaining = f[prefix + "spent"], f[prefix + "remaining"]
    slack = TOL * max(1.0, budget) if what == "epsilon" else TOL * max(budget, 1e-12)
    if spent + reserved > budget + slack:
        raise BudgetStatementError(
            f"statement: {what} spent {spent:g} and reserved {reserved:g} exceed the "
            f"lifetime budget {budget:g}"
        )
    if abs(remaining - (budget - reserved - spent)) > slack:
        raise BudgetStatementError(
            f"statement: {what} remaining {remaining:g} is not budget - reserved - spent "
            f"({budget - reserved - spent:g})"
        )
