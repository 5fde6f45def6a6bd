"""What an audit finds: the report of :func:`dataspace.audit.verify_source`.

A :class:`Violation` names a rule (the rules are listed in :mod:`dataspace.audit.verify`
and :mod:`dataspace.audit.rules`), the entry index at fault, and the values involved.
An :class:`AuditReport` lists them in the order found, with what the audit saw on the
way (checkpoint, witnesses, contracts, rounds, epsilon per dataset) and what the source
says of its witnesses (:func:`note_witnessing`: reported, not judged).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Violation:
    """One broken rule: where (entry ``index``, None for the log as a whole), which, why."""

    rule: str
    message: str
    index: int | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        where = f"entry {self.index}" if self.index is not None else "log"
        vals = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{where}: {self.rule}: {self.message}" + (f" ({vals})" if vals else "")


@dataclass(slots=True)
class RoundRecord:
    """One training round as the auditor sees it (for ``dataspace audit show``)."""

    index: int
    time: str
    contract_id: str | None
    dataset_id: str | None
    fingerprint: str | None
    consumer: str | None
    purpose: str | None
    run_id: Any
    round: Any
    epsilon: float
    model_sha256: str | None = None
    finished_index: int | None = None
    ok: bool = True
    #: what the round's epsilon protects ("frame" / "episode"), as its round.finished says
    privacy_unit: str | None = None


@dataclass
class AuditReport:
    """Everything one audit found; ``verified`` only when no violation and anchored."""

    origin: str | None = None
    size: int = 0
    root: str | None = None
    entries_checked: int = 0
    witnesses: list[str] = field(default_factory=list)
    quorum: int = 0
    previous_size: int | None = None
    violations: list[Violation] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    round_count: int = 0
    contracts: dict[str, dict[str, Any]] = field(default_factory=dict)
    epsilon_by_dataset: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    #: the source's latest checkpoint size, when it says (the verified one may trail it)
    latest_size: int | None = None
    #: the source's stale witnesses: {"witness", "since_size", "failing_since", "error",
    #: "status"} (failing too long to hold its witnessed checkpoint back; see witnesspolicy)
    stale_witnesses: list[dict[str, Any]] = field(default_factory=list)
    #: a trusted witness cosigned the checkpoint, or the auditor's kept checkpoint (of a
    #: non-empty tree) is a prefix of it: more than the log's self-consistency was checked
    anchored: bool = False
    #: the caller accepted an unanchored log (no ``unanchored`` violation; ``verified`` false)
    unanchored_allowed: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def verified(self) -> bool:
        """No violation and anchored: what may be called verified (DESIGN.md, threat model)."""
        return self.ok and self.anchored

    @property
    def first(self) -> Violation | None:
        return self.violations[0] if self.violations else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["verified"] = self.verified
        d["first_violation"] = str(self.first) if self.first else None
        return d


def note_witnessing(report: AuditReport, status: dict[str, Any] | None) -> None:
    """Add what the source says of its witnesses (``TransparencyLog.witnessing_status``):
    its latest size and the witnesses that are stale, since which size. Not a violation:
    the checkpoint verified is what they cosigned; ``--witness-quorum`` judges that."""
    if not status:
        return
    size = status.get("size")
    report.latest_size = size if type(size) is int else None
    report.stale_witnesses = [
        {
            "witness": w.get("witness"),
            "since_size": w.get("stale_since_size"),
            "failing_since": w.get("failing_since"),
            "error": w.get("error"),
            "status": w.get("status"),
        }
        for w in status.get("witnesses") or []
        if isinstance(w, dict) and w.get("stale")
    ]


def stale_witness_text(w: dict[str, Any]) -> str:
    """One stale witness (an item of :attr:`AuditReport.stale_witnesses`), in words."""
    since = w.get("since_size")
    why = f": {w['error']}" if w.get("error") else ""
    return f"{w.get('witness')} (stale since size {since if since is not None else '?'}{why})"
