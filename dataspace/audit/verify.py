"""The auditor: check a log with nothing but public keys.

:func:`audit` streams the entries once and checks, in this order:

1. the checkpoint is signed by a trusted log key named after its origin
   (rule ``checkpoint-signature``);
2. every entry is a canonical, well-formed event (``entry-malformed``) signed by
   the key its actor names (``entry-signature``), and that actor is trusted when
   the trusted-keys file lists actors (``actor-untrusted``);
3. the business rules, over the events in log order (:class:`RuleChecker`):
   every ``round.started`` cites an earlier ``contract.agreed`` (``contract-unknown``)
   that is live at the round's time (``contract-expired``) and covers its dataset,
   fingerprint, purpose and consumer (``contract-dataset``, ``contract-fingerprint``,
   ``contract-purpose``, ``contract-consumer``), within the contract's rounds
   (``contract-rounds``) and epsilon (``contract-epsilon``); cumulative epsilon per
   dataset never exceeds the budget of its latest ``policy.published``
   (``budget-epsilon``); no event but ``access.refused`` cites a contract after
   its ``until`` (``after-expiry``); every ``round.finished`` follows a
   ``round.started`` of the same contract, run, round and dataset
   (``round-not-started``), reports no more epsilon than that round.started
   charged (``round-epsilon``; the excess also counts against the contract and
   the dataset, as the ledger counts it; less is allowed: the charge stands), and
   names its model's SHA-256 (``round-model``); a round's epsilon is a
   non-negative number (``round-malformed``); no round counts its epsilon per
   "frame" (the unit when an event names none) on a dataset whose first round
   counted it per "episode" (``round-privacy-unit``: a frame-level epsilon does
   not bound one episode; the reverse composes, as the site's ledger allows);
4. the Merkle tree of the entries has the checkpoint's size and root
   (``tree-size``, ``tree-root``);
5. at least ``quorum`` distinct trusted witnesses cosigned the checkpoint
   (``witness-signature``, ``witness-quorum``);
6. the checkpoint the auditor kept from last time is signed by the same log and
   is a prefix of this tree (``previous-checkpoint``, ``rollback``, ``fork``).

The report lists every violation in the order found; the first names the entry
index, the rule and the values at fault. What the source says of its witnesses
(:func:`note_witnessing`: its latest size, and which witness is stale since which
size) is reported too, not judged: the quorum judges what was cosigned.

Trusted-keys file (``--trusted-keys``), one item per line, ``#`` comments::

    NAME+HEX+BASE64             a vkey: type 0x01 is a log key, type 0x04 a witness key
    log NAME+HEX+BASE64|PATH    a log key (PATH: an identity .pub file, or a .vkey file)
    witness NAME+HEX+BASE64|PATH  a witness key (an identity .pub gives its 0x04 key)
    actor PATH | PATH.pub       an identity file {"name","role","public_key"} of an actor
    {"name":..,"public_key":..}  an inline identity (an actor)

Relative paths are relative to the file. A log's key is also trusted as an
actor (a site signs its own events). When no actor is listed, any actor whose
signature verifies is accepted (the actors are then reported, not judged).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dataspace.audit.checkpoint import Checkpoint, parse_checkpoint
from dataspace.audit.events import EventError, EventSignatureError, check_entry, parse_time
from dataspace.audit.merkle import EMPTY_ROOT, node_hash
from dataspace.audit.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    NoteError,
    Verifier,
    parse_note,
    parse_signature_lines,
    parse_vkey,
    verify_signatures,
)
from dataspace.errors import DataspaceError

#: NAME+HEX(keyID)+BASE64(type || key): a vkey, as opposed to a path
VKEY_RE = re.compile(r"[^+\s]+\+[0-9a-fA-F]{8}\+[A-Za-z0-9+/]+=*")
#: float slack when summing epsilons
EPS_TOL = 1e-9


class TrustedKeysError(DataspaceError):
    """A trusted-keys file that cannot be read."""


@dataclass
class TrustedKeys:
    logs: list[Verifier] = field(default_factory=list)
    witnesses: list[Verifier] = field(default_factory=list)
    actors: dict[bytes, str] = field(default_factory=dict)

    def actor_keys(self) -> frozenset[bytes] | None:
        if not self.actors:
            return None
        return frozenset(self.actors) | {v.public_key for v in self.logs}


def _identity(obj: dict, where: str) -> tuple[str, bytes]:
    try:
        raw = base64.b64decode(obj["public_key"], validate=True)
        if len(raw) != 32:
            raise ValueError(f"{len(raw)}-byte key")
        return str(obj["name"]), raw
    except (KeyError, ValueError, TypeError) as e:
        raise TrustedKeysError(f"{where}: not an identity {{name, public_key}}: {e}") from e


def _read_identity(path: Path) -> tuple[str, bytes]:
    try:
        return _identity(json.loads(path.read_text()), str(path))
    except (OSError, json.JSONDecodeError) as e:
        raise TrustedKeysError(f"cannot read identity {path}: {e}") from e


def _key_item(item: str, alg: int, base: Path, where: str) -> Verifier:
    if VKEY_RE.fullmatch(item):
        try:
            v = parse_vkey(item)
        except NoteError as e:
            raise TrustedKeysError(f"{where}: {e}") from e
        if v.alg != alg:
            raise TrustedKeysError(f"{where}: key type {v.alg:#04x}, expected {alg:#04x}")
        return v
    path = Path(base, item)
    if path.suffix == ".vkey":
        try:
            return _key_item(path.read_text().strip(), alg, base, where)
        except OSError as e:
            raise TrustedKeysError(f"{where}: cannot read {path}: {e}") from e
    name, raw = _read_identity(path)
    return Verifier(name, raw, alg)


def parse_trusted_keys(text: str, base: Path = Path()) -> TrustedKeys:
    tk = TrustedKeys()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("{") else line
        line = line.strip()
        if not line:
            continue
        where = f"trusted keys line {n}"
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if line.startswith("{"):
            name, raw = _identity(json.loads(line), where)
            tk.actors[raw] = name
        elif word == "log":
            tk.logs.append(_key_item(rest, ALG_ED25519, base, where))
        elif word == "witness":
            tk.witnesses.append(_key_item(rest, ALG_COSIGNATURE_V1, base, where))
        elif word == "actor":
            name, raw = _read_identity(Path(base, rest))
            tk.actors[raw] = name
        elif VKEY_RE.fullmatch(line):
            try:
                v = parse_vkey(line)
            except NoteError as e:
                raise TrustedKeysError(f"{where}: {e}") from e
            (tk.logs if v.alg == ALG_ED25519 else tk.witnesses).append(v)
        else:
            path = Path(base, line)
            if path.suffix == ".vkey":
                sub = parse_trusted_keys(path.read_text(), path.parent)
                tk.logs += sub.logs
                tk.witnesses += sub.witnesses
            else:
                name, raw = _read_identity(path)
                tk.actors[raw] = name
    return tk


def load_trusted_keys(path: Path | str) -> TrustedKeys:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise TrustedKeysError(f"cannot read trusted keys {path}: {e}") from e
    return parse_trusted_keys(text, path.parent)


@dataclass
class Violation:
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

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def first(self) -> Violation | None:
        return self.violations[0] if self.violations else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
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


def consumer_key(c: Any) -> str | None:
    """A consumer as its base64 public key, from a key string or an identity-like object."""
    if c is None:
        return None
    if isinstance(c, dict):
        return c.get("key") or c.get("public_key")
    return str(c)


def _num(v: Any) -> float | None:
    return float(v) if type(v) in _NUMBER else None


#: JSON numbers (``type`` rather than isinstance: a bool is not an epsilon)
_NUMBER = (int, float)
#: a model hash as round.finished names it: SHA-256, lower-case hex
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(slots=True)
class _Terms:
    """What the rules need of a ``contract.agreed``, read once per contract."""

    fields: dict[str, Any]
    until: datetime | None
    dataset_id: str | None
    fingerprint: str | None
    purpose: str | None
    consumer: str | None
    rounds: float | None
    epsilon: float | None


class RuleChecker:
    """The data-space rules over events in log order (module docstring, step 3).

    Events come in as their parsed fields (the entry without ``sig``) and time.
    Rounds are tracked per contract by (run, round, dataset), with their strings
    interned: a million rounds cost about 100 MB.
    """

    def __init__(self, report: AuditReport, keep_rounds: bool = True) -> None:
        self.r = report
        self.keep_rounds = keep_rounds
        self.contracts: dict[str, _Terms] = {}
        self.budget: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.contract_spent: dict[str, float] = {}
        #: contract id -> round digest -> epsilon its round.started entries charged
        self.charged: dict[str | None, dict[tuple, float]] = {}
        self.open_rounds: dict[tuple[str | None, tuple], RoundRecord] = {}
        #: dataset -> (privacy unit of its first round, that round's entry index)
        self.units: dict[str, tuple[str, int]] = {}

    def _flag(self, index: int, rule: str, msg: str, **values: Any) -> None:
        self.r.violations.append(Violation(rule, msg, index, values))

    @staticmethod
    def _round_key(run_id: Any, round_no: Any, dataset: str | None) -> tuple:
        # interned: a million open rounds share their run and dataset strings
        if type(run_id) is str:
            run_id = sys.intern(run_id)
        if type(dataset) is str:
            dataset = sys.intern(dataset)
        return (run_id, round_no, dataset)

    def feed(self, i: int, f: dict[str, Any], t: datetime) -> None:
        """Check entry ``i``: its fields ``f`` (without ``sig``) and its parsed time ``t``."""
        kind = f["kind"]
        if kind == "policy.published":
            eps = _num(f.get("epsilon"))
            key = f["dataset_id"] or f["fingerprint"]
            if key is not None and eps is not None:
                self.budget[key] = eps
            return
        if kind == "contract.agreed":
            self._contract(i, f)
            return
        cid = f["contract_id"]
        ok = True
        if cid is not None and kind != "access.refused":
            c = self.contracts.get(cid)
            if c is not None and c.until is not None and t > c.until:
                self._flag(
                    i,
                    "contract-expired" if kind == "round.started" else "after-expiry",
                    f"{kind} at {f['time']} after contract {cid} expired",
                    contract_id=cid,
                    time=f["time"],
                    until=c.fields.get("until"),
                )
                ok = False
        if kind == "round.started":
            self._round(i, f, ok)
        elif kind == "round.finished":
            self._finished(i, f)

    def _contract(self, i: int, f: dict[str, Any]) -> None:
        cid = f["contract_id"]
        if cid is None:
            self._flag(i, "contract-malformed", "contract.agreed without contract_id")
            return
        if cid in self.contracts:
            self._flag(i, "contract-duplicate", f"contract {cid} agreed twice", contract_id=cid)
            return
        until = f.get("until")
        try:
            t = parse_time(until) if until is not None else None
        except EventError:
            self._flag(i, "contract-malformed", f"contract {cid} until {until!r} is not RFC 3339")
            t = None
        consumer = consumer_key(f.get("consumer"))
        self.contracts[cid] = _Terms(
            f,
            t,
            f["dataset_id"],
            f["fingerprint"],
            f["purpose"],
            consumer,
            _num(f.get("rounds")),
            _num(f.get("epsilon")),
        )
        self.r.contracts[cid] = {
            "index": i,
            "dataset_id": f["dataset_id"],
            "fingerprint": f["fingerprint"],
            "purpose": f["purpose"],
            "consumer": consumer,
            "template": f.get("template"),
            "epsilon": f.get("epsilon"),
            "delta": f.get("delta"),
            "rounds": f.get("rounds"),
            "until": until,
            "time": f["time"],
        }

    def _round(self, i: int, f: dict[str, Any], ok: bool = True) -> None:
        cid = f["contract_id"]
        dataset_id, fingerprint, purpose = f["dataset_id"], f["fingerprint"], f["purpose"]
        eps = _num(f.get("epsilon"))
        run_id, round_no = f.get("run_id"), f.get("round")
        consumer = f.get("consumer")
        if consumer is not None and type(consumer) is not str:
            consumer = consumer_key(consumer)
        vio = self.r.violations
        n_before = len(vio)
        self.r.round_count += 1
        if eps is None or eps < 0:
            self._flag(
                i,
                "round-malformed",
                "round.started without a non-negative epsilon",
                epsilon=f.get("epsilon"),
            )
            eps = 0.0  # a negative charge must not lower the sums below
        self._unit(i, f, dataset_id or fingerprint)
        # what this round charged, for its round.finished (and the distinct rounds)
        key = self._round_key(run_id, round_no, dataset_id or fingerprint)
        charged = self.charged.get(cid)
        if charged is None:
            charged = self.charged[cid] = {}
        charged[key] = charged.get(key, 0.0) + eps
        rec = None
        if self.keep_rounds:  # memory per round: only ``show`` needs the records
            rec = RoundRecord(
                i,
                f["time"],
                cid,
                dataset_id,
                fingerprint,
                consumer,
                purpose,
                run_id,
                round_no,
                eps,
                ok=ok,
            )
            self.r.rounds.append(rec)
            self.open_rounds[(cid, key)] = rec
        c = self.contracts.get(cid) if cid is not None else None
        if c is None:
            self._flag(
                i,
                "contract-unknown",
                f"round.started cites contract {cid!r}, which no earlier contract.agreed agreed",
                contract_id=cid,
            )
            if rec is not None:
                rec.ok = False
            return
        if rec is not None:
            rec.consumer = rec.consumer or c.consumer
        if dataset_id is not None and dataset_id != c.dataset_id:
            self._mismatch(i, "dataset", cid, dataset_id, c.dataset_id)
        if fingerprint is not None and fingerprint != c.fingerprint:
            self._mismatch(i, "fingerprint", cid, fingerprint, c.fingerprint)
        if purpose is not None and purpose != c.purpose:
            self._mismatch(i, "purpose", cid, purpose, c.purpose)
        if consumer is not None and consumer != c.consumer:
            self._mismatch(i, "consumer", cid, consumer, c.consumer)
        if purpose is None and c.purpose is not None:
            self._flag(
                i,
                "contract-purpose",
                "round.started names no purpose",
                contract_id=cid,
                contract=c.purpose,
            )
        if c.rounds is not None and len(charged) > c.rounds:
            self._flag(
                i,
                "contract-rounds",
                f"round {len(charged)} of contract {cid} exceeds its {int(c.rounds)} rounds",
                contract_id=cid,
                rounds=len(charged),
                limit=int(c.rounds),
            )
        self._spend(i, c, cid, dataset_id or fingerprint or c.dataset_id or c.fingerprint, eps)
        if rec is not None and len(vio) > n_before:
            rec.ok = False

    def _mismatch(self, i: int, name: str, cid: str, got: Any, want: Any) -> None:
        self._flag(
            i,
            f"contract-{name}",
            f"round {name} {got!r} is not contract {cid}'s {want!r}",
            contract_id=cid,
            round=got,
            contract=want,
        )

    def _spend(self, i: int, c: _Terms, cid: str, dataset: str | None, eps: float) -> None:
        """Add ``eps`` to the contract's and the dataset's cumulative epsilon; check both."""
        spent = self.contract_spent.get(cid, 0.0) + eps
        self.contract_spent[cid] = spent
        if c.epsilon is not None and spent > c.epsilon + EPS_TOL:
            self._flag(
                i,
                "contract-epsilon",
                f"cumulative epsilon {spent:g} exceeds contract {cid}'s {c.epsilon:g}",
                contract_id=cid,
                spent=spent,
                limit=c.epsilon,
            )
        if dataset is None:
            return
        total = self.spent.get(dataset, 0.0) + eps
        self.spent[dataset] = self.r.epsilon_by_dataset[dataset] = total
        budget = self.budget.get(dataset)
        if budget is not None and total > budget + EPS_TOL:
            self._flag(
                i,
                "budget-epsilon",
                f"cumulative epsilon {total:g} on dataset {dataset} "
                f"exceeds the policy budget {budget:g}",
                dataset=dataset,
                spent=total,
                budget=budget,
            )

    def _unit(self, i: int, f: dict[str, Any], dataset: str | None) -> None:
        """Rule ``round-privacy-unit``: no frame round on an episode budget (module docstring)."""
        unit = f.get("privacy_unit")
        unit = unit if type(unit) is str else "frame"
        if dataset is None:
            return
        first = self.units.get(dataset)
        if first is None:
            self.units[dataset] = (unit, i)
        elif first[0] == "episode" and unit != "episode":
            self._flag(
                i,
                "round-privacy-unit",
                f"a round on dataset {dataset!r} counts epsilon per {unit!r}, but its rounds "
                f"since entry {first[1]} count it per {first[0]!r}",
                dataset=dataset,
                privacy_unit=unit,
                first_unit=first[0],
                first_index=first[1],
            )

    def _finished(self, i: int, f: dict[str, Any]) -> None:
        """A round.finished: its round.started came first, charged at least the epsilon it
        reports, and it names the model it produced (rules ``round-not-started``,
        ``round-epsilon``, ``round-model``)."""
        cid = f["contract_id"]
        c = self.contracts.get(cid) if cid is not None else None
        if cid is not None and c is None:
            self._flag(
                i,
                "contract-unknown",
                f"round.finished cites unknown contract {cid!r}",
                contract_id=cid,
            )
        run_id, round_no = f.get("run_id"), f.get("round")
        dataset = f["dataset_id"] or f["fingerprint"]
        key = self._round_key(run_id, round_no, dataset)
        charged = self.charged.get(cid, {}).get(key)
        vio = self.r.violations
        n_before = len(vio)
        if charged is None:
            self._flag(
                i,
                "round-not-started",
                f"round.finished of run {run_id!r} round {round_no!r} on dataset {dataset!r} "
                f"under contract {cid!r} has no earlier round.started",
                contract_id=cid,
                run_id=run_id,
                round=round_no,
                dataset=dataset,
            )
        eps = _num(f.get("epsilon"))
        if eps is None or eps < 0:
            self._flag(
                i,
                "round-malformed",
                "round.finished without a non-negative epsilon",
                epsilon=f.get("epsilon"),
            )
        elif charged is not None and eps > charged + EPS_TOL * max(1.0, charged):
            self._flag(
                i,
                "round-epsilon",
                f"round.finished reports epsilon {eps:g} but its round.started charged {charged:g}",
                contract_id=cid,
                run_id=run_id,
                round=round_no,
                charged=charged,
                finished=eps,
            )
            if c is not None:  # the excess was spent all the same: it counts (as the ledger's)
                self._spend(i, c, cid, dataset or c.dataset_id or c.fingerprint, eps - charged)
        self._unit(i, f, dataset)
        model = f.get("model_sha256")
        if type(model) is not str or _SHA256_HEX.fullmatch(model) is None:
            self._flag(
                i,
                "round-model",
                "round.finished names no model hash (model_sha256, 64 lower-case hex digits)",
                contract_id=cid,
                run_id=run_id,
                round=round_no,
                model_sha256=model,
            )
        rec = self.open_rounds.get((cid, key))
        if rec is not None:
            rec.model_sha256 = model if type(model) is str else None
            unit = f.get("privacy_unit")
            rec.privacy_unit = unit if type(unit) is str else None
            rec.finished_index = i
            if len(vio) > n_before:
                rec.ok = False


def audit(
    entries: Iterable[bytes],
    note: bytes,
    trusted: TrustedKeys,
    cosignatures: bytes = b"",
    previous: bytes | None = None,
    quorum: int = 0,
    max_violations: int = 1000,
    keep_rounds: bool = True,
) -> AuditReport:
    """Check a log from its entries, its signed checkpoint and cosignatures (module docstring).

    ``keep_rounds=False`` checks the same rules but keeps no per-round records in
    the report (``rounds`` stays empty, ``round_count`` counts them): memory then
    grows only by the (run, round, dataset) key and charge of each round, which the
    contract-rounds and round.finished rules need (about 100 bytes a round).
    """
    report = AuditReport(quorum=quorum)
    vio = report.violations
    # 1. the checkpoint
    try:
        parsed = parse_note(note)
        cp = parse_checkpoint(parsed.text)
    except NoteError as e:
        vio.append(Violation("checkpoint-malformed", str(e)))
        return report
    report.origin, report.size, report.root = cp.origin, cp.size, cp.root.hex()
    logs = [v for v in trusted.logs if v.name == cp.origin]
    try:
        good = verify_signatures(parsed.text, parsed.signatures, logs)
    except NoteError as e:
        good = []
        vio.append(Violation("checkpoint-signature", str(e), values={"origin": cp.origin}))
    if not good and not vio:
        vio.append(
            Violation(
                "checkpoint-signature",
                f"no trusted log key of {cp.origin} signed the checkpoint",
                values={"origin": cp.origin},
            )
        )
    prev_cp = _previous(previous, cp, logs, vio)
    # 2-4. the entries, streamed once. The Merkle fold is merkle.RootAccumulator's, inlined:
    # per entry it is one leaf hash and on average one node hash.
    peaks: list[bytes] = []  # roots of the perfect subtrees on the right edge, largest first
    size = 0
    prev_size = prev_cp.size if prev_cp is not None else -1
    prev_root = _fold(peaks) if prev_size == 0 else None
    rules = RuleChecker(report, keep_rounds)
    feed = rules.feed
    actors = trusted.actor_keys()
    kinds = report.kinds
    sha256 = hashlib.sha256
    for i, entry in enumerate(entries):
        if i >= cp.size:
            vio.append(
                Violation(
                    "tree-size",
                    f"more entries than the checkpoint's {cp.size}",
                    i,
                    {"checkpoint_size": cp.size},
                )
            )
            break
        peaks.append(sha256(b"\x00" + entry).digest())  # RFC 9162 2.1.1 leaf hash
        size += 1
        n = size
        while not n & 1:  # each trailing zero bit of the new size closes a subtree
            right = peaks.pop()
            peaks[-1] = sha256(b"\x01" + peaks[-1] + right).digest()
            n >>= 1
        if size == prev_size:
            prev_root = _fold(peaks)
        try:
            f, _, _, _, t = check_entry(entry, actors)
        except EventSignatureError as e:
            rule = "actor-untrusted" if "not a trusted key" in str(e) else "entry-signature"
            vio.append(Violation(rule, str(e), i))
            continue
        except EventError as e:
            vio.append(Violation("entry-malformed", str(e), i))
            continue
        kind = f["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
        feed(i, f, t)
        if len(vio) >= max_violations:
            break
    report.entries_checked = size
    root = _fold(peaks)
    if size < cp.size and len(vio) < max_violations:
        vio.append(
            Violation(
                "tree-size",
                f"the checkpoint covers {cp.size} entries but there are {size}",
                size,
                {"checkpoint_size": cp.size, "entries": size},
            )
        )
    elif size == cp.size and root != cp.root:
        vio.append(
            Violation(
                "tree-root",
                "the entries' Merkle root differs from the signed checkpoint's",
                None,
                {"computed": root.hex(), "checkpoint": cp.root.hex()},
            )
        )
    # 5. witnesses
    _witnesses(report, cp, parsed, cosignatures, trusted, quorum)
    # 6. the previous checkpoint
    if prev_cp is not None and prev_root is not None and prev_root != prev_cp.root:
        vio.append(
            Violation(
                "fork",
                f"the tree at size {prev_cp.size} differs from the checkpoint kept from last time",
                None,
                {"size": prev_cp.size, "kept": prev_cp.root.hex(), "now": prev_root.hex()},
            )
        )
    return report


def _fold(peaks: list[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH from the right-edge subtree roots, as RootAccumulator.root."""
    if not peaks:
        return EMPTY_ROOT
    h = peaks[-1]
    for left in reversed(peaks[:-1]):
        h = node_hash(left, h)
    return h


def _previous(
    previous: bytes | None, cp: Checkpoint, logs: list[Verifier], vio: list[Violation]
) -> Checkpoint | None:
    if previous is None:
        return None
    try:
        pnote = parse_note(previous)
        prev = parse_checkpoint(pnote.text)
        if prev.origin != cp.origin:
            raise NoteError(f"it is a checkpoint of {prev.origin}, not of {cp.origin}")
        if not verify_signatures(pnote.text, pnote.signatures, logs):
            raise NoteError(f"not signed by a trusted key of {cp.origin}")
    except NoteError as e:
        vio.append(Violation("previous-checkpoint", f"previous checkpoint: {e}"))
        return None
    if prev.size > cp.size:
        vio.append(
            Violation(
                "rollback",
                f"the log shrank from {prev.size} to {cp.size} entries",
                None,
                {"previous": prev.size, "now": cp.size},
            )
        )
        return None
    if prev.size == cp.size and prev.root != cp.root:
        vio.append(
            Violation(
                "fork",
                f"two checkpoints of size {cp.size} with different roots",
                None,
                {"kept": prev.root.hex(), "now": cp.root.hex()},
            )
        )
        return None
    return prev


def _witnesses(report, cp, parsed, cosignatures, trusted, quorum) -> None:
    try:
        extra = parse_signature_lines(cosignatures) if cosignatures else []
    except NoteError as e:
        report.violations.append(Violation("witness-signature", f"cosignatures: {e}"))
        extra = []
    sigs = [s for s in parsed.signatures if s.name != cp.origin] + extra
    try:
        good = verify_signatures(parsed.text, sigs, trusted.witnesses)
    except NoteError as e:
        report.violations.append(Violation("witness-signature", str(e)))
        good = []
    report.witnesses = sorted({s.name for s in good})
    if len(report.witnesses) < quorum:
        report.violations.append(
            Violation(
                "witness-quorum",
                f"{len(report.witnesses)} trusted witnesses cosigned the "
                f"checkpoint, {quorum} needed",
                None,
                {"witnesses": report.witnesses, "quorum": quorum},
            )
        )
