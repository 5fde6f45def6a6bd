"""Audit events: the entries of every log, RFC 8785 canonical JSON signed by their actor.

An entry is one JSON object, serialized with RFC 8785 (JSON Canonicalization
Scheme), that always carries these members::

    v            1 (the event format version)
    kind         one of KINDS
    actor        {"name": NAME, "key": BASE64(raw Ed25519 public key, 32 bytes)}
    time         RFC 3339 UTC, "Z" suffix (e.g. "2026-11-25T14:51:35Z")
    dataset_id   str or null
    fingerprint  hex dataset fingerprint, or null
    contract_id  str or null
    purpose      str or null
    sig          BASE64(Ed25519 signature, 64 bytes)

plus the kind's *details*, as further top-level members (names: lower-case
ASCII letters, digits and ``_``). What each kind carries (the contract between
the areas that write events and :mod:`dataspace.audit.verify`, which checks them):

=================  ================================================================
dataset.enrolled   dataset_id, fingerprint; episodes, frames, format, license
dataset.ranges     dataset_id, fingerprint; ranges (the feature ranges the holder now
                   declares, {feature: {name: [lo, hi]}}, or null: cleared), previous
                   (the declaration it replaces, or null): logged before the catalog
                   entry changes (dataspace.connectors.metadata.set_declared_ranges)
policy.published   dataset_id, fingerprint; epsilon, delta (the dataset's total
                   privacy budget), purposes (list), policy (ODRL JSON-LD or its hash)
contract.agreed    contract_id, dataset_id, fingerprint, purpose; consumer (BASE64
                   public key, or {"name", "key"}), template, epsilon, delta, rounds,
                   until (RFC 3339)
round.started      contract_id, dataset_id, fingerprint, purpose; run_id, round,
                   epsilon (charged against the budget by this round); consumer optional;
                   release ("stats": round 0, "round"), releases (the mechanism as the
                   accountant's [[noise, sample_rate, steps], ...]), contract_epsilon
                   (the contract's epsilon over all it released, this included),
                   mechanism (readable parameters), noise ("csprng" or "seeded"),
                   secure_aggregation
round.finished     contract_id, dataset_id, fingerprint, purpose; run_id, round,
                   model_sha256 (what left), epsilon (spent, as accounted)
round.evaluated    contract_id, dataset_id, fingerprint, purpose; run_id, round,
                   model_sha256 (the model evaluated): the round's one evaluation
quality.reported   dataset_id, fingerprint; score, report_sha256
access.refused     contract_id and dataset_id when known; reason, consumer
key.rotated        new_key (BASE64), new_name
catalog.published  (hub) dataset_id, fingerprint; holder (BASE64), quality_score
catalog.withdrawn  (hub) dataset_id; holder (BASE64)
contract.registered (hub) contract_id, dataset_id, fingerprint, purpose; holder, consumer,
                   epsilon, state (a copy of what the holder's connector agreed)
run.registered     (hub) run_id, consumer, contracts (list of contract ids)
round.registered   (hub) run_id, round, loss, epsilon_per_dataset, contributions: claims of
                   claimed_by (the key that posted them), unchecked by the hub; the
                   sites' round.started say what each charged (audit cross-check)
run.finished       (hub) run_id, consumer, contracts (list of contract ids), status
                   ("finished" or "stopped"), rounds (training rounds completed),
                   model_sha256 (SHA-256 of the released model file: the last completed
                   round's rounds/NNN/global.npz in the hub's run directory; null if none)
                   (site) the same, once the hub logged it: run_id, contract_id,
                   dataset_id, status, rounds (the rounds this site trained in the run),
                   model_sha256 and hub_log_index (the hub's run.finished entry), hub
                   (the hub's key, BASE64): the site's own record that its rounds went
                   into that model, which ``dataspace audit show`` links to the model
budget.reported    a site's signed budget statement, never a log entry: the connector
                   sends it to the hub (``POST /v1/budget``), which keeps the latest per
                   dataset (dataspace.policy.budget_statement: the fields)
=================  ================================================================

What is signed: the RFC 8785 canonical JSON of the event object *without* its
``sig`` member, i.e. exactly the entry's bytes with the ``,"sig":"..."`` member
removed. The signing key must be the one named in ``actor.key``. The same
Ed25519 key also signs checkpoint notes (text ending in a newline) and
cosignatures (starting ``cosignature/v1``); a canonical JSON object starts with
``{`` and ends with ``}``, so none of the three messages can be taken for another.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dataspace.errors import DataspaceError

VERSION = 1
KINDS = (
    "dataset.enrolled",
    "dataset.ranges",
    "policy.published",
    "contract.agreed",
    "round.started",
    "round.finished",
    "round.evaluated",
    "quality.reported",
    "access.refused",
    "key.rotated",
    # the hub's own log (dataspace.hub.app; added by the services helper)
    "catalog.published",
    "catalog.withdrawn",
    "contract.registered",
    "run.registered",
    "round.registered",
    "run.finished",
    # a site's signed budget statement (sent to the hub, kept there; not a log entry)
    "budget.reported",
)
#: members every event has (besides the kind's details)
STANDARD = ("v", "kind", "actor", "time", "dataset_id", "fingerprint", "contract_id", "purpose")
RESERVED = frozenset((*STANDARD, "sig"))
_DETAIL_NAME = re.compile(r"[a-z][a-z0-9_]*")


class EventError(DataspaceError):
    """An entry that is not a well-formed event."""


class EventSignatureError(EventError):
    """An event whose signature does not verify under its actor's key."""


class UntrustedActorError(EventSignatureError):
    """An event signed by an actor whose key is not among the trusted ones (rule
    ``actor-untrusted``)."""


@dataclass(slots=True)
class Event:
    """A parsed event. ``fields`` holds every member (details included) but ``sig``."""

    kind: str
    actor_name: str
    actor_key: bytes
    time: datetime
    dataset_id: str | None
    fingerprint: str | None
    contract_id: str | None
    purpose: str | None
    sig: bytes
    fields: dict[str, Any] = field(repr=False)

    @property
    def actor_key_b64(self) -> str:
        return base64.b64encode(self.actor_key).decode()

    @property
    def details(self) -> dict[str, Any]:
        return {k: v for k, v in self.fields.items() if k not in RESERVED}

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def format_time(t: datetime | str | None = None) -> str:
    """RFC 3339 in UTC with a ``Z``; microseconds only when present."""
    if t is None:
        t = datetime.now(UTC)
    if isinstance(t, str):
        t = parse_time(t)
    if t.tzinfo is None:
        raise EventError(f"time {t!r} has no timezone; events need UTC")
    t = t.astimezone(UTC)
    spec = "microseconds" if t.microsecond else "seconds"
    return t.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def plain(v: Any) -> Any:
    """``v`` as an event carries it: datetimes as RFC 3339 UTC strings, tuples as lists.

    The one rule for every detail of every event, so callers pass what they have.
    """
    if isinstance(v, datetime):
        return format_time(v)
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def parse_time(s: str) -> datetime:
    """Parse RFC 3339 (``Z`` or an offset); the result is timezone-aware."""
    try:
        t = datetime.fromisoformat(s)
    except (ValueError, TypeError, AttributeError) as e:
        raise EventError(f"time {s!r} is not RFC 3339: {e}") from e
    if t.tzinfo is None:
        raise EventError(f"time {s!r} has no timezone offset")
    return t


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _actor_name(actor: Any) -> str:
    name = actor if isinstance(actor, str) else getattr(actor, "name", None)
    if not isinstance(name, str) or not name:
        raise EventError(f"actor {actor!r} has no name")
    return name


def make_event(
    kind: str,
    key: Ed25519PrivateKey,
    actor: Any,
    *,
    dataset_id: str | None = None,
    fingerprint: str | None = None,
    contract_id: str | None = None,
    purpose: str | None = None,
    time: datetime | str | None = None,
    **details: Any,
) -> bytes:
    """Build and sign an event; returns the entry bytes (RFC 8785 canonical JSON).

    ``actor`` is the actor's name or anything with a ``name`` (an Identity); the
    key in the event is always ``key``'s public key, so it cannot disagree.
    """
    if kind not in KINDS:
        raise EventError(f"unknown event kind {kind!r} (expected one of {', '.join(KINDS)})")
    for name in details:
        if name in RESERVED or not _DETAIL_NAME.fullmatch(name):
            raise EventError(f"event detail name {name!r} is reserved or not [a-z][a-z0-9_]*")
    pub = _raw_public(key)
    if not isinstance(actor, str) and getattr(actor, "public_key", pub) != pub:
        raise EventError(f"actor {_actor_name(actor)}'s public key is not the signing key")
    obj: dict[str, Any] = {
        "v": VERSION,
        "kind": kind,
        "actor": {"name": _actor_name(actor), "key": base64.b64encode(pub).decode()},
        "time": format_time(time),
        "dataset_id": dataset_id,
        "fingerprint": fingerprint,
        "contract_id": contract_id,
        "purpose": purpose,
        **{name: plain(value) for name, value in details.items()},
    }
    try:
        message = rfc8785.dumps(obj)
    except Exception as e:  # rfc8785 raises its own error types for NaN, big ints, ...
        raise EventError(f"event {kind} cannot be canonicalized: {e}") from e
    sig = base64.b64encode(key.sign(message)).decode()
    return _with_sig(message, sorted(obj), sig)


def _with_sig(message: bytes, keys: list[str], sig_b64: str) -> bytes:
    """Insert the ``sig`` member at its RFC 8785 place (keys sorted) in the canonical bytes."""
    after = next((k for k in keys if k > "sig"), None)
    member = b'"sig":"' + sig_b64.encode() + b'"'
    if after is None:
        return message[:-1] + b"," + member + b"}"
    marker = b',"' + after.encode() + b'":'
    i = message.find(marker)
    if i < 0:
        raise EventError("cannot place the signature member")  # not reached for our events
    return message[:i] + b"," + member + message[i:]


#: json.dumps with these options builds a new encoder per call; keep one
_FAST = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _no_default(o: Any) -> Any:
    raise TypeError(f"{type(o).__name__} is not JSON")  # not reached: values come from JSON


#: the C encoder behind _FAST, called without json.encoder's Python wrappers (markers=None:
#: parsed JSON has no cycles; allow_nan=False: RFC 8785 has no NaN or Infinity)
_C_ENCODE = (
    json.encoder.c_make_encoder(
        None, _no_default, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )
    if json.encoder.c_make_encoder is not None
    else None
)


def _encode(obj: Any) -> str:
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(obj, 0))
    return _FAST.encode(obj)


#: RFC 8785 writes integers as IEEE doubles: beyond this, the rfc8785 package decides (and refuses)
_SAFE_INT = 2**53


def _plain_numbers(value: dict[str, Any] | list[Any]) -> bool:
    """No number in ``value`` that Python and RFC 8785 (ES6 number form) may write differently.

    Python writes floats in their shortest repr, as ES6 does, but with an exponent
    from 1e16 and below 1e-4 (ES6: 1e21 and 1e-7), and integral floats as ``1.0``
    (ES6: ``1``; ``-0.0``: ``0``). Integers are exact in both within 2**53.
    """
    for v in value.values() if type(value) is dict else value:
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if not -_SAFE_INT < v < _SAFE_INT:
                return False
        elif t is float:
            r = repr(v)
            if "e" in r or r.endswith(".0"):  # (inf and nan never get here: see _encode)
                return False
        elif not _plain_numbers(v):
            return False
    return True


_JSON = json.JSONDecoder()
#: the plain C scanner (no Python hooks): json.loads without its wrappers
_SCAN = _JSON.scan_once


def _canonical_exact(entry: bytes, obj: Any) -> bool:
    try:
        return rfc8785.dumps(obj) == entry
    except Exception:
        return False


def _canonical_text(text: str, entry: bytes, obj: Any) -> bool:
    """RFC 8785: ``entry`` (decoded to ``text``) is the canonical serialization of ``obj``,
    decided with one C encoder call where that is exact.

    The fast answer is exact: for ASCII text (no UTF-16 key-order or escaping question)
    whose numbers are all plain (:func:`_plain_numbers`), RFC 8785 and Python's compact
    sorted encoder write the same bytes (strings: both escape exactly ``"``, ``\\`` and
    the controls, in the same forms; integers within 2**53; floats in Python's shortest
    repr when it has no exponent and no ``.0``, which is ES6's form in that range).
    Otherwise rfc8785 decides.
    """
    if text.isascii():
        try:
            same = _encode(obj) == text
        except (ValueError, RecursionError):  # NaN / Infinity (allow_nan=False) are not JSON
            same = False
        if same and _plain_numbers(obj):
            return True
    return _canonical_exact(entry, obj)


def _loads(entry: bytes) -> dict[str, Any]:
    """Parse an entry that must be one JSON object."""
    try:
        obj = _JSON.decode(entry.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise EventError(f"entry is not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise EventError("entry is not a JSON object")
    return obj


def parse_event(entry: bytes) -> Event:
    """Parse an entry into an :class:`Event`; checks the structure, not the signature."""
    return _event(_loads(entry))


_KEY_B64: dict[str, bytes] = {}


def _b64_key(s: str) -> bytes:
    """Actor keys repeat across a log: decode each once."""
    raw = _KEY_B64.get(s)
    if raw is None:
        raw = base64.b64decode(s, validate=True)
        if len(_KEY_B64) < 4096:
            _KEY_B64[s] = raw
    return raw


def _event(obj: dict[str, Any]) -> Event:
    """An Event from a parsed entry (``sig`` is moved out of ``obj``, which becomes ``fields``)."""
    sig_b64 = obj.pop("sig", None)
    name, key, sig, t = _checked(obj, sig_b64)
    return Event(
        obj["kind"],
        name,
        key,
        t,
        obj["dataset_id"],
        obj["fingerprint"],
        obj["contract_id"],
        obj["purpose"],
        sig,
        obj,
    )


_KINDS = frozenset(KINDS)
_OPTIONAL_STR = ("dataset_id", "fingerprint", "contract_id", "purpose")


def _checked(obj: dict[str, Any], sig_b64: Any) -> tuple[str, bytes, bytes, datetime]:
    """The structure every event has (module docstring): actor name, raw key, sig, time."""
    try:
        if obj.get("v") != VERSION or type(obj.get("v")) is not int:
            raise EventError(f"event version {obj.get('v')!r} is not {VERSION}")
        kind = obj["kind"]
        if type(kind) is not str or kind not in _KINDS:
            raise EventError(f"unknown event kind {kind!r}")
        actor = obj["actor"]
        name, key = actor["name"], _b64_key(actor["key"])
        if sig_b64 is None:
            raise KeyError("sig")
        sig = binascii.a2b_base64(sig_b64, strict_mode=True)
        if type(name) is not str or len(key) != 32 or len(sig) != 64:
            raise EventError("actor name, key (32 bytes) or sig (64 bytes) malformed")
        for f in _OPTIONAL_STR:
            v = obj[f]
            if v is not None and type(v) is not str:
                raise EventError(f"{f} must be a string or null")
        return name, key, sig, parse_time(obj["time"])
    except (KeyError, TypeError, binascii.Error, ValueError) as e:
        if isinstance(e, EventError):
            raise
        raise EventError(f"malformed event: {type(e).__name__}: {e}") from e


def signed_message(entry: bytes, sig_b64: str) -> bytes:
    """The bytes the actor signed: the entry without its ``,"sig":"..."`` member."""
    member = b',"sig":"' + sig_b64.encode() + b'"'
    i = entry.rfind(member)
    if i < 0 or entry.count(member) != 1:
        raise EventError("entry's sig member is missing or ambiguous")
    return entry[:i] + entry[i + len(member) :]


_KEYS: dict[bytes, Ed25519PublicKey] = {}


def _public_key(raw: bytes) -> Ed25519PublicKey:
    """Parsed public keys, cached: a log has few actors and many entries."""
    k = _KEYS.get(raw)
    if k is None:
        if len(_KEYS) > 4096:
            _KEYS.clear()
        k = _KEYS[raw] = Ed25519PublicKey.from_public_bytes(raw)
    return k


def check_entry(
    entry: bytes, trusted_keys: frozenset[bytes] | set[bytes] | None = None
) -> tuple[dict[str, Any], str, bytes, bytes, datetime]:
    """Every check of :func:`verify_event`, without building an :class:`Event`.

    One C parse of the entry drives both the canonical-form check (one C encoder
    call compared with the text) and the fields. Returns ``(fields, actor name,
    actor key, signature, time)``; ``fields`` is the parsed entry without ``sig``.
    Raises :class:`EventError`, :class:`EventSignatureError`, and
    :class:`UntrustedActorError` for an actor not in ``trusted_keys``.
    """
    try:
        text = entry.decode()
    except UnicodeDecodeError as e:
        raise EventError(f"entry is not JSON: {e}") from e
    try:
        obj, end = _SCAN(text, 0)
    except (StopIteration, json.JSONDecodeError, RecursionError):
        obj, end = None, -1
    if end != len(text):  # not one JSON value: json.loads names the error (or the whitespace)
        obj = _loads(entry)
    if type(obj) is not dict:
        raise EventError("entry is not a JSON object")
    if not _canonical_text(text, entry, obj):
        raise EventError("entry is not RFC 8785 canonical JSON")
    sig_b64 = obj.pop("sig", None)
    name, key, sig, t = _checked(obj, sig_b64)
    if trusted_keys is not None and key not in trusted_keys:
        raise UntrustedActorError(
            f"actor {name} ({base64.b64encode(key).decode()}) is not a trusted key"
        )
    message = signed_message(entry, sig_b64)
    pk = _KEYS.get(key) or _public_key(key)
    try:
        pk.verify(sig, message)
    except InvalidSignature as e:
        raise EventSignatureError(
            f"{obj['kind']} by {name}: signature does not verify under the actor's key"
        ) from e
    return obj, name, key, sig, t


def verify_event(entry: bytes, trusted_keys: frozenset[bytes] | set[bytes] | None = None) -> Event:
    """Parse ``entry`` and check that it is canonical and signed by its actor's key.

    With ``trusted_keys`` (raw public keys) the actor must be one of them.
    Raises :class:`EventError` / :class:`EventSignatureError`.
    """
    f, name, key, sig, t = check_entry(entry, trusted_keys)
    return Event(
        f["kind"],
        name,
        key,
        t,
        f["dataset_id"],
        f["fingerprint"],
        f["contract_id"],
        f["purpose"],
        sig,
        f,
    )
