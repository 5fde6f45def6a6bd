"""ODRL 2.2 usage policies in JSON-LD, restricted to the dataspace profile.

A dataset's usage policy is one ODRL ``Offer`` (or ``Set``) whose target is the
dataset (id and fingerprint) and whose assigner is the holder's key. The
profile (docs/odrl-profile.md; ontology ``profile.ttl``, context ``context.jsonld``,
both served by the connector) allows exactly:

* actions ``train`` and ``compute-statistics`` (both ``odrl:includedIn odrl:use``);
* constraint left operands ``purpose``, ``dateTime`` (ODRL's), ``epsilon``,
  ``delta``, ``maxRounds``, ``modelTemplate``, ``aggregation`` (``eq secure``:
  every round under SecAgg+), each with a fixed set of operators (:data:`OPERATORS`);
* at most one ``assignee`` per rule (ODRL 2.2 IM, "Party" and "Rule": the party a rule is
  for; a key URN): the consumer restriction. A policy for several consumers has
  one permission per consumer;
* permissions and prohibitions; no duties, no logical constraints, no
  refinements, no policy inheritance.

``assignee`` is not a left operand in ODRL 2.2 (it is a property of a rule), but
versions of this project before the profile was published wrote it as one
(``{"leftOperand": "assignee", "operator": "isAnyOf", "rightOperand": [keys]}``).
:func:`parse_usage_policy` refuses that form in new documents
(:class:`LegacyAssigneeError`); a policy a site stored earlier is read as the
equivalent rule-level assignees (:func:`upgrade_legacy_assignee`: by
``store.current_policy_row``, or ``parse_usage_policy(doc, stored=True)``). Nothing
here writes it.

Anything else is a :class:`PolicyError` naming the JSON path at fault: ODRL
processors are told to reject what they do not understand (ODRL 2.2 IM §2.1,
"profile"), and a policy that silently drops a constraint grants more than
the holder meant.

Parsing yields a frozen :class:`UsagePolicy`; :meth:`UsagePolicy.to_jsonld`
writes the same document back (``parse_usage_policy(p.to_jsonld()) == p``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import rfc8785

from dataspace.errors import DataspaceError

#: the ODRL 2.2 JSON-LD context every ODRL policy names first
ODRL_CONTEXT = "http://www.w3.org/ns/odrl.jsonld"
#: where the profile's own context lives (bundled as ``policy/context.jsonld``)
PROFILE_CONTEXT = "https://w3id.org/dataspace/odrl/v1/context.jsonld"
#: the profile IRI a policy declares in ``profile``
PROFILE = "https://w3id.org/dataspace/odrl/v1"

KEY_URN = "urn:dataspace:key:"
DATASET_URN = "urn:dataspace:dataset:"

ACTIONS = ("train", "compute-statistics")
POLICY_TYPES = ("Offer", "Set")

#: the profile's ontology (bundled as ``policy/profile.ttl``; served at ``/odrl/v1``)
PROFILE_TTL = "profile.ttl"
#: where the terms of the profile live (``ds:`` in ``profile.ttl`` and the context)
NAMESPACE = "https://w3id.org/dataspace/odrl#"

#: left operand -> operators the profile defines for it (``purpose`` and ``dateTime`` are
#: ODRL's; the others the profile's, declared in ``profile.ttl`` with the same operators)
OPERATORS: dict[str, tuple[str, ...]] = {
    "purpose": ("isAnyOf", "eq"),
    "dateTime": ("lt", "lteq", "gt", "gteq"),
    "epsilon": ("lteq",),
    "delta": ("lteq",),
    "maxRounds": ("lteq",),
    "modelTemplate": ("isAnyOf", "eq"),
    # how the sites' updates are combined: "secure" (SecAgg+) is required for every round
    "aggregation": ("eq",),
}
#: the values of ``aggregation`` (``plain``: what a round without SecAgg+ is)
AGGREGATIONS = ("secure",)
#: a prohibition describes *who/what/when* is forbidden; budgets make no sense there
PROHIBITION_OPERANDS = ("purpose", "dateTime", "modelTemplate")
#: a permission must say what privacy it may cost (the profile's one requirement)
REQUIRED_IN_PERMISSION = ("epsilon", "delta")

_TOP_KEYS = {
    "@context",
    "@type",
    "type",
    "uid",
    "profile",
    "assigner",
    "target",
    "permission",
    "prohibition",
    "conflict",
    "approval",
}
_RULE_KEYS = {"action", "assignee", "constraint"}
#: what pre-profile versions wrote as a left operand (read back from stored policies only)
LEGACY_ASSIGNEE = "assignee"
_CONSTRAINT_KEYS = {"leftOperand", "operator", "rightOperand"}


class PolicyError(DataspaceError):
    """A policy document that is malformed or outside the profile (names the JSON path)."""


class LegacyAssigneeError(PolicyError):
    """A new document that writes ``assignee`` as a left operand (ODRL 2.2 has it as a
    rule property); only stored policies of earlier versions are read in that form."""


RightOperand = tuple[str, ...] | str | float | int | datetime


@dataclass(frozen=True)
class Constraint:
    """One ``leftOperand operator rightOperand`` triple.

    ``right`` is a tuple of strings for ``isAnyOf``, a string for ``eq``, a
    timezone-aware datetime for ``dateTime``, a number otherwise.
    """

    left: str
    operator: str
    right: RightOperand


@dataclass(frozen=True)
class Rule:
    """A permission or a prohibition: one action and the constraints that all must hold.

    ``assignee``: the one party the rule is for (ODRL 2.2 IM, "Party"), a base64 public key
    (the identity id, written as a key URN); None: anyone.
    """

    action: str
    constraints: tuple[Constraint, ...] = ()
    assignee: str | None = None

    def get(self, left: str) -> tuple[Constraint, ...]:
        return tuple(c for c in self.constraints if c.left == left)

    def value(self, left: str) -> RightOperand | None:
        found = self.get(left)
        return found[0].right if found else None


@dataclass(frozen=True)
class UsagePolicy:
    """A parsed usage policy of one dataset (see module docstring)."""

    uid: str
    dataset_id: str
    fingerprint: str
    permissions: tuple[Rule, ...]
    prohibitions: tuple[Rule, ...] = ()
    assigner: str | None = None
    policy_type: str = "Offer"
    manual_approval: bool = False

    @property
    def budget_epsilon(self) -> float:
        """The dataset's whole-life epsilon: the largest any permission allows."""
        return max(float(r.value("epsilon")) for r in self.permissions)  # type: ignore[arg-type]

    @property
    def budget_delta(self) -> float:
        """The dataset's whole-life delta: the largest any permission allows."""
        return max(float(r.value("delta")) for r in self.permissions)  # type: ignore[arg-type]

    def to_jsonld(self) -> dict[str, Any]:
        """The policy as ODRL JSON-LD (compact form, our profile's context)."""
        doc: dict[str, Any] = {
            "@context": [ODRL_CONTEXT, PROFILE_CONTEXT],
            "@type": self.policy_type,
            "uid": self.uid,
            "profile": PROFILE,
        }
        if self.assigner is not None:
            doc["assigner"] = KEY_URN + self.assigner
        doc["target"] = {"uid": DATASET_URN + self.dataset_id, "fingerprint": self.fingerprint}
        doc["permission"] = [_rule_to_jsonld(r) for r in self.permissions]
        if self.prohibitions:
            doc["prohibition"] = [_rule_to_jsonld(r) for r in self.prohibitions]
        doc["conflict"] = "prohibit"
        doc["approval"] = "manual" if self.manual_approval else "automatic"
        return doc

    def canonical_bytes(self) -> bytes:
        """RFC 8785 canonical JSON of :meth:`to_jsonld`: what is hashed and published."""
        return rfc8785.dumps(self.to_jsonld())

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


# --- building ------------------------------------------------------------------


def build_policy(
    *,
    dataset_id: str,
    fingerprint: str,
    assigner: str | None,
    epsilon: float,
    delta: float,
    purposes: tuple[str, ...] | list[str] = (),
    consumers: tuple[str, ...] | list[str] = (),
    until: datetime | None = None,
    max_rounds: int | None = None,
    templates: tuple[str, ...] | list[str] = (),
    actions: tuple[str, ...] | list[str] = ("train",),
    manual_approval: bool = False,
    uid: str | None = None,
    secure_aggregation: bool = False,
) -> UsagePolicy:
    """The policy the CLI flags describe: one permission per action, same constraints.

    Empty ``purposes``/``consumers``/``templates`` and ``None`` mean "no
    constraint". ``until`` becomes ``dateTime lteq until``; ``secure_aggregation``
    adds ``aggregation eq secure`` (the sites refuse a round without SecAgg+). Each
    consumer gets its own permissions, with the consumer's key as their ``assignee``
    (ODRL has one assignee per rule), in the order action, then consumer. Built through
    :func:`parse_usage_policy` so flags and files obey exactly the same checks.
    """
    if not actions:
        raise PolicyError("a policy needs at least one permitted action")
    rules = []
    assignees: list[str | None] = [KEY_URN + k for k in consumers] if consumers else [None]
    for action in actions:
        cs: list[dict[str, Any]] = []
        if purposes:
            cs.append(_c("purpose", "isAnyOf", list(purposes)))
        if until is not None:
            cs.append(_c("dateTime", "lteq", _dt_value(until)))
        cs.append(_c("epsilon", "lteq", epsilon))
        cs.append(_c("delta", "lteq", delta))
        if max_rounds is not None and action == "train":
            cs.append(_c("maxRounds", "lteq", max_rounds))
        if templates and action == "train":
            cs.append(_c("modelTemplate", "isAnyOf", list(templates)))
        if secure_aggregation and action == "train":
            cs.append(_c("aggregation", "eq", "secure"))
        for who in assignees:
            rule: dict[str, Any] = {"action": action, "constraint": list(cs)}
            if who is not None:
                rule["assignee"] = who
            rules.append(rule)
    doc: dict[str, Any] = {
        "@context": [ODRL_CONTEXT, PROFILE_CONTEXT],
        "@type": "Offer" if assigner else "Set",
        "uid": uid or f"urn:dataspace:policy:{dataset_id}:{_now_tag()}",
        "profile": PROFILE,
        "target": {"uid": DATASET_URN + dataset_id, "fingerprint": fingerprint},
        "permission": rules,
        "approval": "manual" if manual_approval else "automatic",
    }
    if assigner:
        doc["assigner"] = KEY_URN + assigner
    return parse_usage_policy(doc)


def _c(left: str, op: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": op, "rightOperand": right}


def _now_tag() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


# --- parsing -------------------------------------------------------------------


def context_bytes() -> bytes:
    """The profile's JSON-LD context document, byte for byte as bundled and served."""
    return resources.files("dataspace.policy").joinpath("context.jsonld").read_bytes()


def load_context() -> dict[str, Any]:
    """The profile's JSON-LD context (the bundled copy of :data:`PROFILE_CONTEXT`)."""
    return json.loads(context_bytes())


def profile_turtle() -> bytes:
    """The profile's ontology in Turtle (``profile.ttl``), byte for byte as served."""
    return resources.files("dataspace.policy").joinpath(PROFILE_TTL).read_bytes()


def parse_usage_policy(doc: dict[str, Any] | str | bytes, *, stored: bool = False) -> UsagePolicy:
    """Parse and check an ODRL JSON-LD usage policy (a dict or its JSON text).

    Raises :class:`PolicyError` naming the JSON path (``$.permission[0]...``)
    of the first thing that is malformed or outside the profile; a ``leftOperand``
    ``assignee`` raises :class:`LegacyAssigneeError`, unless ``stored``: a policy this
    site stored before the profile was published, read as the rule-level assignees it
    means (:func:`upgrade_legacy_assignee`).
    """
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as e:
            raise PolicyError(f"$: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
        except UnicodeDecodeError as e:
            raise PolicyError(f"$: not UTF-8 text: {e}") from e
    if not isinstance(doc, dict):
        raise PolicyError(f"$: a policy is a JSON object, got {_kind(doc)}")
    if stored:
        doc = upgrade_legacy_assignee(doc)
    _unknown_keys(doc, _TOP_KEYS, "$")
    _check_context(doc.get("@context"), "$['@context']")
    if "@type" in doc and "type" in doc:
        raise PolicyError("$: give '@type' or 'type', not both")
    ptype = doc.get("@type", doc.get("type"))
    if ptype not in POLICY_TYPES:
        raise PolicyError(f"$['@type']: expected one of {', '.join(POLICY_TYPES)}, got {ptype!r}")
    uid = _string(doc.get("uid"), "$.uid")
    profile = doc.get("profile")
    if profile != PROFILE:
        raise PolicyError(f"$.profile: expected {PROFILE!r}, got {profile!r}")
    conflict = doc.get("conflict", "prohibit")
    if conflict != "prohibit":
        raise PolicyError(
            f"$.conflict: this profile evaluates prohibitions first; only 'prohibit' is "
            f"allowed, got {conflict!r}"
        )
    approval = doc.get("approval", "automatic")
    if approval not in ("automatic", "manual"):
        raise PolicyError(f"$.approval: expected 'automatic' or 'manual', got {approval!r}")
    assigner = None
    if "assigner" in doc:
        assigner = _key_urn(doc["assigner"], "$.assigner")
    elif ptype == "Offer":
        raise PolicyError("$.assigner: an Offer must name its assigner (the holder's key)")
    dataset_id, fingerprint = _target(doc.get("target"), "$.target")
    permissions = _rules(doc.get("permission"), "$.permission", prohibition=False)
    if not permissions:
        raise PolicyError("$.permission: a usage policy needs at least one permission")
    prohibitions = ()
    if "prohibition" in doc:
        prohibitions = _rules(doc["prohibition"], "$.prohibition", prohibition=True)
    return UsagePolicy(
        uid=uid,
        dataset_id=dataset_id,
        fingerprint=fingerprint,
        permissions=permissions,
        prohibitions=prohibitions,
        assigner=assigner,
        policy_type=ptype,
        manual_approval=approval == "manual",
    )


def _kind(v: Any) -> str:
    return type(v).__name__ if v is not None else "null"


def _unknown_keys(obj: dict[str, Any], allowed: set[str], path: str) -> None:
    for k in obj:
        if k not in allowed:
            hint = ""
            if k in ("duty", "obligation", "consequence", "remedy"):
                hint = " (duties are not part of this profile)"
            elif k in ("and", "or", "xone", "andSequence"):
                hint = " (logical constraints are not part of this profile)"
            elif k in ("refinement", "inheritFrom", "assignee", "target", "assigner"):
                hint = " (not supported at this place by this profile)"
            raise PolicyError(f"{path}: unknown property {k!r}{hint}")


def _check_context(ctx: Any, path: str) -> None:
    """Accept the ODRL context plus ours, by URL or with ours inline."""
    if ctx is None:
        raise PolicyError(f"{path}: missing; expected [{ODRL_CONTEXT!r}, {PROFILE_CONTEXT!r}]")
    items = ctx if isinstance(ctx, list) else [ctx]
    ours = load_context()["@context"]
    has_odrl = has_profile = False
    for i, item in enumerate(items):
        if item == ODRL_CONTEXT:
            has_odrl = True
        elif item in (PROFILE_CONTEXT, ours):
            has_profile = True
        else:
            raise PolicyError(
                f"{path}[{i}]: unknown context {item!r}; this profile reads only "
                f"{ODRL_CONTEXT!r} and {PROFILE_CONTEXT!r}"
            )
    if not has_odrl:
        raise PolicyError(f"{path}: must include the ODRL context {ODRL_CONTEXT!r}")
    if not has_profile:
        raise PolicyError(f"{path}: must include the profile context {PROFILE_CONTEXT!r}")


def _string(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise PolicyError(f"{path}: expected a non-empty string, got {v!r}")
    return v


def _key_urn(v: Any, path: str) -> str:
    """``urn:dataspace:key:<base64 Ed25519 public key>`` -> the base64 key."""
    if isinstance(v, dict) and set(v) <= {"uid", "@id"} and len(v) == 1:
        v = next(iter(v.values()))
    s = _string(v, path)
    if not s.startswith(KEY_URN):
        raise PolicyError(f"{path}: expected a party {KEY_URN}<base64 public key>, got {s!r}")
    b64 = s[len(KEY_URN) :]
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError as e:
        raise PolicyError(f"{path}: {b64!r} is not base64: {e}") from e
    if len(raw) != 32:
        raise PolicyError(f"{path}: key has {len(raw)} bytes; an Ed25519 key has 32")
    return b64


def _target(v: Any, path: str) -> tuple[str, str]:
    if not isinstance(v, dict):
        raise PolicyError(
            f"{path}: expected {{'uid': '{DATASET_URN}<id>', 'fingerprint': <hex>}}, got {v!r}"
        )
    _unknown_keys(v, {"uid", "@id", "fingerprint", "@type"}, path)
    if "uid" in v and "@id" in v:
        raise PolicyError(f"{path}: give 'uid' or '@id', not both")
    uid = _string(v.get("uid", v.get("@id")), f"{path}.uid")
    if not uid.startswith(DATASET_URN) or len(uid) == len(DATASET_URN):
        raise PolicyError(f"{path}.uid: expected {DATASET_URN}<dataset id>, got {uid!r}")
    if v.get("@type", "Asset") != "Asset":
        raise PolicyError(f"{path}['@type']: a target is an 'Asset', got {v['@type']!r}")
    fp = _string(v.get("fingerprint"), f"{path}.fingerprint")
    if len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp):
        raise PolicyError(f"{path}.fingerprint: expected 64 lowercase hex digits, got {fp!r}")
    return uid[len(DATASET_URN) :], fp


def _rules(v: Any, path: str, prohibition: bool) -> tuple[Rule, ...]:
    if not isinstance(v, list):
        raise PolicyError(f"{path}: expected a list of rules, got {_kind(v)}")
    return tuple(_rule(r, f"{path}[{i}]", prohibition) for i, r in enumerate(v))


def _rule(v: Any, path: str, prohibition: bool) -> Rule:
    if not isinstance(v, dict):
        raise PolicyError(f"{path}: expected a rule object, got {_kind(v)}")
    _unknown_keys(v, _RULE_KEYS, path)
    assignee = None
    if "assignee" in v:  # one party (the W3C shapes: odrl:RuleShape, sh:maxCount 1)
        if isinstance(v["assignee"], list):
            raise PolicyError(
                f"{path}.assignee: a rule has at most one assignee in ODRL 2.2; "
                f"give each consumer its own rule"
            )
        assignee = _key_urn(v["assignee"], f"{path}.assignee")
    action = v.get("action")
    if not isinstance(action, str):
        raise PolicyError(
            f"{path}.action: expected one of {', '.join(ACTIONS)} (a string; "
            f"refined actions are not part of this profile), got {action!r}"
        )
    if action not in ACTIONS:
        raise PolicyError(
            f"{path}.action: unknown action {action!r} (this profile knows {', '.join(ACTIONS)})"
        )
    raw = v.get("constraint", [])
    if not isinstance(raw, list):
        raise PolicyError(f"{path}.constraint: expected a list, got {_kind(raw)}")
    cs = tuple(_constraint(c, f"{path}.constraint[{i}]") for i, c in enumerate(raw))
    seen: set[str] = set()
    for i, c in enumerate(cs):
        where = f"{path}.constraint[{i}]"
        if prohibition and c.left not in PROHIBITION_OPERANDS:
            raise PolicyError(
                f"{where}.leftOperand: {c.left!r} cannot constrain a prohibition "
                f"(allowed: {', '.join(PROHIBITION_OPERANDS)})"
            )
        if c.left in seen and c.left != "dateTime":
            raise PolicyError(f"{where}.leftOperand: {c.left!r} is constrained twice in one rule")
        seen.add(c.left)
    if not prohibition:
        for req in REQUIRED_IN_PERMISSION:
            if req not in seen:
                raise PolicyError(
                    f"{path}.constraint: a permission must bound the privacy cost: "
                    f"missing a {req!r} constraint"
                )
    return Rule(action=action, constraints=cs, assignee=assignee)


def _constraint(v: Any, path: str) -> Constraint:
    if not isinstance(v, dict):
        raise PolicyError(f"{path}: expected a constraint object, got {_kind(v)}")
    _unknown_keys(v, _CONSTRAINT_KEYS, path)
    left = v.get("leftOperand")
    if left == LEGACY_ASSIGNEE:
        raise LegacyAssigneeError(
            f"{path}.leftOperand: 'assignee' is not a left operand in ODRL 2.2; name the "
            f"consumer as the rule's 'assignee' (one key URN per rule, one rule per consumer)"
        )
    if not isinstance(left, str) or left not in OPERATORS:
        raise PolicyError(
            f"{path}.leftOperand: unknown left operand {left!r} "
            f"(this profile knows {', '.join(OPERATORS)})"
        )
    op = v.get("operator")
    if not isinstance(op, str) or op not in OPERATORS[left]:
        raise PolicyError(
            f"{path}.operator: operator {op!r} is not defined for {left!r} "
            f"(allowed: {', '.join(OPERATORS[left])})"
        )
    if "rightOperand" not in v:
        raise PolicyError(f"{path}.rightOperand: missing")
    right = _right(left, op, v["rightOperand"], f"{path}.rightOperand")
    return Constraint(left=left, operator=op, right=right)


def _right(left: str, op: str, v: Any, path: str) -> RightOperand:
    if left in ("purpose", "modelTemplate"):
        if op == "eq":
            return _string(v, path)
        if not isinstance(v, list) or not v:
            raise PolicyError(f"{path}: 'isAnyOf' needs a non-empty list, got {v!r}")
        return tuple(_string(x, f"{path}[{i}]") for i, x in enumerate(v))
    if left == "dateTime":
        return _datetime(v, path)
    if left == "aggregation":
        if v not in AGGREGATIONS:
            raise PolicyError(f"{path}: aggregation must be one of {', '.join(AGGREGATIONS)}")
        return str(v)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise PolicyError(f"{path}: expected a number, got {v!r}")
    if left == "maxRounds":
        if not isinstance(v, int) or v < 1:
            raise PolicyError(f"{path}: maxRounds must be a whole number >= 1, got {v!r}")
        return v
    if left == "epsilon" and not v > 0:
        raise PolicyError(f"{path}: epsilon must be > 0, got {v!r}")
    if left == "delta" and not 0 <= v < 1:
        raise PolicyError(f"{path}: delta must be in [0, 1), got {v!r}")
    if v != v or v in (float("inf"), float("-inf")):
        raise PolicyError(f"{path}: expected a finite number, got {v!r}")
    return float(v)


def _datetime(v: Any, path: str) -> datetime:
    if isinstance(v, dict):
        _unknown_keys(v, {"@value", "@type"}, path)
        if v.get("@type", "xsd:dateTime") != "xsd:dateTime":
            raise PolicyError(f"{path}['@type']: expected 'xsd:dateTime', got {v['@type']!r}")
        v = v.get("@value")
    s = _string(v, path)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError as e:
        raise PolicyError(f"{path}: {s!r} is not an ISO 8601 date-time") from e
    if dt.tzinfo is None:
        raise PolicyError(f"{path}: {s!r} has no time zone (write e.g. 2027-01-01T00:00:00Z)")
    return dt


# --- writing -------------------------------------------------------------------


def format_datetime(dt: datetime) -> str:
    """UTC, seconds (or microseconds) precision, with a ``Z``: how every time is written."""
    s = dt.astimezone(UTC).isoformat()
    return s.replace("+00:00", "Z")


def _dt_value(dt: datetime) -> dict[str, str]:
    return {"@value": format_datetime(dt), "@type": "xsd:dateTime"}


def _rule_to_jsonld(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"action": rule.action}
    if rule.assignee is not None:
        out["assignee"] = KEY_URN + rule.assignee
    out["constraint"] = [_constraint_to_jsonld(c) for c in rule.constraints]
    return out


def _constraint_to_jsonld(c: Constraint) -> dict[str, Any]:
    right: Any = c.right
    if isinstance(right, tuple):
        right = list(right)
    elif isinstance(right, datetime):
        right = _dt_value(right)
    return _c(c.left, c.operator, right)


# --- documents of earlier versions ------------------------------------------------


def upgrade_legacy_assignee(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with each ``assignee`` left operand turned into rule-level assignees.

    Versions before the profile was published wrote the consumer restriction as a
    constraint, ``{"leftOperand": "assignee", "operator": "isAnyOf" | "eq",
    "rightOperand": key URN(s)}``; ODRL 2.2 has ``assignee`` as a property of a rule,
    with one value (the W3C shapes: odrl:RuleShape). A rule with that constraint becomes
    one rule per key, each with the other constraints: for a permission, "some
    permission permits" then holds for exactly the requests it held for before; for a
    prohibition, "some prohibition applies" likewise. A document without the form is
    returned unchanged (the same object); anything malformed is left for the parser.
    """
    changed = False
    out = dict(doc)
    for kind in ("permission", "prohibition"):
        rules = doc.get(kind)
        if not isinstance(rules, list):
            continue
        new_rules: list[Any] = []
        for rule in rules:
            split = _split_legacy_rule(rule)
            changed = changed or split is not None
            new_rules.extend([rule] if split is None else split)
        out[kind] = new_rules
    return out if changed else doc


def upgrade_stored_text(text: str) -> str:
    """A stored policy document (JSON text) with :func:`upgrade_legacy_assignee` applied;
    the same text when there is nothing to translate or it is not a JSON object."""
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if not isinstance(doc, dict):
        return text
    new = upgrade_legacy_assignee(doc)
    return text if new is doc else json.dumps(new)


def _split_legacy_rule(rule: Any) -> list[dict[str, Any]] | None:
    """The rules a rule with one ``assignee`` constraint means (None: not that form)."""
    if not isinstance(rule, dict) or "assignee" in rule:
        return None
    cs = rule.get("constraint")
    if not isinstance(cs, list):
        return None
    legacy = [c for c in cs if isinstance(c, dict) and c.get("leftOperand") == LEGACY_ASSIGNEE]
    if len(legacy) != 1 or set(legacy[0]) != _CONSTRAINT_KEYS:
        return None  # none, or not what an earlier version wrote: the parser says why
    c = legacy[0]
    keys = c["rightOperand"]
    if c["operator"] == "eq" and isinstance(keys, str):
        keys = [keys]
    elif c["operator"] != "isAnyOf" or not isinstance(keys, list) or not keys:
        return None
    rest = [x for x in cs if x is not c]
    return [{**rule, "assignee": k, "constraint": list(rest)} for k in keys]
