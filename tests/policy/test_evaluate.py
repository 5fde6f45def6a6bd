"""Policy evaluation: one table row per rule of docs/odrl-profile.md, "Evaluation"."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dataspace.policy.evaluate import Request, Usage, evaluate
from dataspace.policy.odrl import KEY_URN, UsagePolicy, build_policy, parse_usage_policy
from dataspace.policy.terms import ContractTerms

ALICE = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
BOB = "ZTeNDSFnYyL3LKklOzYMbk0L45nxW220mBlQhf5rPgk="
FP = "a" * 64
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
EXPIRY = NOW + timedelta(days=30)


def policy(**kw: Any) -> UsagePolicy:
    args: dict[str, Any] = dict(
        dataset_id="ds-1",
        fingerprint=FP,
        assigner=BOB,
        epsilon=8.0,
        delta=1e-5,
        purposes=["research"],
        consumers=[ALICE],
        until=EXPIRY,
        max_rounds=10,
        templates=["mlp"],
        actions=["train", "compute-statistics"],
    )
    args.update(kw)
    return build_policy(**args)


def with_rules(permissions: list[dict] | None = None, prohibitions: list[dict] | None = None):
    d = policy().to_jsonld()
    if permissions is not None:
        d["permission"] = permissions
    if prohibitions is not None:
        d["prohibition"] = prohibitions
    return parse_usage_policy(d)


def c(left: str, op: str, right: Any) -> dict:
    return {"leftOperand": left, "operator": op, "rightOperand": right}


def dt(x: datetime) -> dict:
    return {"@value": x.isoformat().replace("+00:00", "Z"), "@type": "xsd:dateTime"}


BUDGET = [c("epsilon", "lteq", 8), c("delta", "lteq", 1e-5)]

REQ = Request(
    dataset_id="ds-1",
    consumer=ALICE,
    terms=ContractTerms(
        purpose="research", epsilon=2.0, until=NOW + timedelta(days=7), template="mlp", rounds=3
    ),
)


def ask(**change: Any) -> Request:
    """REQ with ``change`` (its own fields, or terms)."""
    own = {k: change.pop(k) for k in ("dataset_id", "consumer", "fingerprint") if k in change}
    return replace(REQ, **own, terms=replace(REQ.terms, **change))


# (id, policy, request changes, now, used, allowed, words in the reasons)
TABLE: list[tuple[str, UsagePolicy, dict, datetime, Usage, bool, str]] = [
    ("all constraints hold", policy(), {}, NOW, Usage(), True, "permission[0] permits"),
    ("unknown action", policy(), {"action": "sell"}, NOW, Usage(), False, "unknown action"),
    ("epsilon zero", policy(), {"epsilon": 0.0}, NOW, Usage(), False, "epsilon must be"),
    ("epsilon nan", policy(), {"epsilon": float("nan")}, NOW, Usage(), False, "epsilon must be"),
    ("rounds zero", policy(), {"rounds": 0}, NOW, Usage(), False, "rounds must be"),
    ("delta one", policy(), {"delta": 1.0}, NOW, Usage(), False, "delta must be"),
    (
        "until in the past",
        policy(),
        {"until": NOW - timedelta(1)},
        NOW,
        Usage(),
        False,
        "is not after now",
    ),
    (
        "naive until",
        policy(),
        {"until": datetime(2026, 12, 1)},
        NOW,
        Usage(),
        False,
        "no time zone",
    ),
    ("other dataset", policy(), {"dataset_id": "ds-2"}, NOW, Usage(), False, "not ds-2"),
    (
        "other fingerprint",
        policy(),
        {"fingerprint": "b" * 64},
        NOW,
        Usage(),
        False,
        "covers fingerprint",
    ),
    (
        "purpose not listed",
        policy(),
        {"purpose": "marketing"},
        NOW,
        Usage(),
        False,
        "purpose 'marketing'",
    ),
    ("consumer not assignee", policy(), {"consumer": BOB}, NOW, Usage(), False, "not an assignee"),
    (
        "no assignee constraint: anyone",
        policy(consumers=[]),
        {"consumer": BOB},
        NOW,
        Usage(),
        True,
        "permits",
    ),
    (
        "template not listed",
        policy(),
        {"template": "transformer"},
        NOW,
        Usage(),
        False,
        "model template",
    ),
    ("no template given", policy(), {"template": None}, NOW, Usage(), False, "model template None"),
    (
        "too many rounds",
        policy(),
        {"rounds": 11},
        NOW,
        Usage(),
        False,
        "11 rounds asked, at most 10",
    ),
    ("max rounds exactly", policy(), {"rounds": 10}, NOW, Usage(), True, "permits"),
    (
        "contract outlives policy",
        policy(),
        {"until": EXPIRY + timedelta(seconds=1)},
        NOW,
        Usage(),
        False,
        "after the policy's expiry",
    ),
    ("contract ends at expiry", policy(), {"until": EXPIRY}, NOW, Usage(), True, "permits"),
    (
        "policy expired",
        policy(),
        {"until": EXPIRY + timedelta(days=2)},
        EXPIRY + timedelta(days=1),
        Usage(),
        False,
        "policy expired at",
    ),
    (
        "lt expiry same as lteq for until",
        with_rules([{"action": "train", "constraint": [c("dateTime", "lt", dt(EXPIRY)), *BUDGET]}]),
        {"until": EXPIRY},
        NOW,
        Usage(),
        True,
        "permits",
    ),
    (
        "not yet valid (gteq)",
        with_rules(
            [
                {
                    "action": "train",
                    "constraint": [c("dateTime", "gteq", dt(NOW + timedelta(1))), *BUDGET],
                }
            ]
        ),
        {},
        NOW,
        Usage(),
        False,
        "not valid before",
    ),
    (
        "valid from now (gteq)",
        with_rules([{"action": "train", "constraint": [c("dateTime", "gteq", dt(NOW)), *BUDGET]}]),
        {},
        NOW,
        Usage(),
        True,
        "permits",
    ),
    (
        "gt excludes the instant",
        with_rules([{"action": "train", "constraint": [c("dateTime", "gt", dt(NOW)), *BUDGET]}]),
        {},
        NOW,
        Usage(),
        False,
        "not valid before",
    ),
    (
        "epsilon above budget",
        policy(),
        {"epsilon": 9.0},
        NOW,
        Usage(),
        False,
        "epsilon 9 exceeds the budget 8",
    ),
    ("epsilon exactly fills budget", policy(), {"epsilon": 8.0}, NOW, Usage(), True, "permits"),
    (
        "budget already committed",
        policy(),
        {"epsilon": 3.0},
        NOW,
        Usage(6.0, 0.0),
        False,
        "only 2 of the dataset's budget 8 is unreserved",
    ),
    ("budget exactly remaining", policy(), {"epsilon": 2.0}, NOW, Usage(6.0, 0.0), True, "permits"),
    (
        "delta given above budget",
        policy(),
        {"delta": 2e-5},
        NOW,
        Usage(),
        False,
        "delta 2e-05 exceeds",
    ),
    ("delta committed", policy(), {"delta": 5e-6}, NOW, Usage(0.0, 6e-6), False, "delta"),
    (
        "no permission for the action",
        with_rules([{"action": "compute-statistics", "constraint": BUDGET}]),
        {},
        NOW,
        Usage(),
        False,
        "permits no 'train'",
    ),
    (
        "second permission permits",
        with_rules(
            [
                {"action": "train", "constraint": [c("purpose", "eq", "teaching"), *BUDGET]},
                {"action": "train", "constraint": [c("purpose", "eq", "research"), *BUDGET]},
            ]
        ),
        {},
        NOW,
        Usage(),
        True,
        "permission[1] permits",
    ),
    (
        "all permissions' reasons reported",
        with_rules(
            [
                {"action": "train", "constraint": [c("purpose", "eq", "teaching"), *BUDGET]},
                {"action": "train", "constraint": [c("modelTemplate", "eq", "cnn"), *BUDGET]},
            ]
        ),
        {},
        NOW,
        Usage(),
        False,
        "permission[1]: model template",
    ),
    (
        "prohibition on purpose denies",
        with_rules(None, [{"action": "train", "constraint": [c("purpose", "eq", "research")]}]),
        {},
        NOW,
        Usage(),
        False,
        "prohibition[0] forbids",
    ),
    (
        "prohibition not matching",
        with_rules(None, [{"action": "train", "constraint": [c("purpose", "eq", "military")]}]),
        {},
        NOW,
        Usage(),
        True,
        "permits",
    ),
    (
        "prohibition of other action",
        with_rules(None, [{"action": "compute-statistics", "constraint": []}]),
        {},
        NOW,
        Usage(),
        True,
        "permits",
    ),
    (
        "unconditional prohibition",
        with_rules(None, [{"action": "train", "constraint": []}]),
        {},
        NOW,
        Usage(),
        False,
        "(always)",
    ),
    (
        "prohibition on assignee",
        with_rules(None, [{"action": "train", "assignee": KEY_URN + ALICE, "constraint": []}]),
        {},
        NOW,
        Usage(),
        False,
        "forbids",
    ),
    (
        "prohibition needs all its constraints",
        with_rules(
            None,
            [
                {
                    "action": "train",
                    "constraint": [c("purpose", "eq", "research"), c("modelTemplate", "eq", "cnn")],
                }
            ],
        ),
        {},
        NOW,
        Usage(),
        True,
        "permits",
    ),
    (
        "prohibition from a date inside the period",
        with_rules(
            None,
            [
                {
                    "action": "train",
                    "constraint": [c("dateTime", "gteq", dt(NOW + timedelta(days=3)))],
                }
            ],
        ),
        {},
        NOW,
        Usage(),
        False,
        "forbids",
    ),
    (
        "prohibition from a date after the period",
        with_rules(
            None,
            [
                {
                    "action": "train",
                    "constraint": [c("dateTime", "gteq", dt(NOW + timedelta(days=8)))],
                }
            ],
        ),
        {},
        NOW,
        Usage(),
        True,
        "permits",
    ),
    (
        "prohibition until a past date",
        with_rules(
            None,
            [{"action": "train", "constraint": [c("dateTime", "lt", dt(NOW - timedelta(days=1)))]}],
        ),
        {},
        NOW,
        Usage(),
        True,
        "permits",
    ),
    (
        "statistics permitted without template",
        policy(),
        {"action": "compute-statistics", "template": None, "rounds": 1},
        NOW,
        Usage(),
        True,
        "permission[1] permits",
    ),
]


@pytest.mark.parametrize(
    ("name", "pol", "change", "now", "used", "allowed", "words"), TABLE, ids=[t[0] for t in TABLE]
)
def test_evaluation_table(
    name: str, pol: UsagePolicy, change: dict, now: datetime, used: Usage, allowed: bool, words: str
) -> None:
    d = evaluate(pol, ask(**change), now, used)
    assert d.allowed is allowed, d.reasons
    assert any(words in r for r in d.reasons), d.reasons
    assert (d.granted is not None) is allowed


def test_grant_carries_the_terms_and_a_proportional_delta() -> None:
    d = evaluate(policy(), REQ, NOW)
    g = d.granted
    assert g is not None
    t = g.terms
    assert (t.action, t.purpose, t.template, t.epsilon, t.rounds, t.until) == (
        "train",
        "research",
        "mlp",
        2.0,
        3,
        REQ.terms.until,
    )
    assert t.delta == 2.5e-06  # 1e-5 * 2/8
    explicit = evaluate(policy(), ask(delta=1e-6), NOW).granted
    assert explicit is not None and explicit.terms.delta == 1e-6


def test_check_budget_false_ignores_usage_only() -> None:
    full = Usage(8.0, 1e-5)
    assert not evaluate(policy(), REQ, NOW, full).allowed
    assert evaluate(policy(), REQ, NOW, full, check_budget=False).allowed
    # ... but still refuses what the policy forbids
    assert not evaluate(policy(), ask(purpose="ads"), NOW, full, check_budget=False).allowed


def test_many_small_reservations_fill_the_budget_exactly() -> None:
    # 0.1 added 80 times is not 8.0 in floating point; the tolerance must allow it
    used = Usage(sum([0.1] * 79), 0.0)
    assert evaluate(policy(), ask(epsilon=0.1, delta=0.0), NOW, used).allowed
    assert not evaluate(policy(), ask(epsilon=0.1, delta=0.0), NOW, Usage(8.0, 0)).allowed
