"""Policy evaluation: one pure function, :func:`evaluate`.

ODRL 2.2 leaves evaluation to profiles; ours is fixed here and written out in
docs/odrl-profile.md ("Evaluation"). In short:

1. A malformed request (unknown action, epsilon <= 0, rounds < 1, an end in
   the past, ...) is denied.
2. A request for another dataset, or for other data (fingerprint), is denied.
3. Any prohibition for the requested action (and, if it names an assignee, for
   the requesting consumer) whose constraints all hold at *some* instant of the
   requested period denies (``conflict: prohibit``).
4. Otherwise the request is permitted by the first permission for the action
   (and the consumer, or no assignee) whose constraints *all* hold for the
   *whole* period [now, until) (AND).
   The budget constraints hold when what the dataset has already committed
   (reserved by live contracts plus spent) plus what is asked stays within
   the permission's epsilon and delta.
5. No such permission: denied, with every candidate permission's reasons.

Nothing here touches a site or a clock: callers pass ``now`` and the usage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from dataspace.policy.odrl import ACTIONS, Constraint, Rule, UsagePolicy, format_datetime
from dataspace.policy.terms import ContractTerms

#: relative slack for float sums of epsilons (8 contracts of 1.0 fill a budget of 8.0)
_REL_TOL = 1e-9


@dataclass(frozen=True)
class Request:
    """What a consumer asks of a dataset: the terms it wants (``terms.delta`` None: a
    share of delta proportional to epsilon)."""

    dataset_id: str
    consumer: str  # base64 Ed25519 public key (Identity.key_b64)
    terms: ContractTerms
    fingerprint: str | None = None  # None: whatever the policy targets
    #: how a round combines the sites' updates: "secure" (SecAgg+) or "plain"; None for a
    #: contract (the requirement holds then, and is checked at every round by the ledger)
    aggregation: str | None = None


@dataclass(frozen=True)
class Usage:
    """What a dataset has already committed: reserved by live contracts plus spent."""

    epsilon: float = 0.0
    delta: float = 0.0


NO_USAGE = Usage()


@dataclass(frozen=True)
class Grant:
    """The terms a permission grants (what a contract will say; ``delta`` always set)."""

    permission: int
    terms: ContractTerms


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)
    granted: Grant | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def evaluate(
    policy: UsagePolicy,
    request: Request,
    now: datetime,
    used: Usage = NO_USAGE,
    check_budget: bool = True,
) -> Decision:
    """Decide ``request`` against ``policy`` at ``now`` (semantics: module docstring).

    ``check_budget=False`` skips the two budget constraints; the ledger uses
    it to re-check a running contract against the current policy, because
    that contract's own reservation is already part of ``used``.
    """
    bad = _malformed(request, now)
    if bad:
        return Decision(False, tuple(bad))
    if request.dataset_id != policy.dataset_id:
        return Decision(
            False,
            (f"policy {policy.uid} is for dataset {policy.dataset_id}, not {request.dataset_id}",),
        )
    if request.fingerprint is not None and request.fingerprint != policy.fingerprint:
        return Decision(
            False,
            (
                f"policy {policy.uid} covers fingerprint {policy.fingerprint}, "
                f"not {request.fingerprint}",
            ),
        )
    for i, rule in enumerate(policy.prohibitions):
        if (
            rule.action == request.terms.action
            and _assigned(rule, request)
            and all(_prohibition_holds(c, request, now) for c in rule.constraints)
        ):
            what = ", ".join(_describe(c) for c in rule.constraints) or "always"
            if rule.assignee is not None:
                what = f"assignee {rule.assignee}" + ("" if not rule.constraints else ", " + what)
            return Decision(False, (f"prohibition[{i}] forbids {rule.action} ({what})",))
    reasons: list[str] = []
    action = request.terms.action
    for_action = [(i, r) for i, r in enumerate(policy.permissions) if r.action == action]
    if not for_action:
        return Decision(False, (f"the policy permits no {action!r} action",))
    candidates = [(i, r) for i, r in for_action if _assigned(r, request)]
    if not candidates:
        return Decision(False, (f"consumer {request.consumer} is not an assignee of this policy",))
    for i, rule in candidates:
        failures, delta = _permission_failures(rule, request, now, used, check_budget)
        if not failures:
            granted = request.terms.as_dict() | {"epsilon": float(request.terms.epsilon)}
            grant = Grant(permission=i, terms=ContractTerms(**(granted | {"delta": delta})))
            return Decision(True, (f"permission[{i}] permits {action}",), grant)
        reasons.extend(f"permission[{i}]: {f}" for f in failures)
    return Decision(False, tuple(reasons))


def _malformed(r: Request, now: datetime) -> list[str]:
    t = r.terms
    bad = []
    if t.action not in ACTIONS:
        bad.append(f"unknown action {t.action!r} (known: {', '.join(ACTIONS)})")
    if isinstance(t.epsilon, bool) or not (math.isfinite(t.epsilon) and t.epsilon > 0):
        bad.append(f"epsilon must be a finite number > 0, got {t.epsilon!r}")
    if t.delta is not None and not (math.isfinite(t.delta) and 0 <= t.delta < 1):
        bad.append(f"delta must be in [0, 1), got {t.delta!r}")
    if isinstance(t.rounds, bool) or not isinstance(t.rounds, int) or t.rounds < 1:
        bad.append(f"rounds must be a whole number >= 1, got {t.rounds!r}")
    if not t.purpose:
        bad.append("no purpose given")
    if t.until.tzinfo is None:
        bad.append(f"until {t.until.isoformat()} has no time zone")
    elif t.until <= now:
        bad.append(f"until {format_datetime(t.until)} is not after now ({format_datetime(now)})")
    return bad


def _assigned(rule: Rule, r: Request) -> bool:
    """Is the rule for the requesting consumer? (ODRL 2.2 IM, "Party": a rule with an
    assignee is for that party only; without one, for anyone.)"""
    return rule.assignee is None or rule.assignee == r.consumer


def _le(a: float, b: float) -> bool:
    return a <= b + _REL_TOL * max(1.0, abs(b))


def _permission_failures(
    rule: Rule, r: Request, now: datetime, used: Usage, check_budget: bool
) -> tuple[list[str], float]:
    """Reasons each constraint fails (empty: all hold) and the delta that would be granted."""
    eps_cap = float(rule.value("epsilon"))  # type: ignore[arg-type]
    delta_cap = float(rule.value("delta"))  # type: ignore[arg-type]
    # A request that names no delta gets the share of delta its epsilon is of the
    # budget: then reserving epsilon within budget also keeps delta within budget.
    eps = r.terms.epsilon
    if r.terms.delta is not None:
        delta = r.terms.delta
    else:  # 12 significant digits: 1e-5 * 3/8 is 3.75e-06, not 3.7500000000000005e-06
        delta = float(f"{delta_cap * min(1.0, eps / eps_cap):.12g}")
    failures = []
    for c in rule.constraints:
        if c.left == "epsilon":
            if not _le(eps, eps_cap):
                failures.append(f"epsilon {eps:g} exceeds the budget {eps_cap:g}")
            elif check_budget and not _le(used.epsilon + eps, eps_cap):
                left = max(0.0, eps_cap - used.epsilon)
                failures.append(
                    f"epsilon {eps:g} wanted but only {left:g} of the dataset's budget "
                    f"{eps_cap:g} is unreserved"
                )
        elif c.left == "delta":
            if not _le(delta, delta_cap):
                failures.append(f"delta {delta:g} exceeds the budget {delta_cap:g}")
            elif check_budget and not _le(used.delta + delta, delta_cap):
                left = max(0.0, delta_cap - used.delta)
                failures.append(
                    f"delta {delta:g} wanted but only {left:g} of the dataset's delta "
                    f"{delta_cap:g} is unreserved"
                )
        elif not _permission_holds(c, r, now):
            failures.append(_failure(c, r, now))
    return failures, float(delta)


def _in(c: Constraint, value: str | None) -> bool:
    allowed = (c.right,) if isinstance(c.right, str) else c.right
    return value is not None and value in allowed  # type: ignore[operator]


def _permission_holds(c: Constraint, r: Request, now: datetime) -> bool:
    """Does ``c`` hold at every instant of [now, until)?"""
    if c.left == "purpose":
        return _in(c, r.terms.purpose)
    if c.left == "modelTemplate":
        return _in(c, r.terms.template)
    if c.left == "maxRounds":
        return r.terms.rounds <= c.right  # type: ignore[operator]
    if c.left == "aggregation":
        return r.aggregation is None or r.aggregation == c.right
    if c.left == "dateTime":
        x: datetime = c.right  # type: ignore[assignment]
        if c.operator in ("lt", "lteq"):  # an expiry: the contract must end by then
            return r.terms.until <= x and (now < x if c.operator == "lt" else now <= x)
        return now > x if c.operator == "gt" else now >= x  # not before
    raise AssertionError(f"unhandled left operand {c.left!r}")  # parse_usage_policy forbids it


def _prohibition_holds(c: Constraint, r: Request, now: datetime) -> bool:
    """Does ``c`` hold at some instant of [now, until)?"""
    if c.left == "dateTime":
        x: datetime = c.right  # type: ignore[assignment]
        if c.operator == "lt":
            return now < x
        if c.operator == "lteq":
            return now <= x
        return r.terms.until > x  # gt / gteq: some instant before `until` is after x
    return _permission_holds(c, r, now)


def _allowed(c: Constraint) -> tuple[str, ...]:
    """The values an ``isAnyOf`` / ``eq`` constraint allows (a string is one value)."""
    right = c.right
    if isinstance(right, str):
        return (right,)
    if isinstance(right, tuple | list):
        return tuple(str(v) for v in right)
    return (str(right),)


def _one_of(values: tuple[str, ...]) -> str:
    """``allowed: a, b`` (``none`` for an empty list), for refusal messages."""
    return "allowed: " + (", ".join(values) if values else "none")


def _describe(c: Constraint) -> str:
    right = c.right
    if isinstance(right, tuple | list):
        right = "[" + ", ".join(str(v) for v in right) + "]"
    elif isinstance(right, datetime):
        right = format_datetime(right)
    return f"{c.left} {c.operator} {right}"


def _failure(c: Constraint, r: Request, now: datetime) -> str:
    if c.left == "purpose":
        return f"purpose {r.terms.purpose!r} is not permitted ({_one_of(_allowed(c))})"
    if c.left == "modelTemplate":
        return f"model template {r.terms.template!r} is not permitted ({_one_of(_allowed(c))})"
    if c.left == "maxRounds":
        return f"{r.terms.rounds} rounds asked, at most {c.right} permitted"
    if c.left == "aggregation":
        return f"the policy requires {c.right} aggregation (SecAgg+); this round is {r.aggregation}"
    x = format_datetime(c.right)  # type: ignore[arg-type]
    if c.operator in ("lt", "lteq"):
        if not (now < c.right if c.operator == "lt" else now <= c.right):  # type: ignore[operator]
            return f"the policy expired at {x}"
        return f"until {format_datetime(r.terms.until)} is after the policy's expiry {x}"
    return f"the policy is not valid before {x} (now {format_datetime(now)})"
