"""Contract terms: the one value object for what a contract permits.

The seven terms (what a consumer asks, what a permission grants, what both
parties sign, what a contract holds) are declared once, here:

* ``action`` (``train`` or ``compute-statistics``) and ``purpose``;
* ``template``: the model template the rounds train (None: not restricted);
* ``epsilon`` and ``delta``: the privacy the contract may cost (a request may
  leave ``delta`` None: it then gets a share of the budget's delta
  proportional to its epsilon; granted and signed terms always have one);
* ``rounds``: how many training rounds it may run;
* ``until``: when it ends.

Everywhere they travel as JSON (an HTTP body, the signed terms, a log event, a
database row) they are the same flat fields, with these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from dataspace.policy.odrl import format_datetime


@dataclass(frozen=True, kw_only=True)
class ContractTerms:
    """What a contract permits (module docstring); frozen, compared by value."""

    purpose: str
    epsilon: float
    rounds: int
    until: datetime
    action: str = "train"
    template: str | None = None
    delta: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The seven terms as Python values (``until`` a datetime), also of a subclass."""
        return {f.name: getattr(self, f.name) for f in fields(ContractTerms)}

    def to_json(self) -> dict[str, Any]:
        """The seven terms as flat JSON fields (``until`` RFC 3339 UTC with ``Z``)."""
        return {
            "action": self.action,
            "purpose": self.purpose,
            "template": self.template,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "rounds": self.rounds,
            "until": format_datetime(self.until),
        }

    @staticmethod
    def from_json(obj: dict[str, Any]) -> ContractTerms:
        """The terms from flat JSON fields; ``action``, ``template`` and ``delta`` may be
        absent (their defaults). TypeError or ValueError names the value at fault."""
        return ContractTerms(
            action=as_str(obj.get("action", "train")),
            purpose=as_str(obj["purpose"]),
            template=None if obj.get("template") is None else as_str(obj["template"]),
            epsilon=as_number(obj["epsilon"]),
            delta=None if obj.get("delta") is None else as_number(obj["delta"]),
            rounds=as_int(obj["rounds"]),
            until=as_time(obj["until"]),
        )


# --- strict JSON values (what a signed document may hold) ------------------------


def as_str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def as_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise TypeError(f"expected a finite number, got {v!r}")
    return float(v)


def as_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected a whole number, got {v!r}")
    return v


def as_time(v: Any) -> datetime:
    dt = datetime.fromisoformat(as_str(v))
    if dt.tzinfo is None:
        raise ValueError(f"time {v!r} has no time zone")
    return dt
