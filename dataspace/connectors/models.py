"""Request and response bodies of the connector service (its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dataspace.policy.odrl import ACTIONS, ODRL_CONTEXT, POLICY_TYPES, PROFILE, PROFILE_CONTEXT

Id = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@/+=-]+$")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str
    name: str
    published: bool | None = Field(None, description="catalog published to the hub yet")
    publish_error: str | None = None


class DatasetView(BaseModel):
    """A dataset as the site shows it: the catalog entry and dataset-level counts only."""

    dataset_id: str
    fingerprint: str
    dcat: dict[str, Any]
    title: str
    robot_type: str | None = None
    fps: float | None = None
    tasks: list[str] = Field(default_factory=list)
    episodes: int | None = None
    frames: int | None = None
    state_dim: int | None = None
    action_dim: int | None = None
    license: str | None = None
    format: str | None = None
    quality_score: float | None = None
    connector_url: str | None = None
    privacy_unit: Literal["frame", "episode"] | None = Field(
        None, description="what one unit of a contract's epsilon protects at this site"
    )
    holder: str


class Published(BaseModel):
    published: int


class OfferBody(BaseModel):
    """What a consumer asks of a dataset (the consumer is the caller's key)."""

    model_config = ConfigDict(extra="forbid")
    dataset_id: str = Id
    purpose: str = Field(min_length=1, max_length=200)
    epsilon: float = Field(gt=0, le=1e6)
    rounds: int = Field(ge=1, le=1_000_000)
    until: str = Field(min_length=10, max_length=64, description="RFC 3339 date or date-time")
    template: str | None = Field(None, max_length=200)
    action: Literal["train", "compute-statistics"] = "train"
    delta: float | None = Field(None, ge=0, le=1)


class Signatures(BaseModel):
    holder: str | None = Field(None, max_length=200)
    consumer: str | None = Field(None, max_length=200)


class AgreementBody(BaseModel):
    """Terms signed by one or both parties (dataspace.policy.contracts.Agreement)."""

    contract_id: str = Id
    state: str = Field(max_length=40)
    terms: dict[str, Any]
    signatures: Signatures


class ContractView(AgreementBody):
    holder_name: str | None = None
    consumer_name: str | None = None
    policy_sha256: str | None = None
    decided_at: str | None = None
    reason: str | None = None


class ContractViews(BaseModel):
    contracts: list[ContractView]


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("rejected by the holder", min_length=1, max_length=500)


class PolicyAck(BaseModel):
    dataset_id: str
    policy_sha256: str
    log_index: int | None = None


class BudgetRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    dataset_id: str


class BudgetReport(BaseModel):
    datasets: list[BudgetRow]


def policy_body_schema() -> dict[str, Any]:
    """The PUT policy body as JSON Schema: the shape ``dataspace.policy.odrl.parse_usage_policy``
    accepts (docs/odrl-profile.md), so a fuzzer or client sees the profile, not "any object".

    The handler still parses with ``parse_usage_policy`` (400 with the JSON path at fault); what
    no schema can say stays its job: the target must be the path's enrolled dataset with its
    fingerprint, and each rule's constraints must be ones the profile defines.
    """
    key_urn = r"^urn:dataspace:key:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
    rule = {
        "type": "object",
        "required": ["action"],
        "properties": {
            "action": {"enum": list(ACTIONS)},
            "assignee": {"type": "string"},
            "constraint": {"type": "array", "items": {"type": "object"}},
        },
    }
    return {
        "type": "object",
        "title": "ODRL usage policy (dataspace profile)",
        "required": ["@context", "@type", "uid", "profile", "target", "permission"],
        "additionalProperties": False,
        "properties": {
            "@context": {
                "type": "array",
                "prefixItems": [{"const": ODRL_CONTEXT}, {"const": PROFILE_CONTEXT}],
                "minItems": 2,
                "maxItems": 2,
            },
            "@type": {"enum": list(POLICY_TYPES)},
            "uid": {"type": "string", "minLength": 1},
            "profile": {"const": PROFILE},
            "assigner": {"type": "string", "pattern": key_urn},
            "target": {
                "type": "object",
                "required": ["uid", "fingerprint"],
                "additionalProperties": False,
                "properties": {
                    "uid": {"type": "string", "pattern": r"^urn:dataspace:dataset:.+$"},
                    "fingerprint": {"type": "string", "pattern": r"^[0-9a-f]{64}$"},
                    "@type": {"const": "Asset"},
                },
            },
            "permission": {"type": "array", "minItems": 1, "items": rule},
            "prohibition": {"type": "array", "items": rule},
            "conflict": {"const": "prohibit"},
            "approval": {"enum": ["automatic", "manual"]},
        },
    }
