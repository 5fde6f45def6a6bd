"""Contracts: a consumer's request, accepted by the holder's connector and signed by both.

The flow (docs/odrl-profile.md, "Contracts"):

1. The consumer sends an :class:`OfferRequest`. The holder's connector
   evaluates the dataset's policy (:func:`dataspace.policy.evaluate.evaluate`)
   against it and what the dataset has already committed
   (:func:`request_offer`). A refusal is logged (``access.refused``) and
   raised with the reasons. Otherwise the holder fixes the :class:`Terms`
   (the granted :class:`~dataspace.policy.terms.ContractTerms`, with a new
   contract id, the fingerprint, the delta share, the time) and signs them.
2. The consumer checks the holder's signature and countersigns (:func:`countersign`).
3. The holder checks both signatures and the policy again (the budget may
   have moved meanwhile), stores the contract as ``agreed`` (which reserves
   its epsilon) and logs ``contract.agreed`` (:func:`accept`).

If the policy asks for manual approval, step 1 stores the terms as
``pending`` without signing; the consumer countersigns them; the holder later
:func:`approve`\\s (re-evaluating, then signing: ``agreed``) or :func:`reject`\\s.

Signatures are Ed25519 over the RFC 8785 canonical JSON of the terms
(:meth:`Terms.canonical_bytes`); both parties sign the same bytes, so the
order in which they sign does not matter. :func:`verify_agreement` is what
an auditor runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dataspace.errors import NotFoundError, RefusedError
from dataspace.policy import outbox, store
from dataspace.policy.evaluate import Decision, Request, evaluate
from dataspace.policy.odrl import UsagePolicy, format_datetime, parse_usage_policy
from dataspace.policy.terms import ContractTerms, as_number, as_str, as_time
from dataspace.site import log as events
from dataspace.site.identity import Identity, IdentityKeyError, public_bytes

if TYPE_CHECKING:
    import duckdb

    from dataspace.site.folder import Site

CONTRACT_TYPE = "dataspace/contract/v1"
#: how long a holder-signed offer may wait for the consumer's countersignature
OFFER_TTL = timedelta(minutes=15)
#: tolerated clock difference between parties
CLOCK_SKEW = timedelta(minutes=2)


class ContractError(RefusedError):
    """A contract that does not exist in a usable state, or terms that do not match it."""


class OfferRefusedError(ContractError):
    """The policy does not permit what was asked; ``reasons`` says why."""

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons or (message,)


class BadSignatureError(ContractError):
    """A signature on a contract that is missing or does not verify."""


@dataclass(frozen=True)
class OfferRequest:
    """What a consumer asks of a holder's dataset: the terms it wants."""

    dataset_id: str
    consumer: Identity
    terms: ContractTerms

    def to_json(self) -> dict[str, Any]:
        """The request as sent to a connector service (the terms as flat fields)."""
        return {
            "dataset_id": self.dataset_id,
            **self.terms.to_json(),
            "consumer": self.consumer.to_json(),
        }

    @classmethod
    def from_json(cls, obj: Any) -> OfferRequest:
        """Parse a request body; :class:`ContractError` names the field at fault."""
        if not isinstance(obj, dict):
            raise ContractError("offer request: expected a JSON object")
        want = {"dataset_id", "purpose", "epsilon", "rounds", "until", "consumer"}
        allowed = want | {"template", "action", "delta"}
        missing, extra = sorted(want - set(obj)), sorted(set(obj) - allowed)
        if missing or extra:
            raise ContractError(f"offer request: missing fields {missing}, unknown fields {extra}")
        try:
            return cls(
                dataset_id=as_str(obj["dataset_id"]),
                terms=ContractTerms.from_json(obj),
                consumer=Identity.from_json(obj["consumer"]),
            )
        except (TypeError, ValueError, IdentityKeyError) as e:
            raise ContractError(f"offer request: {e}") from e

    def as_request(self) -> Request:
        """The request as :func:`~dataspace.policy.evaluate.evaluate` reads it."""
        return Request(dataset_id=self.dataset_id, consumer=self.consumer.key_b64, terms=self.terms)

    def fields(self) -> dict[str, Any]:
        """The request as log fields (for access.refused)."""
        return {
            "dataset_id": self.dataset_id,
            "consumer": self.consumer.key_b64,
            "consumer_name": self.consumer.name,
            **self.terms.as_dict(),
        }


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@dataclass(frozen=True, kw_only=True)
class Terms(ContractTerms):
    """The signed content of a contract (DESIGN.md, "Identity, policy, contract, budget"):
    the granted terms, between whom, on which data, made when; one flat JSON object."""

    contract_id: str
    holder: str  # base64 Ed25519 public key
    consumer: str  # base64 Ed25519 public key
    dataset_id: str
    fingerprint: str
    created: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "type": CONTRACT_TYPE,
            "contract_id": self.contract_id,
            "holder": self.holder,
            "consumer": self.consumer,
            "dataset_id": self.dataset_id,
            "fingerprint": self.fingerprint,
            **super().to_json(),
            "created": format_datetime(self.created),
        }

    def canonical_bytes(self) -> bytes:
        """RFC 8785 canonical JSON: the bytes both parties sign."""
        return rfc8785.dumps(self.to_json())

    def as_request(self) -> Request:
        """These terms as a request, to evaluate against the policy in force."""
        return Request(
            dataset_id=self.dataset_id,
            consumer=self.consumer,
            terms=self,
            fingerprint=self.fingerprint,
        )

    @classmethod
    def from_json(cls, obj: Any) -> Terms:
        if not isinstance(obj, dict):
            raise ContractError(f"terms: expected a JSON object, got {type(obj).__name__}")
        if obj.get("type") != CONTRACT_TYPE:
            raise ContractError(f"terms.type: expected {CONTRACT_TYPE!r}, got {obj.get('type')!r}")
        want = set(cls.__dataclass_fields__) | {"type"}
        if set(obj) != want:
            extra, missing = sorted(set(obj) - want), sorted(want - set(obj))
            raise ContractError(f"terms: unexpected fields {extra}, missing fields {missing}")
        try:
            parties = {
                k: as_str(obj[k])
                for k in ("contract_id", "holder", "consumer", "dataset_id", "fingerprint")
            }
            granted = ContractTerms.from_json(obj)
            as_number(obj["delta"])  # signed terms always have a delta
            terms = cls(**granted.as_dict(), **parties, created=as_time(obj["created"]))
        except (TypeError, ValueError) as e:
            raise ContractError(f"terms: {e}") from e
        # Whatever we accept must re-serialise to the same bytes, or signatures break.
        if rfc8785.dumps(terms.to_json()) != rfc8785.dumps(obj):
            raise ContractError("terms: not in canonical form (times must be UTC with 'Z')")
        return terms


def sign_terms(terms: Terms, key: Ed25519PrivateKey) -> str:
    return _b64(key.sign(terms.canonical_bytes()))


def verify_signature(terms: Terms, public_key_b64: str, signature: str | None, who: str) -> None:
    """Check one party's signature; :class:`BadSignatureError` names the party and contract."""
    if not signature:
        raise BadSignatureError(f"contract {terms.contract_id}: no {who} signature")
    try:
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
        pub.verify(base64.b64decode(signature, validate=True), terms.canonical_bytes())
    except (InvalidSignature, ValueError) as e:
        raise BadSignatureError(
            f"contract {terms.contract_id}: the {who} signature does not verify with "
            f"key {public_key_b64}"
        ) from e


@dataclass(frozen=True)
class Agreement:
    """Signed terms in transit between the parties (or as printed by the CLI)."""

    terms: Terms
    state: str  # offered | pending | agreed | rejected | expired | revoked
    holder_signature: str | None = None
    consumer_signature: str | None = None

    @property
    def contract_id(self) -> str:
        return self.terms.contract_id

    def to_json(self) -> dict[str, Any]:
        return {
            "contract_id": self.terms.contract_id,
            "state": self.state,
            "terms": self.terms.to_json(),
            "signatures": {"holder": self.holder_signature, "consumer": self.consumer_signature},
        }

    @classmethod
    def from_json(cls, obj: Any) -> Agreement:
        if not isinstance(obj, dict) or not isinstance(obj.get("signatures"), dict):
            raise ContractError("agreement: expected {contract_id, state, terms, signatures}")
        terms = Terms.from_json(obj.get("terms"))
        if obj.get("contract_id", terms.contract_id) != terms.contract_id:
            raise ContractError("agreement: contract_id differs from the one in its terms")
        sigs = obj["signatures"]
        return cls(
            terms=terms,
            state=str(obj.get("state", "offered")),
            holder_signature=sigs.get("holder"),
            consumer_signature=sigs.get("consumer"),
        )


@dataclass(frozen=True)
class Contract:
    """A contract as the holder's site stores it (``contracts`` table); what it permits,
    with whom, on which data, is its signed ``terms`` (``contract.terms.epsilon``)."""

    terms: Terms
    state: str
    holder: Identity
    consumer: Identity
    holder_signature: str | None
    consumer_signature: str | None
    policy_sha256: str | None
    decided_at: datetime | None
    reason: str | None

    def state_at(self, now: datetime) -> str:
        """The state at ``now``: a pending or agreed contract past its end is expired."""
        if self.state in ("pending", "agreed") and now >= self.terms.until:
            return "expired"
        return self.state

    def is_live(self, now: datetime) -> bool:
        """Agreed, started (created <= now, with clock skew) and not yet ended."""
        return self.state_at(now) == "agreed" and self.terms.created - CLOCK_SKEW <= now

    def agreement(self) -> Agreement:
        return Agreement(self.terms, self.state, self.holder_signature, self.consumer_signature)

    def to_json(self) -> dict[str, Any]:
        d = self.agreement().to_json()
        d["holder_name"] = self.holder.name
        d["consumer_name"] = self.consumer.name
        d["policy_sha256"] = self.policy_sha256
        d["decided_at"] = None if self.decided_at is None else format_datetime(self.decided_at)
        d["reason"] = self.reason
        return d


# --- the holder's side ---------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC)


def _decide(
    con: duckdb.DuckDBPyConnection, request: Request, now: datetime
) -> tuple[Decision, UsagePolicy | None, str | None, str]:
    """Evaluate against the policy in force: (decision, policy, its sha, dataset fingerprint)."""
    ds = store.dataset_ref(con, request.dataset_id)
    request = replace(request, dataset_id=ds.dataset_id)
    row = store.current_policy_row(con, ds.dataset_id)
    if row is None:
        reason = f"dataset {ds.dataset_id} has no usage policy"
        return Decision(False, (reason,)), None, None, ds.fingerprint
    policy = parse_usage_policy(row[1])
    if request.fingerprint is None:
        request = replace(request, fingerprint=ds.fingerprint)
    used = store.committed(con, ds.dataset_id, now).usage
    return evaluate(policy, request, now, used), policy, row[0], ds.fingerprint


def _refuse(
    site: Site, reasons: tuple[str, ...], now: datetime, **fields: Any
) -> OfferRefusedError:
    reason = "; ".join(reasons)
    events.refused(site, reason, time=now, **fields)
    return OfferRefusedError(f"refused: {reason}", reasons)


def request_offer(site: Site, request: OfferRequest, now: datetime | None = None) -> Agreement:
    """The holder evaluates a consumer's request (step 1 of the module docstring).

    Returns a holder-signed offer (``state="offered"``, nothing stored), or,
    when the policy wants manual approval, unsigned terms stored as
    ``pending``. Raises :class:`OfferRefusedError` (logged) otherwise.
    """
    now = _now(now)
    with store.LOCK:
        try:
            with site.db() as con:
                store.ensure_tables(con)
                store.expire_contracts(con, now)
                decision, policy, sha, fingerprint = _decide(con, request.as_request(), now)
                if decision.allowed:
                    g = decision.granted
                    assert g is not None and policy is not None
                    terms = Terms(
                        **(g.terms.as_dict() | {"until": g.terms.until.astimezone(UTC)}),
                        contract_id=str(uuid.uuid4()),
                        holder=site.identity.key_b64,
                        consumer=request.consumer.key_b64,
                        dataset_id=policy.dataset_id,
                        fingerprint=fingerprint,
                        created=now.replace(microsecond=0),
                    )
                    if policy.manual_approval:
                        _insert(con, terms, "pending", site, request.consumer.name, None, None, sha)
                        return Agreement(terms, "pending")
        except NotFoundError as e:
            raise _refuse(site, (str(e),), now, **request.fields()) from e
    if not decision.allowed:
        raise _refuse(site, decision.reasons, now, **request.fields())
    return Agreement(terms, "offered", holder_signature=sign_terms(terms, site.key))


def countersign(agreement: Agreement, consumer_key: Ed25519PrivateKey) -> Agreement:
    """The consumer checks the holder's signature (if any yet) and signs the same terms."""
    t = agreement.terms
    if _b64(public_bytes(consumer_key)) != t.consumer:
        raise BadSignatureError(
            f"contract {t.contract_id}: the terms name consumer {t.consumer}, not this key"
        )
    if agreement.holder_signature is not None:
        verify_signature(t, t.holder, agreement.holder_signature, "holder")
    return replace(agreement, consumer_signature=sign_terms(t, consumer_key))


def accept(
    site: Site, agreement: Agreement, consumer_name: str | None = None, now: datetime | None = None
) -> Contract:
    """The holder receives a countersigned agreement (step 3): store, reserve, log.

    For a pending contract this stores the consumer's signature and leaves it
    pending. Accepting the same agreed contract twice returns it unchanged.
    """
    now = _now(now)
    t = agreement.terms
    fields = {"contract_id": t.contract_id, "dataset_id": t.dataset_id, "consumer": t.consumer}
    outbox.flush(site)  # a retry after a crash completes the entry it left unwritten
    try:
        if t.holder != site.identity.key_b64:
            raise ContractError(
                f"contract {t.contract_id} names holder {t.holder}, "
                f"not this site ({site.identity.key_b64})"
            )
        verify_signature(t, t.consumer, agreement.consumer_signature, "consumer")
        with store.LOCK, site.db() as con:
            store.ensure_tables(con)
            store.expire_contracts(con, now)
            existing = find_contract(con, t.contract_id)
            if existing is not None:
                return _accept_existing(con, site, existing, agreement, now)
            verify_signature(t, t.holder, agreement.holder_signature, "holder")
            if not (t.created - CLOCK_SKEW <= now <= t.created + OFFER_TTL):
                raise ContractError(
                    f"offer {t.contract_id} was made at {format_datetime(t.created)}; offers "
                    f"are open for {OFFER_TTL} (now {format_datetime(now)})"
                )
            decision, _, sha, _ = _decide(con, t.as_request(), now)
            if not decision.allowed:
                raise OfferRefusedError("refused: " + decision.reason, decision.reasons)
            con.execute("BEGIN TRANSACTION")
            _insert(
                con,
                t,
                "agreed",
                site,
                consumer_name,
                agreement.holder_signature,
                agreement.consumer_signature,
                sha,
                decided_at=now,
            )
            contract = _load(con, t.contract_id)
            oid = outbox.stage(con, "contract.agreed", **_agreed_fields(contract, now))
            con.execute("COMMIT")
    except ContractError as e:
        events.refused(site, str(e), time=now, **fields)
        raise
    outbox.publish(site, oid)
    return contract


def _accept_existing(
    con: duckdb.DuckDBPyConnection,
    site: Site,
    contract: Contract,
    agreement: Agreement,
    now: datetime,
) -> Contract:
    cid = contract.terms.contract_id
    if contract.terms != agreement.terms:
        raise ContractError(f"contract {cid} exists with other terms")
    if contract.state == "pending" and contract.consumer_signature is None:
        con.execute(
            "UPDATE contracts SET consumer_signature = ? WHERE contract_id = ?",
            [agreement.consumer_signature, cid],
        )
        return _load(con, cid)
    if contract.consumer_signature == agreement.consumer_signature:
        return contract  # a retried message: same answer, nothing changes
    raise ContractError(f"contract {cid} is already {contract.state}")


def negotiate(
    site: Site,
    request: OfferRequest,
    consumer_key: Ed25519PrivateKey,
    now: datetime | None = None,
) -> Contract:
    """Both sides of the flow on one machine (``contract request --site``)."""
    offer = request_offer(site, request, now)
    signed = countersign(offer, consumer_key)
    return accept(site, signed, consumer_name=request.consumer.name, now=now)


def approve(site: Site, contract_id: str, now: datetime | None = None) -> Contract:
    """The holder approves a pending contract: re-evaluate, sign, reserve, log."""
    now = _now(now)
    outbox.flush(site)
    oid = None
    with store.LOCK, site.db() as con:
        store.ensure_tables(con)
        store.expire_contracts(con, now)
        contract = _load(con, contract_id)
        if contract.state != "pending":
            raise ContractError(f"contract {contract_id} is {contract.state}, not pending")
        if contract.consumer_signature is None:
            raise ContractError(f"contract {contract_id}: the consumer has not countersigned yet")
        t = contract.terms
        verify_signature(t, t.consumer, contract.consumer_signature, "consumer")
        decision, _, sha, _ = _decide(con, contract.terms.as_request(), now)
        if not decision.allowed:
            refusal = OfferRefusedError(
                f"cannot approve contract {contract_id}: {decision.reason}", decision.reasons
            )
        else:
            refusal = None
            con.execute("BEGIN TRANSACTION")
            con.execute(
                "UPDATE contracts SET state = 'agreed', holder_signature = ?, policy_sha256 = ?, "
                "decided_at = ? WHERE contract_id = ?",
                [sign_terms(contract.terms, site.key), sha, store.to_db(now), contract_id],
            )
            contract = _load(con, contract_id)
            oid = outbox.stage(con, "contract.agreed", **_agreed_fields(contract, now))
            con.execute("COMMIT")
    if refusal is not None:
        events.refused(
            site,
            str(refusal),
            time=now,
            contract_id=contract_id,
            dataset_id=contract.terms.dataset_id,
            consumer=contract.consumer.key_b64,
        )
        raise refusal
    if oid is not None:
        outbox.publish(site, oid)
    return contract


def reject(
    site: Site,
    contract_id: str,
    reason: str = "rejected by the holder",
    now: datetime | None = None,
) -> Contract:
    """The holder rejects a pending contract (logged as access.refused)."""
    return _end(site, contract_id, "rejected", ("pending",), reason, _now(now))


def revoke(
    site: Site, contract_id: str, reason: str = "revoked by the holder", now: datetime | None = None
) -> Contract:
    """The holder ends an agreed contract: no more rounds, its unspent reservation is freed."""
    return _end(site, contract_id, "revoked", ("agreed", "pending"), reason, _now(now))


def _end(
    site: Site, contract_id: str, state: str, allowed: tuple[str, ...], reason: str, now: datetime
) -> Contract:
    outbox.flush(site)
    with store.LOCK, site.db() as con:
        store.ensure_tables(con)
        store.expire_contracts(con, now)
        contract = _load(con, contract_id)
        if contract.state not in allowed:
            raise ContractError(f"contract {contract_id} is {contract.state}, cannot be {state}")
        con.execute("BEGIN TRANSACTION")
        con.execute(
            "UPDATE contracts SET state = ?, decided_at = ?, reason = ? WHERE contract_id = ?",
            [state, store.to_db(now), reason, contract_id],
        )
        contract = _load(con, contract_id)
        oid = outbox.stage(
            con,
            "access.refused",
            reason=f"contract {contract_id} {state}: {reason}"[: events.MAX_REASON_CHARS],
            contract_id=contract_id,
            dataset_id=contract.terms.dataset_id,
            consumer=contract.consumer.key_b64,
            # what auditors branch on (rule after-revocation): nothing may leave after it
            contract_state=state,
            time=now,
        )
        con.execute("COMMIT")
    outbox.publish(site, oid)
    return contract


def _agreed_fields(c: Contract, now: datetime) -> dict[str, Any]:
    """The ``contract.agreed`` event of ``c`` (staged in the outbox with the change)."""
    t = c.terms
    return dict(
        contract_id=t.contract_id,
        dataset_id=t.dataset_id,
        fingerprint=t.fingerprint,
        consumer=c.consumer.key_b64,
        **t.as_dict(),
        created=t.created,
        terms_sha256=hashlib.sha256(t.canonical_bytes()).hexdigest(),
        holder_signature=c.holder_signature,
        consumer_signature=c.consumer_signature,
        time=now,
    )


def verify_agreement(agreement: Agreement | Contract) -> None:
    """Check both signatures of an agreed contract (what an auditor runs)."""
    a = agreement.agreement() if isinstance(agreement, Contract) else agreement
    verify_signature(a.terms, a.terms.holder, a.holder_signature, "holder")
    verify_signature(a.terms, a.terms.consumer, a.consumer_signature, "consumer")


# --- storage ---------------------------------------------------------------------

_COLUMNS = (
    "contract_id, dataset_id, fingerprint, holder, holder_name, consumer, consumer_name, action, "
    "purpose, template, epsilon, delta, rounds, until, created, state, terms, holder_signature, "
    "consumer_signature, policy_sha256, decided_at, reason"
)


def _insert(
    con: duckdb.DuckDBPyConnection,
    t: Terms,
    state: str,
    site: Site,
    consumer_name: str | None,
    holder_sig: str | None,
    consumer_sig: str | None,
    policy_sha: str | None,
    decided_at: datetime | None = None,
) -> None:
    con.execute(
        f"INSERT INTO contracts ({_COLUMNS}) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            t.contract_id,
            t.dataset_id,
            t.fingerprint,
            t.holder,
            site.name,
            t.consumer,
            consumer_name,
            t.action,
            t.purpose,
            t.template,
            t.epsilon,
            t.delta,
            t.rounds,
            store.to_db(t.until),
            store.to_db(t.created),
            state,
            json.dumps(t.to_json()),
            holder_sig,
            consumer_sig,
            policy_sha,
            None if decided_at is None else store.to_db(decided_at),
            None,
        ],
    )


def find_contract(con: duckdb.DuckDBPyConnection, contract_id: str) -> Contract | None:
    """The contract stored as ``contract_id`` in the site's database (its stored state), or
    None; for the policy area's own read-decide-write sequences (the ledger's)."""
    row = con.execute(
        f"SELECT {_COLUMNS} FROM contracts WHERE contract_id = ?", [contract_id]
    ).fetchone()
    return None if row is None else _from_row(row)


def _from_row(row: tuple[Any, ...]) -> Contract:
    d = dict(zip(_COLUMNS.split(", "), row, strict=True))
    terms = Terms.from_json(json.loads(d["terms"]))
    return Contract(
        terms=terms,
        state=d["state"],
        holder=Identity(
            name=d["holder_name"] or "holder",
            role="holder",
            public_key=base64.b64decode(d["holder"]),
        ),
        consumer=Identity(
            name=d["consumer_name"] or "consumer",
            role="consumer",
            public_key=base64.b64decode(d["consumer"]),
        ),
        holder_signature=d["holder_signature"],
        consumer_signature=d["consumer_signature"],
        policy_sha256=d["policy_sha256"],
        decided_at=store.from_db(d["decided_at"]),
        reason=d["reason"],
    )


def _load(con: duckdb.DuckDBPyConnection, contract_id: str) -> Contract:
    contract = find_contract(con, contract_id)
    if contract is None:
        raise NotFoundError(f"contract {contract_id} does not exist at this site")
    return contract


def load_contract(site: Site, contract_id: str, now: datetime | None = None) -> Contract:
    """A contract by id, its state as of ``now`` (a contract past its end reads expired)."""
    now = _now(now)
    with site.db() as con:
        store.ensure_tables(con)
        c = _load(con, contract_id)
    return replace(c, state=c.state_at(now))


def list_contracts(
    site: Site,
    consumer: str | Identity | None = None,
    dataset_id: str | None = None,
    now: datetime | None = None,
) -> list[Contract]:
    """Contracts of the site, newest first; only ``consumer``'s (base64 key) when given."""
    now = _now(now)
    key = consumer.key_b64 if isinstance(consumer, Identity) else consumer
    sql = f"SELECT {_COLUMNS} FROM contracts WHERE (? IS NULL OR consumer = ?) "
    sql += "AND (? IS NULL OR dataset_id = ?) ORDER BY created DESC, contract_id"
    with site.db() as con:
        store.ensure_tables(con)
        rows = con.execute(sql, [key, key, dataset_id, dataset_id]).fetchall()
    return [replace(c, state=c.state_at(now)) for c in map(_from_row, rows)]
