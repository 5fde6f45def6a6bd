"""ODRL in DSP: a dataset's usage policy as a DSP ``Offer``, a consumer's request as contract
terms, signed terms as a DSP ``Agreement``.

* :func:`dataset_offer`: the policy in force (:meth:`UsagePolicy.to_jsonld`, the ODRL
  profile of ``dataspace.policy.odrl``) as DSP wants it in a Dataset's ``hasPolicy``
  (DSP 2025-1 "ACK - Dataset": an Offer with an ``@id`` and **no** ``target``, the target
  being the enclosing Dataset; the schema's ``RightOperand`` is a string, an object or an
  array, so numbers are written as typed literals ``{"@value", "@type"}``).
* :func:`requested_terms`: what a consumer asks in a ContractRequestMessage: the offer
  ``@id`` and ``target`` of the catalog, and one permission whose constraints state the
  terms it wants, each within the published ones (``purpose eq``, ``epsilon lteq``,
  ``delta lteq``, ``maxRounds lteq``, ``modelTemplate eq``, ``dateTime lteq``). The
  policy itself (``dataspace.policy``) then decides, exactly as for ``POST /v1/offers``.
* :func:`agreement`: signed :class:`~dataspace.policy.contracts.Terms` as an ODRL
  Agreement (DSP "Contract Agreement Message": ``@id``, ``target``, ``assigner``,
  ``assignee``, ``timestamp``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from dataspace.connectors.dsp.messages import MalformedMessageError, UnknownOfferError
from dataspace.policy import ContractTerms, UsagePolicy
from dataspace.policy.contracts import Terms
from dataspace.policy.odrl import ACTIONS, DATASET_URN, KEY_URN, format_datetime

XSD = "http://www.w3.org/2001/XMLSchema#"


def dataset_iri(dataset_id: str) -> str:
    """The DSP/DCAT ``@id`` of a dataset (also the ODRL target of its policy)."""
    return DATASET_URN + dataset_id


def _typed(v: Any) -> Any:
    """A rightOperand as the DSP schema admits it: numbers become typed literals."""
    if isinstance(v, bool):
        return {"@value": "true" if v else "false", "@type": XSD + "boolean"}
    if isinstance(v, int):
        return {"@value": str(v), "@type": XSD + "integer"}
    if isinstance(v, float):
        return {"@value": repr(v), "@type": XSD + "decimal"}
    return v


def _dsp_rules(rules: Any) -> Any:
    if not isinstance(rules, list):
        return rules
    out = []
    for r in rules:
        r = dict(r)
        r.pop("target", None)  # DSP: rules carry no target (ODRL compact-policy inference)
        cs = r.get("constraint")
        if isinstance(cs, list):
            r["constraint"] = [
                c | {"rightOperand": _typed(c["rightOperand"])}
                if isinstance(c, dict) and "rightOperand" in c
                else c
                for c in cs
            ]
        out.append(r)
    return out


def dataset_offer(p: UsagePolicy, holder_key: str) -> dict[str, Any]:
    """The policy in force as the Offer of a Dataset's ``hasPolicy`` (module docstring).

    The ODRL document is the policy library's own (:meth:`UsagePolicy.to_jsonld`): its
    ``uid`` becomes the ``@id``, its ``target`` is left out (the enclosing Dataset), its
    context goes to the enclosing message (DSP's ``@context`` array), numbers are typed.
    A ``Set`` (a policy without assigner) is offered by the holder: ``Offer`` + assigner.
    """
    doc = dict(p.to_jsonld())
    doc.pop("@context", None)
    doc.pop("target", None)
    uid = doc.pop("uid", None) or doc.pop("@id", None)
    out: dict[str, Any] = {"@id": uid, "@type": "Offer"}
    doc.pop("@type", None)
    doc.setdefault("assigner", KEY_URN + holder_key)
    for k, v in doc.items():
        out[k] = _dsp_rules(v) if k in ("permission", "prohibition", "obligation") else v
    return out


# --- what a consumer asks ---------------------------------------------------------------


def _value(v: Any, where: str) -> Any:
    """A rightOperand's value: a plain JSON value or a typed literal ``{"@value": ...}``."""
    if isinstance(v, dict):
        if set(v) - {"@value", "@type"} or "@value" not in v:
            raise MalformedMessageError(f"{where}: expected a value or {{'@value', '@type'}}")
        return v["@value"]
    return v


def _number(v: Any, where: str) -> float:
    v = _value(v, where)
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError as e:
            raise MalformedMessageError(f"{where}: {v!r} is not a number") from e
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or abs(v) == float("inf"):
        raise MalformedMessageError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def _one(v: Any, where: str) -> str:
    """One string: ``eq x`` or ``isAnyOf [x]`` (a request names exactly one)."""
    v = _value(v, where)
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if not isinstance(v, str) or not v or len(v) > 200:
        raise MalformedMessageError(f"{where}: name exactly one value (a string)")
    return v


def _party(v: Any) -> str | None:
    if isinstance(v, dict):
        v = v.get("@id", v.get("uid"))
    return v if isinstance(v, str) else None


def requested_terms(
    offer: dict[str, Any], published: UsagePolicy, dataset_id: str, consumer_key: str
) -> ContractTerms:
    """The terms a consumer's request offer asks for (module docstring).

    :class:`UnknownOfferError` when the offer's ``@id`` or ``target`` is not the
    published offer of ``dataset_id``; :class:`MalformedMessageError` for a constraint
    that is not a request for one value of a term; :class:`ForeignAssigneeError` for an
    assignee other than the signer (a request cannot ask on another's behalf).
    """
    if offer.get("@id") != published.uid:
        raise UnknownOfferError(
            f"offer {str(offer.get('@id'))[:200]!r} is not the offer published for dataset "
            f"{dataset_id} (its @id is {published.uid!r}; read it from the catalog)"
        )
    target = _party(offer.get("target"))
    if target not in (dataset_iri(dataset_id), dataset_id):
        raise UnknownOfferError(f"offer.target must be {dataset_iri(dataset_id)!r}")
    for where, who in (("offer.assignee", offer.get("assignee")),):
        name = _party(who)
        if who is not None and name != KEY_URN + consumer_key:
            raise ForeignAssigneeError(
                f"{where} names {str(name)[:120]!r}, but the request is signed by "
                f"{KEY_URN + consumer_key}: a consumer asks for itself only"
            )
    rules = offer.get("permission")
    if offer.get("prohibition") or not isinstance(rules, list) or len(rules) != 1:
        raise MalformedMessageError("offer: a request asks for exactly one permission")
    rule = rules[0]
    if not isinstance(rule, dict):
        raise MalformedMessageError("offer.permission[0] must be an object")
    if "target" in rule:
        raise MalformedMessageError("offer.permission[0]: rules carry no target (DSP)")
    assignee = rule.get("assignee")
    if assignee is not None and _party(assignee) != KEY_URN + consumer_key:
        raise ForeignAssigneeError(
            "offer.permission[0].assignee names another party than the request's signer"
        )
    action = rule.get("action")
    if action not in ACTIONS:
        raise MalformedMessageError(f"offer.permission[0].action must be one of {ACTIONS}")
    cs = rule.get("constraint", [])
    if not isinstance(cs, list) or len(cs) > 32:
        raise MalformedMessageError("offer.permission[0].constraint must be an array")
    got: dict[str, Any] = {}
    for i, c in enumerate(cs):
        where = f"offer.permission[0].constraint[{i}]"
        if not isinstance(c, dict) or set(c) - {"leftOperand", "operator", "rightOperand"}:
            raise MalformedMessageError(f"{where}: an atomic constraint (no logical ones)")
        left, op, right = c.get("leftOperand"), c.get("operator"), c.get("rightOperand")
        if left in got:
            raise MalformedMessageError(f"{where}: {left!r} constrained twice")
        if left in ("purpose", "modelTemplate", "aggregation") and op in ("eq", "isAnyOf"):
            got[left] = _one(right, where)
        elif left in ("epsilon", "delta", "maxRounds") and op in ("lteq", "eq"):
            got[left] = _number(right, where)
        elif left == "dateTime" and op in ("lteq", "lt"):
            got[left] = _time(right, where)
        elif left == "assignee" and op in ("eq", "isAnyOf"):
            if _one(right, where) != KEY_URN + consumer_key:
                raise ForeignAssigneeError(f"{where}: names another party than the signer")
            got[left] = True
        else:
            raise MalformedMessageError(
                f"{where}: {left!r} {op!r} is not a term this connector negotiates "
                "(purpose eq, epsilon lteq, delta lteq, maxRounds lteq, modelTemplate eq, "
                "dateTime lteq)"
            )
    missing = [k for k in ("purpose", "epsilon", "maxRounds", "dateTime") if k not in got]
    if missing:
        raise MalformedMessageError(f"offer.permission[0]: state the terms {missing}")
    rounds = got["maxRounds"]
    if rounds != int(rounds) or rounds < 1:
        raise MalformedMessageError("maxRounds must be a whole number >= 1")
    return ContractTerms(
        action=action,
        purpose=got["purpose"],
        template=got.get("modelTemplate"),
        epsilon=got["epsilon"],
        delta=got.get("delta"),
        rounds=int(rounds),
        until=got["dateTime"],
    )


class ForeignAssigneeError(MalformedMessageError):
    """A request naming a consumer other than the key that signed it (403)."""

    http_status = 403
    code = "assignee_is_not_the_signer"


def _time(v: Any, where: str) -> datetime:
    s = _value(v, where)
    if not isinstance(s, str):
        raise MalformedMessageError(f"{where}: expected an xsd:dateTime string")
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as e:
        raise MalformedMessageError(f"{where}: {s[:60]!r} is not an xsd:dateTime") from e
    if dt.tzinfo is None:
        raise MalformedMessageError(f"{where}: {s[:60]!r} has no time zone")
    return dt


def dataset_of_offer(offer: dict[str, Any]) -> str:
    """The dataset id a request offer targets (``urn:dataspace:dataset:<id>`` or the id)."""
    target = _party(offer.get("target"))
    if not target:
        raise MalformedMessageError("offer.target must name the dataset (DSP: required)")
    return target[len(DATASET_URN) :] if target.startswith(DATASET_URN) else target


# --- what both sign, as ODRL ----------------------------------------------------------------


def agreement(t: Terms) -> dict[str, Any]:
    """Signed terms as a DSP/ODRL Agreement (one permission; the terms as constraints)."""
    cs: list[dict[str, Any]] = [
        {"leftOperand": "purpose", "operator": "eq", "rightOperand": t.purpose},
        {"leftOperand": "epsilon", "operator": "lteq", "rightOperand": _typed(t.epsilon)},
    ]
    if t.delta is not None:
        cs.append({"leftOperand": "delta", "operator": "lteq", "rightOperand": _typed(t.delta)})
    cs.append({"leftOperand": "maxRounds", "operator": "lteq", "rightOperand": _typed(t.rounds)})
    if t.template is not None:
        cs.append({"leftOperand": "modelTemplate", "operator": "eq", "rightOperand": t.template})
    cs.append(
        {
            "leftOperand": "dateTime",
            "operator": "lteq",
            "rightOperand": {"@value": format_datetime(t.until), "@type": XSD + "dateTime"},
        }
    )
    return {
        "@id": "urn:uuid:" + t.contract_id,
        "@type": "Agreement",
        "target": dataset_iri(t.dataset_id),
        "assigner": KEY_URN + t.holder,
        "assignee": KEY_URN + t.consumer,
        "timestamp": format_datetime(t.created),
        "permission": [{"action": t.action, "constraint": cs}],
    }


def offer_of_terms(t: Terms) -> dict[str, Any]:
    """Pending terms as the Offer of a ContractOfferMessage (``@id``, ``target``)."""
    a = agreement(t)
    return {
        "@id": a["@id"],
        "@type": "Offer",
        "target": a["target"],
        "assigner": a["assigner"],
        "permission": a["permission"],
    }
