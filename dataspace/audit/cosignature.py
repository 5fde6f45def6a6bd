"""C2SP tlog-cosignature v1 (https://c2sp.org/tlog-cosignature) with Ed25519.

A witness's cosignature is a signed-note signature line whose key ID is
SHA-256(name || 0x0A || 0x04 || pub32)[:4] and whose signature field is the
8-byte big-endian UNIX time followed by the 64-byte Ed25519 signature of
``cosignature/v1\\ntime T\\n`` + the whole checkpoint body. It says: this is the
largest tree consistent with everything I saw, as of that time.
"""

from __future__ import annotations

import time as _time
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit.note import (
    ALG_COSIGNATURE_V1,
    NoteError,
    Signature,
    Signer,
    Verifier,
    raw_public,
    verify_signatures,
    vkey_text,
)


def cosigner(name: str, key: Ed25519PrivateKey) -> Signer:
    return Signer(name, key, ALG_COSIGNATURE_V1)


def witness_verifier(name: str, public_key: bytes) -> Verifier:
    return Verifier(name, public_key, ALG_COSIGNATURE_V1)


def witness_vkey(name: str, key: Ed25519PrivateKey | bytes) -> str:
    """The vkey text of a witness key (type byte 0x04)."""
    pub = key if isinstance(key, bytes) else raw_public(key)
    return vkey_text(name, pub, ALG_COSIGNATURE_V1)


def cosign(body: bytes, signer: Signer, timestamp: int | None = None) -> Signature:
    """tlog-cosignature "Signed message": cosign a checkpoint body at ``timestamp``."""
    if signer.alg != ALG_COSIGNATURE_V1:
        raise NoteError("a cosignature needs a type 0x04 (cosignature/v1) key")
    return signer.sign(body, int(_time.time()) if timestamp is None else timestamp)


@dataclass(frozen=True)
class Cosignature:
    name: str
    timestamp: int


def verified_witnesses(
    body: bytes, signatures: Iterable[Signature], witnesses: Iterable[Verifier]
) -> list[Cosignature]:
    """The distinct trusted witnesses whose cosignatures of ``body`` verify.

    A cosignature by a known witness that fails raises
    :class:`dataspace.audit.note.UnverifiedNoteError` (signed-note rule).
    """
    ws = [w for w in witnesses if w.alg == ALG_COSIGNATURE_V1]
    good = verify_signatures(body, signatures, ws)
    seen: dict[str, Cosignature] = {}
    for s in good:
        seen.setdefault(s.name, Cosignature(s.name, int.from_bytes(s.sig[:8], "big")))
    return list(seen.values())
