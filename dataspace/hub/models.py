"""Request and response bodies of the hub's API (pydantic; they are its OpenAPI schema).

Limits are part of the schema (lengths, ranges, list sizes) so a hostile or
absurd request is refused with a 422 naming the field, before any work.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Id = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@/+=-]+$")
KeyB64 = Field(min_length=44, max_length=44, description="Ed25519 public key, standard base64")
#: @type values that name a DCAT dataset (hub/routes/catalog.py check_dcat: any "...:Dataset")
DATASET_TYPES = ("dcat:Dataset", "Dataset", "http://www.w3.org/ns/dcat#Dataset")
Hex = Field(min_length=1, max_length=128, pattern=r"^[0-9a-f]+$")


def _finite(v: Any, where: str = "") -> None:
    """JSON has no NaN or Infinity (RFC 8259); nested documents must not smuggle them in."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{where or 'value'} is {v}; only finite numbers are allowed")
    if isinstance(v, dict):
        for k, x in v.items():
            _finite(x, f"{where}.{k}" if where else str(k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            _finite(x, f"{where}[{i}]")


class Strict(BaseModel):
    """Request bodies: no unknown fields, no NaN or Infinity anywhere (even nested)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="after")
    def _all_finite(self) -> Strict:
        for name in type(self).model_fields:
            _finite(getattr(self, name), name)
        return self


class SuperLinkInfo(BaseModel):
    address: str = Field(description="HOST:PORT of the hub's Flower SuperLink (Control API)")
    root_certificates: str = Field(description="PEM of the CA that signed its TLS certificate")


class HubInfo(BaseModel):
    name: str = Field(
        description="the hub's name (the actor of its log's events); its log's origin is "
        "the key name in ``vkey`` (``dataspace.invalid/hub/HEX`` for a log made since "
        "URL-style origins, the hub's name for an older one)"
    )
    public_key: str = Field(description="the hub's Ed25519 key (base64): its operator identity")
    vkey: str | None = Field(None, description="the hub log's verifier key (C2SP vkey text)")
    log_size: int | None = None
    superlink: SuperLinkInfo | None = Field(
        None,
        description="where consumers submit runs (`dataspace train --hub`); null when the "
        "hub was started without --superlink",
    )


class Participant(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Literal["holder", "consumer", "auditor", "operator"]
    public_key: str = KeyB64


class WhoAmI(BaseModel):
    key_id: str
    name: str
    role: str
    known: bool


class PublishRequest(Strict):
    """One catalog entry, as a connector publishes it. Metadata only, never rows."""

    dataset_id: str = Id
    fingerprint: str = Hex
    dcat: dict[str, Any] = Field(
        description="the DCAT-AP JSON-LD entry (@context, @type)",
        # what check_dcat (hub/routes/catalog.py) accepts: an @context, an @type naming dcat:Dataset
        json_schema_extra={
            "required": ["@context", "@type"],
            "properties": {
                "@type": {
                    "anyOf": [
                        {"enum": list(DATASET_TYPES)},
                        {"type": "array", "contains": {"enum": list(DATASET_TYPES)}},
                    ]
                }
            },
        },
    )
    title: str = Field("", max_length=500)
    robot_type: str | None = Field(None, max_length=200)
    fps: float | None = Field(None, ge=0, le=100_000)
    tasks: list[str] = Field(default_factory=list, max_length=1000)
    episodes: int | None = Field(None, ge=0)
    frames: int | None = Field(None, ge=0)
    state_dim: int | None = Field(None, ge=0, le=1_000_000)
    action_dim: int | None = Field(None, ge=0, le=1_000_000)
    license: str | None = Field(None, max_length=200)
    format: str | None = Field(None, max_length=100)
    quality_score: float | None = Field(
        None, ge=0, le=100, description="latest quality score, 0..100"
    )
    connector_url: str | None = Field(None, max_length=500, pattern=r"^https?://[^\s]+$")
    privacy_unit: Literal["frame", "episode"] | None = Field(
        None,
        description="what one unit of a contract's epsilon protects at this holder "
        "(site.toml [training] privacy_unit): one frame or one whole episode",
    )


class CatalogEntry(PublishRequest):
    model_config = ConfigDict(extra="ignore")
    holder: str = Field(description="the publishing connector's key (base64)")
    holder_name: str = ""
    published_at: str


class CatalogPage(BaseModel):
    total: int
    entries: list[CatalogEntry]


class ContractRecord(Strict):
    """A contract as a connector registers it at the hub (terms, parties, signatures)."""

    contract_id: str = Id
    dataset_id: str = Id
    fingerprint: str = Hex
    consumer: str = KeyB64
    purpose: str = Field(min_length=1, max_length=200)
    template: str | None = Field(None, max_length=200)
    epsilon: float = Field(ge=0, le=1e6)
    delta: float | None = Field(None, ge=0, le=1)
    rounds: int | None = Field(None, ge=0, le=10_000_000)
    until: str | None = Field(None, max_length=64)
    state: str = Field(min_length=1, max_length=40)
    connector_url: str | None = Field(None, max_length=500, pattern=r"^https?://[^\s]+$")
    agreement: dict[str, Any] | None = Field(
        None, description="the agreement as signed by holder and consumer"
    )


class RegisteredContract(ContractRecord):
    model_config = ConfigDict(extra="ignore")
    holder: str
    registered_at: str


class ContractList(BaseModel):
    contracts: list[RegisteredContract]


class RunRequest(Strict):
    run_id: str = Id
    contract_ids: list[str] = Field(min_length=1, max_length=1000)
    template: str | None = Field(None, max_length=200)
    meta: dict[str, Any] = Field(default_factory=dict)


class RoundRequest(Strict):
    """One finished round: aggregates only (a loss, epsilons, per-site contributions).

    Every figure is the poster's claim, unchecked by the hub and logged as such
    (``round.registered`` with ``claimed_by``); what each site charged is in its own
    signed log (``round.started``), which ``dataspace audit cross-check`` compares."""

    round: int = Field(ge=0, le=10_000_000)
    loss: float | None = Field(None, description="the round's loss, as the consumer claims it")
    epsilon: dict[str, float] = Field(
        default_factory=dict,
        description="epsilon charged this round, per dataset or site, as the consumer claims "
        "it (the sites' logs hold what they charged)",
    )
    contributions: dict[str, float] = Field(
        default_factory=dict,
        description="per-site contribution scores, as the consumer claims them (unchecked)",
    )


class Run(BaseModel):
    run_id: str
    consumer: str
    contract_ids: list[str]
    template: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    rounds: list[RoundRequest] = Field(default_factory=list)
    status: str | None = Field(
        None, description="as its run directory said when run.finished was logged"
    )
    model_sha256: str | None = Field(
        None, description="SHA-256 of the last completed round's global.npz (run.finished)"
    )
    rounds_completed: int | None = None
    finished_at: str | None = None
    finished_log_index: int | None = Field(None, description="the run.finished entry")


class RunFinished(BaseModel):
    """What the hub logged as ``run.finished``, read from its own copy of the run directory."""

    run_id: str
    consumer: str
    contracts: list[str]
    status: str = Field(description="the run directory's history: finished or stopped")
    rounds: int = Field(description="training rounds completed")
    last_round: int | None = None
    model_sha256: str | None = Field(
        None, description="SHA-256 of rounds/<last>/global.npz, the final global model's bytes"
    )
    log_index: int | None = None


class RunList(BaseModel):
    runs: list[Run]


class Ack(BaseModel):
    ok: bool = True
    log_index: int | None = Field(None, description="index of the hub log entry recording this")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    service: str
    name: str


# --- budget reports (dataspace.hub.budgets) ----------------------------------------------


class BudgetReportBody(Strict):
    """A holder's budget statement, as its site signed it (dataspace.policy.budget_statement)."""

    statement: str = Field(
        min_length=2,
        max_length=8192,
        description="the budget.reported event: RFC 8785 canonical JSON signed by the site's key",
    )


class BudgetReport(BaseModel):
    """The latest budget statement of one dataset, as the hub keeps it."""

    model_config = ConfigDict(extra="ignore")
    holder: str = Field(description="the holder's key (base64): the statement's signer")
    holder_name: str = ""
    dataset_id: str
    fingerprint: str
    reported_at: str = Field(description="when the site made the report (its clock)")
    budget: float = Field(description="lifetime epsilon of the dataset (the policy in force)")
    reserved: float = Field(description="epsilon live contracts may still charge")
    spent: float = Field(description="epsilon charged so far")
    remaining: float = Field(description="budget - reserved - spent")
    delta_budget: float
    delta_reserved: float
    delta_spent: float
    delta_remaining: float
    live_contracts: int
    rounds: int
    policy_sha256: str
    site_log_size: int = Field(description="SITE/log's size when the report was made")
    statement: str = Field(description="the signed statement itself (check it with the key)")
    received_at: str


class BudgetReports(BaseModel):
    reports: list[BudgetReport]


class BudgetAck(BaseModel):
    ok: bool = True
    status: Literal["stored", "unchanged", "stale"] = Field(
        description="stored; unchanged (the same statement again); stale (not newer than "
        "the report kept: ignored)"
    )
    reported_at: str = Field(description="the kept report's time")
    site_log_size: int = Field(description="the kept report's SITE/log size")
