"""A service's witness key: its own key, apart from the log key, endorsed by its identity.

signed-note, "Verifier keys": "The same public key SHOULD NOT be reused for different
signature types"; tlog-cosignature, "Ed25519 signed message": the message does not
commit to the cosigner's name, so one key must not serve two cosigners. A service
therefore signs its log's checkpoints (type 0x01) with its log key and cosigns other
logs' checkpoints (type 0x04) with a witness key of its own, made on first start and
kept next to the log key (``SITE/witness.key``, ``DATA/witness.key``, 0600), its vkey
beside it (``witness.vkey``, what an auditor lists as ``witness FILE``).

Services that cosigned with their identity key before keep those cosignatures: each
names its key by key ID (``SHA-256(name || 0x0A || 0x04 || key)[:4]``), so the old
and the new witness key coexist under one name. An auditor lists both (the old one,
``witness SITE/site.key.pub``, for the checkpoints cosigned before; ``witness
SITE/witness.vkey`` for those after); quorums count witnesses by name, not by key.

A log learns a peer's witness key from the peer itself, checked against the identity
key it already trusts for that peer (the hub's registry, the hub's catalog):
``GET <witness prefix>/witness-key`` answers an :func:`endorse` text, the witness
vkey (and the peer's log vkey) signed by the identity key under a fixed header, so
the signature means nothing else (not an event, not a request, not a note).

Log origins (C2SP tlog-checkpoint: "a schema-less URL containing neither Unicode spaces
nor plus"). A log made from now on is named :func:`log_origin`:
``dataspace.invalid/site/HEX`` for a site log, ``dataspace.invalid/hub/HEX`` for a hub's,
HEX the first 16 bytes of SHA-256 of the log's public key (lowercase hex). Why so:

* the origin is fixed when the log is made (``dataspace site create``, a hub's first
  start), before any service URL is known, and it never changes, while a
  ``--public-url`` moves with hosts and ports; the key does not;
* it is self-certifying: anyone who knows a log's key computes its origin, so a witness
  that trusts a service by (name, identity key) trusts that service's new log without
  being told its origin (a site with no connector URL announces nothing and is still
  witnessed), and an origin derived from one key cannot be claimed for another
  (:func:`bound_origin`): no first-come pinning, no squatting another's origin;
* ``.invalid`` (RFC 2606) never resolves: nobody takes it for an endpoint (the spec:
  clients MUST NOT assume it is one), and it collides with no real domain's logs;
* it is not secret: the public key is public already.

Logs made before keep their origin (the holder's name, the hub's name). A witness
trusts, per service known by (name, identity key), one log origin per key: the one it
has cosigned before, else the one the service endorses (the ``log`` line, checked by
:func:`check_endorsement`: the service's own name or an origin bound to the endorsed
key), else both the old and the new form until the first is cosigned
(:func:`dataspace.audit.witnessing.service_logs`). So a log that was witnessed under its
old origin cannot start a second, fresh history under the new one, nor the other way.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dataspace.audit.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    NoteError,
    Verifier,
    parse_vkey,
    raw_public,
)
from dataspace.audit.storage import atomic_write
from dataspace.errors import DataspaceError

#: where a service keeps its witness key and its vkey (next to its log key)
WITNESS_KEY = "witness.key"
WITNESS_VKEY = "witness.vkey"
#: the first line of an endorsement: what the identity key's signature is about
HEADER = b"dataspace/witness-key/v1"
#: longest endorsement read (two vkeys and a signature fit in far less)
MAX_ENDORSEMENT = 4096
#: the host of every new log's origin (RFC 2606: never resolves)
ORIGIN_HOST = "dataspace.invalid"
#: what a log is of, the path's first segment
ORIGIN_KINDS = ("site", "hub")
#: bytes of SHA-256(log public key) in a new origin (hex: twice as many characters)
ORIGIN_HASH_BYTES = 16
#: longest origin (or key name) accepted in an endorsement
MAX_ORIGIN = 255
#: printable ASCII without space and "+": what an origin read from a peer may hold
_ORIGIN_CHARS = re.compile(r"[!-*,-~]+")


class WitnessKeyError(DataspaceError):
    """A witness key that cannot be used: unreadable, the log's own, or not endorsed."""


def load_or_create_witness_key(directory: Path | str, name: str) -> Ed25519PrivateKey:
    """``DIR/witness.key`` (made on first call, 0600, created atomically: two processes
    starting at once end up with the same key) and ``DIR/witness.vkey`` beside it."""
    directory = Path(directory)
    path = directory / WITNESS_KEY
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = directory / f".{WITNESS_KEY}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first: theirs
            os.link(tmp, path)
        tmp.unlink(missing_ok=True)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise WitnessKeyError(f"{path}: not a readable PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise WitnessKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    vkey = (witness_vkey_text(name, key) + "\n").encode()
    vpath = directory / WITNESS_VKEY
    try:
        stale = vpath.read_bytes() != vkey
    except FileNotFoundError:
        stale = True
    if stale:
        atomic_write(vpath, vkey)
    return key


def witness_vkey_text(name: str, key: Ed25519PrivateKey | bytes) -> str:
    """tlog-cosignature: the vkey of a witness key, signature type 0x04."""
    pub = key if isinstance(key, bytes) else raw_public(key)
    return Verifier(name, pub, ALG_COSIGNATURE_V1).vkey()


def log_origin(kind: str, public_key: bytes) -> str:
    """The origin of a new log of ``kind`` ("site" or "hub") signed by ``public_key``:
    ``dataspace.invalid/KIND/HEX(SHA-256(public_key)[:16])`` (see the module docstring)."""
    if kind not in ORIGIN_KINDS or len(public_key) != 32:
        raise WitnessKeyError(f"no log origin for a {kind!r} log of a {len(public_key)}-byte key")
    digest = hashlib.sha256(public_key).hexdigest()[: 2 * ORIGIN_HASH_BYTES]
    return f"{ORIGIN_HOST}/{kind}/{digest}"


def bound_origin(origin: str, public_key: bytes, kinds: tuple[str, ...] = ORIGIN_KINDS) -> bool:
    """Whether ``origin`` is the :func:`log_origin` of ``public_key`` (for one of ``kinds``)."""
    return len(public_key) == 32 and any(origin == log_origin(k, public_key) for k in kinds)


def check_origin_text(origin: str) -> str:
    """An origin (or key name) read from a peer: non-empty, printable ASCII, no space, no
    "+", at most :data:`MAX_ORIGIN` characters; raises :class:`WitnessKeyError`."""
    if not isinstance(origin, str) or len(origin) > MAX_ORIGIN:
        raise WitnessKeyError("log origin is not a string of at most 255 characters")
    if not _ORIGIN_CHARS.fullmatch(origin):
        raise WitnessKeyError(f"log origin {origin[:60]!r} is not printable ASCII without spaces")
    return origin


def check_distinct(witness_key: Ed25519PrivateKey, log_keys: list[bytes]) -> None:
    """Raise :class:`WitnessKeyError` when the witness key is one of the log keys
    (signed-note: a key is not reused across signature types)."""
    if raw_public(witness_key) in log_keys:
        raise WitnessKeyError("the witness key is a log key: a witness cosigns with its own key")


@dataclass(frozen=True)
class Endorsement:
    """What an identity key vouches for: its service's witness key and log key."""

    identity: bytes
    witness: Verifier
    log: Verifier | None


def _message(identity: bytes, witness: Verifier, log: Verifier | None) -> bytes:
    lines = [
        HEADER,
        b"identity " + base64.b64encode(identity),
        b"witness " + witness.vkey().encode(),
    ]
    if log is not None:
        lines.append(b"log " + log.vkey().encode())
    return b"\n".join(lines) + b"\n"


def endorse(identity_key: Ed25519PrivateKey, witness: Verifier, log: Verifier | None) -> bytes:
    """The text ``GET .../witness-key`` answers: the header, ``identity``, ``witness`` and
    ``log`` lines, then ``signature BASE64`` (Ed25519 by the identity key over the lines
    before it)."""
    if witness.alg != ALG_COSIGNATURE_V1 or (log is not None and log.alg != ALG_ED25519):
        raise WitnessKeyError("endorse a 0x04 witness key and a 0x01 log key")
    msg = _message(raw_public(identity_key), witness, log)
    return msg + b"signature " + base64.b64encode(identity_key.sign(msg)) + b"\n"


def check_endorsement(text: bytes, name: str, identity: bytes) -> Endorsement:
    """The witness key (and log key) that ``identity`` endorses in ``text``, for the
    witness named ``name``. Raises :class:`WitnessKeyError` unless the text is an
    endorsement by exactly that identity key, its signature verifies, and its witness key
    is a 0x04 key named ``name`` that is not the identity key itself, and its log key
    (if any) is a 0x01 key whose origin is ``name`` (a log made before URL origins) or
    the :func:`log_origin` of that very key (no service endorses another's origin)."""
    if len(text) > MAX_ENDORSEMENT:
        raise WitnessKeyError(f"witness key endorsement of {len(text)} bytes is too long")
    lines = text.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if len(lines) not in (4, 5) or lines[0] != HEADER or not lines[-1].startswith(b"signature "):
        raise WitnessKeyError("not a witness key endorsement (dataspace/witness-key/v1)")
    fields: dict[bytes, bytes] = {}
    for ln in lines[1:-1]:
        word, _, value = ln.partition(b" ")
        if word not in (b"identity", b"witness", b"log") or word in fields:
            raise WitnessKeyError(f"witness key endorsement: unexpected line {ln[:40]!r}")
        fields[word] = value
    try:
        ident = base64.b64decode(fields.get(b"identity", b""), validate=True)
        sig = base64.b64decode(lines[-1][len(b"signature ") :], validate=True)
        witness = parse_vkey(fields.get(b"witness", b"").decode())
        log = parse_vkey(fields[b"log"].decode()) if b"log" in fields else None
    except (binascii.Error, UnicodeDecodeError, NoteError, ValueError) as e:
        raise WitnessKeyError(f"witness key endorsement: {e}") from e
    if ident != identity:
        raise WitnessKeyError("witness key endorsement is by another identity key")
    if witness.alg != ALG_COSIGNATURE_V1 or witness.name != name:
        raise WitnessKeyError(f"endorsed witness key is not a 0x04 key named {name!r}")
    if witness.public_key == identity:
        raise WitnessKeyError("endorsed witness key is the identity key itself")
    if log is not None and log.alg != ALG_ED25519:
        raise WitnessKeyError("endorsed log key is not a 0x01 key")
    if log is not None:
        check_origin_text(log.name)
        if log.name != name and not bound_origin(log.name, log.public_key):
            raise WitnessKeyError(
                f"endorsed log origin {log.name[:60]!r} is neither {name!r} nor the "
                "origin of the endorsed log key"
            )
    signed = text[: text.rindex(b"\nsignature ") + 1]
    if signed != _message(ident, witness, log):  # one encoding: what is signed is what is read
        raise WitnessKeyError("witness key endorsement is not in its canonical form")
    try:
        Ed25519PublicKey.from_public_bytes(identity).verify(sig, signed)
    except (InvalidSignature, ValueError) as e:
        raise WitnessKeyError("witness key endorsement does not verify") from e
    return Endorsement(identity, witness, log)
