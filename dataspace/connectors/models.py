"""Request and response bodies of the connector service (its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
