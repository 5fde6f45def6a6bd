"""ODRL profile: parsing, round trip, and typed errors naming the JSON path."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from dataspace.policy.odrl import (
    ACTIONS,
    KEY_URN,
    OPERATORS,
    PolicyError,
    UsagePolicy,
    build_policy,
    load_context,
    parse_usage_policy,
)

KEY = "ZTeNDSFnYyL3LKklOzYMbk0L45nxW220mBlQhf5rPgk="
OTHER = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
FP = "06fbab0669afa5befd39698bd2e83cd4e396d23d9e0c739212d093189024e0fd"


def doc() -> dict[str, Any]:
    return {
        "@context": [
            "http://www.w3.org/ns/odrl.jsonld",
            "https://w3id.org/dataspace/odrl/v1/context.jsonld",
        ],
        "@type": "Offer",
        "uid": "urn:dataspace:policy:ds-1:v1",
        "profile": "https://w3id.org/dataspace/odrl/v1",
        "assigner": KEY_URN + KEY,
        "target": {"uid": "urn:dataspace:dataset:ds-1", "fingerprint": FP},
        "permission": [
            {
                "action": "train",
                "assignee": KEY_URN + OTHER,
                "constraint": [
                    {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": ["research"]},
                    {
                        "leftOperand": "dateTime",
                        "operator": "lteq",
                        "rightOperand": {"@value": "2027-01-01T00:00:00Z", "@type": "xsd:dateTime"},
                    },
                    {"leftOperand": "epsilon", "operator": "lteq", "rightOperand": 8},
                    {"leftOperand": "delta", "operator": "lteq", "rightOperand": 1e-05},
                    {"leftOperand": "maxRounds", "operator": "lteq", "rightOperand": 10},
                    {
                        "leftOperand": "modelTemplate",
                        "operator": "isAnyOf",
                        "rightOperand": ["mlp"],
                    },
                ],
            },
            {
                "action": "compute-statistics",
                "constraint": [
                    {"leftOperand": "epsilon", "operator": "lteq", "rightOperand": 2},
                    {"leftOperand": "delta", "operator": "lteq", "rightOperand": 0},
                ],
            },
        ],
        "prohibition": [
            {
                "action": "train",
                "constraint": [
                    {"leftOperand": "purpose", "operator": "eq", "rightOperand": "military"}
                ],
            }
        ],
        "conflict": "prohibit",
        "approval": "manual",
    }


def test_parse_reads_every_part() -> None:
    p = parse_usage_policy(doc())
    assert p.dataset_id == "ds-1" and p.fingerprint == FP and p.assigner == KEY
    assert p.manual_approval and p.policy_type == "Offer"
    assert [r.action for r in p.permissions] == ["train", "compute-statistics"]
    train = p.permissions[0]
    assert train.value("purpose") == ("research",)
    assert train.assignee == OTHER and p.permissions[1].assignee is None
    assert train.value("dateTime") == datetime(2027, 1, 1, tzinfo=UTC)
    assert train.value("maxRounds") == 10 and train.value("modelTemplate") == ("mlp",)
    assert p.budget_epsilon == 8.0 and p.budget_delta == 1e-5
    assert p.prohibitions[0].value("purpose") == "military"


def test_round_trip_document_and_object() -> None:
    d = doc()
    p = parse_usage_policy(d)
    assert p.to_jsonld() == json.loads(json.dumps(d))  # same document back
    assert parse_usage_policy(p.to_jsonld()) == p
    assert parse_usage_policy(json.dumps(p.to_jsonld())) == p  # from text too
    assert len(p.sha256()) == 64


def test_build_policy_round_trips_and_is_frozen() -> None:
    p = build_policy(
        dataset_id="ds-1",
        fingerprint=FP,
        assigner=KEY,
        epsilon=4.0,
        delta=1e-6,
        purposes=["research"],
        consumers=[OTHER],
        until=datetime(2027, 1, 1, tzinfo=UTC),
        max_rounds=5,
        templates=["mlp", "mlp-large"],
        actions=["train", "compute-statistics"],
    )
    assert isinstance(p, UsagePolicy)
    assert parse_usage_policy(p.to_jsonld()) == p
    assert p.permissions[1].value("maxRounds") is None  # rounds and templates are for train
    with pytest.raises(AttributeError):
        p.uid = "x"  # type: ignore[misc]


def _set(d: dict, path: list, value: Any) -> dict:
    d = copy.deepcopy(d)
    obj = d
    for k in path[:-1]:
        obj = obj[k]
    if value is _DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return d


_DELETE = object()
C = ["permission", 0, "constraint"]

BAD = [
    # (where to change, new value, path in the message, words in the message)
    (
        [*C, 0, "leftOperand"],
        "spatial",
        "$.permission[0].constraint[0].leftOperand",
        "unknown left operand",
    ),
    (
        [*C, 0, "operator"],
        "gt",
        "$.permission[0].constraint[0].operator",
        "not defined for 'purpose'",
    ),
    ([*C, 2, "operator"], "gteq", "$.permission[0].constraint[2].operator", "'epsilon'"),
    (["permission", 0, "action"], "use", "$.permission[0].action", "unknown action 'use'"),
    (
        ["permission", 0, "action"],
        {"rdf:value": {"@id": "train"}},
        "$.permission[0].action",
        "refined",
    ),
    (["permission", 0, "duty"], [], "$.permission[0]", "duties"),
    ([*C, 0, "and"], [], "$.permission[0].constraint[0]", "logical constraints"),
    (
        ["prohibition", 0, "constraint", 0],
        {"leftOperand": "epsilon", "operator": "lteq", "rightOperand": 1},
        "$.prohibition[0].constraint[0].leftOperand",
        "cannot constrain a prohibition",
    ),
    (
        [*C, 2],
        _DELETE,
        "$.permission[0].constraint",
        "missing a 'epsilon'",
    ),  # index 2 removed: epsilon
    (
        ["permission", 0, "assignee"],
        "urn:dataspace:key:bm90IGEga2V5",
        "$.permission[0].assignee",
        "bytes",
    ),
    (["permission", 0, "assignee"], OTHER, "$.permission[0].assignee", KEY_URN),
    (
        ["permission", 0, "assignee"],
        [KEY_URN + OTHER, KEY_URN + KEY],
        "$.permission[0].assignee",
        "at most one assignee",
    ),
    # ODRL 2.2 has no left operand "assignee": new documents may not write it so
    (
        [*C, 5],
        {"leftOperand": "assignee", "operator": "isAnyOf", "rightOperand": [KEY_URN + OTHER]},
        "$.permission[0].constraint[5].leftOperand",
        "not a left operand in ODRL 2.2",
    ),
    (
        [*C, 1, "rightOperand"],
        "2027-01-01T00:00:00",
        "$.permission[0].constraint[1].rightOperand",
        "no time zone",
    ),
    (
        [*C, 1, "rightOperand"],
        "next year",
        "$.permission[0].constraint[1].rightOperand",
        "ISO 8601",
    ),
    (
        [*C, 2, "rightOperand"],
        -1,
        "$.permission[0].constraint[2].rightOperand",
        "epsilon must be > 0",
    ),
    ([*C, 2, "rightOperand"], "8", "$.permission[0].constraint[2].rightOperand", "number"),
    (
        [*C, 3, "rightOperand"],
        1.5,
        "$.permission[0].constraint[3].rightOperand",
        "delta must be in",
    ),
    ([*C, 4, "rightOperand"], 2.5, "$.permission[0].constraint[4].rightOperand", "whole number"),
    ([*C, 0, "rightOperand"], [], "$.permission[0].constraint[0].rightOperand", "non-empty list"),
    (
        [*C, 5],
        {"leftOperand": "purpose", "operator": "eq", "rightOperand": "x"},
        "$.permission[0].constraint[5].leftOperand",
        "constrained twice",
    ),
    (["target", "fingerprint"], "abc", "$.target.fingerprint", "64 lowercase hex"),
    (["target", "uid"], "urn:other:ds-1", "$.target.uid", "urn:dataspace:dataset:"),
    (["assigner"], _DELETE, "$.assigner", "Offer must name its assigner"),
    (["profile"], "http://example.com/other", "$.profile", "expected"),
    (["@context"], ["http://www.w3.org/ns/odrl.jsonld"], "$['@context']", "profile context"),
    (
        ["@context"],
        ["http://www.w3.org/ns/odrl.jsonld", "http://evil.example/ctx"],
        "$['@context'][1]",
        "unknown context",
    ),
    (["@type"], "Agreement", "$['@type']", "Offer, Set"),
    (["conflict"], "perm", "$.conflict", "only 'prohibit'"),
    (["approval"], "sometimes", "$.approval", "automatic"),
    (["permission"], [], "$.permission", "at least one permission"),
    (["permission"], {"action": "train"}, "$.permission", "list of rules"),
    (["inheritFrom"], "urn:x", "$", "unknown property 'inheritFrom'"),
    (["uid"], 7, "$.uid", "non-empty string"),
]


@pytest.mark.parametrize(
    ("path", "value", "where", "words"), BAD, ids=[b[2] + ":" + b[3] for b in BAD]
)
def test_malformed_policy_names_the_json_path(
    path: list, value: Any, where: str, words: str
) -> None:
    with pytest.raises(PolicyError) as e:
        parse_usage_policy(_set(doc(), path, value))
    msg = str(e.value)
    assert msg.startswith(where + ":") or msg.startswith(where + " "), msg
    assert words in msg


def test_not_json_reports_line_and_column() -> None:
    with pytest.raises(PolicyError, match=r"\$: not JSON \(line 2, column"):
        parse_usage_policy('{"@type": "Offer",\n  oops}')
    with pytest.raises(PolicyError, match="a policy is a JSON object"):
        parse_usage_policy("[1, 2]")


def test_context_file_defines_every_profile_term() -> None:
    ctx = load_context()["@context"]
    # the profile's own terms are in our context; purpose and dateTime are ODRL's
    for term in [
        *ACTIONS,
        "epsilon",
        "delta",
        "maxRounds",
        "modelTemplate",
        "fingerprint",
        "approval",
    ]:
        assert term in ctx, term
    assert set(OPERATORS) - set(ctx) == {"purpose", "dateTime"}
    # the inline context is accepted in place of its URL
    d = doc()
    d["@context"] = ["http://www.w3.org/ns/odrl.jsonld", ctx]
    assert parse_usage_policy(d) == parse_usage_policy(doc())


def test_example_in_docs_parses() -> None:
    from tests.conftest import REPO

    text = (REPO / "docs" / "odrl-profile.md").read_text()
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    p = parse_usage_policy(block)
    assert p.permissions and p.budget_epsilon > 0


def test_each_consumer_is_a_rule_level_assignee_and_decides_alone() -> None:
    """ODRL 2.2: one assignee per rule; --consumer A,B makes one permission per consumer."""
    from datetime import timedelta

    from dataspace.policy.evaluate import Request, evaluate
    from dataspace.policy.terms import ContractTerms

    third = "A" * 43 + "="
    now = datetime(2026, 6, 1, tzinfo=UTC)
    p = build_policy(
        dataset_id="ds-1",
        fingerprint=FP,
        assigner=KEY,
        epsilon=4.0,
        delta=1e-6,
        purposes=["research"],
        consumers=[OTHER, KEY],
        actions=["train", "compute-statistics"],
    )
    doc = p.to_jsonld()
    assert [(r["action"], r["assignee"]) for r in doc["permission"]] == [
        ("train", KEY_URN + OTHER),
        ("train", KEY_URN + KEY),
        ("compute-statistics", KEY_URN + OTHER),
        ("compute-statistics", KEY_URN + KEY),
    ]
    assert all(c["leftOperand"] != "assignee" for r in doc["permission"] for c in r["constraint"])

    def ask(who: str, action: str = "train", purpose: str = "research"):
        until = now + timedelta(days=1)
        t = ContractTerms(purpose=purpose, epsilon=1.0, rounds=2, until=until, action=action)
        return evaluate(p, Request("ds-1", who, t), now)

    assert ask(OTHER).allowed and ask(KEY, "compute-statistics").allowed
    refused = ask(third)
    assert not refused.allowed
    assert refused.reasons == (f"consumer {third} is not an assignee of this policy",)
    # the consumer's own permission's reasons, not the other consumers'
    assert ask(OTHER, purpose="ads").reasons == (
        "permission[0]: purpose 'ads' is not permitted (allowed: research)",
    )
    # a prohibition with an assignee forbids that consumer only
    d = p.to_jsonld()
    d["prohibition"] = [{"action": "train", "assignee": KEY_URN + KEY, "constraint": []}]
    q = parse_usage_policy(d)
    t = ContractTerms(purpose="research", epsilon=1.0, rounds=2, until=now + timedelta(days=1))
    assert not evaluate(q, Request("ds-1", KEY, t), now).allowed
    assert "assignee " + KEY in evaluate(q, Request("ds-1", KEY, t), now).reason
    assert evaluate(q, Request("ds-1", OTHER, t), now).allowed
