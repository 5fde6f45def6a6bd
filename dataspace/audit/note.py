"""C2SP signed-note (https://c2sp.org/signed-note) with Ed25519 keys.

A note is UTF-8 text ending in a newline, then one empty line, then one or more
signature lines ``— NAME BASE64(keyID[4] || signature)``. Verifier keys travel
as text ``NAME+HEX(keyID)+BASE64(type || pub32)``; for Ed25519 the type byte is
0x01 and ``keyID = SHA-256(NAME || 0x0A || 0x01 || pub32)[:4]``.

The signer/verifier pair is generic over the signature type so that C2SP
tlog-cosignature (type 0x04, see :mod:`dataspace.audit.cosignature`) reuses the
same note machinery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dataspace.errors import DataspaceError

#: signed-note "Signatures": the key type byte of an Ed25519 note key
ALG_ED25519 = 0x01
#: tlog-cosignature: the key type byte of an Ed25519 cosignature (timestamped) key
ALG_COSIGNATURE_V1 = 0x04
#: the signature line prefix: U+2014 EM DASH and a space
SIG_PREFIX = "\u2014 ".encode()
#: signed-note: "verifiers MUST accept at least 16 signatures"; we accept this many
MAX_SIGNATURES = 100


class NoteError(DataspaceError):
    """A malformed note, signature line or verifier key."""


class UnverifiedNoteError(NoteError):
    """No trusted key verified the note (or a known key's signature failed)."""


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_key_name(name: str) -> str:
    """signed-note: a key name is non-empty UTF-8 with no Unicode spaces and no plus."""
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"invalid key name {name!r}: empty, or contains a space or '+'")
    return name


def key_id(name: str, alg: int, pub: bytes) -> bytes:
    """signed-note "Signatures": SHA-256(name || 0x0A || type || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + pub).digest()[:4]


def vkey_text(name: str, pub: bytes, alg: int = ALG_ED25519) -> str:
    """signed-note verifier key text: NAME+HEX(keyID)+BASE64(type || pub32)."""
    check_key_name(name)
    kid = key_id(name, alg, pub).hex()
    return f"{name}+{kid}+{base64.b64encode(bytes([alg]) + pub).decode()}"


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, 4-byte key ID, signature bytes (without the ID)."""

    name: str
    key_id: bytes
    sig: bytes

    def line(self) -> bytes:
        b64 = base64.b64encode(self.key_id + self.sig).decode()
        return SIG_PREFIX + f"{self.name} {b64}\n".encode()


@dataclass(frozen=True)
class Verifier:
    """A trusted public key: verifies the signatures of one (name, key ID)."""

    name: str
    public_key: bytes
    alg: int = ALG_ED25519

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public_key)

    def vkey(self) -> str:
        return vkey_text(self.name, self.public_key, self.alg)

    def verify(self, text: bytes, sig: bytes) -> bool:
        """True when ``sig`` (the line's bytes after the key ID) signs ``text``."""
        pub = Ed25519PublicKey.from_public_bytes(self.public_key)
        if self.alg == ALG_ED25519:
            msg, raw = text, sig
        elif self.alg == ALG_COSIGNATURE_V1:
            if len(sig) != 72:
                return False
            # tlog-cosignature: 8-byte big-endian timestamp || Ed25519 signature
            msg = cosignature_message(text, int.from_bytes(sig[:8], "big"))
            raw = sig[8:]
        else:
            return False
        try:
            pub.verify(raw, msg)
        except InvalidSignature:
            return False
        return True


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """tlog-cosignature v1 "Signed message": cosignature/v1, time, then the checkpoint body."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


@dataclass
class Signer:
    """An Ed25519 private key with a key name (the name is the log's origin for a log)."""

    name: str
    key: Ed25519PrivateKey
    alg: int = ALG_ED25519
    public_key: bytes = field(init=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        self.public_key = raw_public(self.key)

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.alg, self.public_key)

    def verifier(self) -> Verifier:
        return Verifier(self.name, self.public_key, self.alg)

    def sign(self, text: bytes, timestamp: int | None = None) -> Signature:
        if self.alg == ALG_ED25519:
            return Signature(self.name, self.key_id, self.key.sign(text))
        if self.alg == ALG_COSIGNATURE_V1:
            if timestamp is None:
                raise NoteError("a cosignature needs a timestamp")
            sig = self.key.sign(cosignature_message(text, timestamp))
            return Signature(self.name, self.key_id, timestamp.to_bytes(8, "big") + sig)
        raise NoteError(f"unsupported signature type {self.alg:#04x}")


def parse_vkey(text: str) -> Verifier:
    """Parse verifier key text NAME+HEX(keyID)+BASE64(type || key); checks the key ID."""
    text = text.strip()
    parts = text.split("+", 2)  # base64 may contain "+"
    if len(parts) != 3:
        raise NoteError(f"malformed verifier key {text!r}: want NAME+KEYID+KEY")
    name, kid_hex, key_b64 = parts
    check_key_name(name)
    try:
        kid = bytes.fromhex(kid_hex)
        raw = base64.b64decode(key_b64, validate=True)
    except (ValueError, binascii.Error) as e:
        raise NoteError(f"malformed verifier key {text!r}: {e}") from e
    if len(kid) != 4 or len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise NoteError(f"verifier key {text!r} is not an Ed25519 (0x01) or cosignature (0x04) key")
    v = Verifier(name, raw[1:], raw[0])
    if v.key_id != kid:
        raise NoteError(f"verifier key {text!r}: key ID {kid_hex} does not match the key")
    return v


@dataclass(frozen=True)
class Note:
    """A parsed note: its text (ending in a newline) and its signature lines, in order."""

    text: bytes
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        return self.text + b"\n" + b"".join(s.line() for s in self.signatures)


def check_text(text: bytes) -> None:
    """signed-note "Note text": UTF-8, ends in a newline, no control characters but newline."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteError(f"note text is not UTF-8: {e}") from e
    if not s.endswith("\n"):
        raise NoteError("note text must end in a newline")
    bad = next((c for c in s if (ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F), None)
    if bad is not None:
        raise NoteError(f"note text contains control character {bad!r}")


def parse_signature_line(line: bytes) -> Signature:
    """One ``— NAME BASE64(keyID || sig)`` line, without its trailing newline."""
    if not line.startswith(SIG_PREFIX):
        raise NoteError(f"malformed signature line {line[:80]!r}: must start with an em dash")
    try:
        rest = line[len(SIG_PREFIX) :].decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteError(f"signature line is not UTF-8: {e}") from e
    name, sep, b64 = rest.partition(" ")
    if not sep or " " in b64:
        raise NoteError(f"malformed signature line {line[:80]!r}")
    check_key_name(name)
    try:
        raw = base64.b64decode(b64, validate=True)
    except binascii.Error as e:
        raise NoteError(f"signature line for {name}: bad base64: {e}") from e
    if len(raw) < 5:
        raise NoteError(f"signature line for {name} is too short ({len(raw)} bytes)")
    return Signature(name, raw[:4], raw[4:])


def parse_signature_lines(block: bytes) -> list[Signature]:
    """A block of signature lines, each ending in a newline (e.g. a cosignatures file)."""
    if not block:
        return []
    if not block.endswith(b"\n"):
        raise NoteError("signature block must end in a newline")
    return [parse_signature_line(ln) for ln in block[:-1].split(b"\n")]


def parse_note(msg: bytes) -> Note:
    """Split a signed note at its last empty line; checks the structure, not the signatures."""
    split = msg.rfind(b"\n\n")
    if split < 0:
        raise NoteError("malformed note: no empty line before the signatures")
    text, block = msg[: split + 1], msg[split + 2 :]
    check_text(text)
    sigs = parse_signature_lines(block)
    if not sigs:
        raise NoteError("malformed note: no signature lines")
    if len(sigs) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(sigs)} signatures, more than {MAX_SIGNATURES}")
    return Note(text, tuple(sigs))


def sign_note(text: bytes, signers: Sequence[Signer], timestamp: int | None = None) -> bytes:
    """Sign ``text`` with every signer; returns the note bytes."""
    check_text(text)
    if not signers:
        raise NoteError("a note needs at least one signer")
    return Note(text, tuple(s.sign(text, timestamp) for s in signers)).to_bytes()


def verify_signatures(
    text: bytes, signatures: Iterable[Signature], verifiers: Iterable[Verifier]
) -> list[Signature]:
    """signed-note verification: unknown (name, key ID) are ignored; a known key whose signature
    fails rejects the note; returns the signatures that verified (possibly none)."""
    known = {(v.name, v.key_id): v for v in verifiers}
    good = []
    for s in signatures:
        v = known.get((s.name, s.key_id))
        if v is None:
            continue
        if not v.verify(text, s.sig):
            raise UnverifiedNoteError(
                f"the signature of {s.name} (key ID {s.key_id.hex()}) does not verify"
            )
        good.append(s)
    return good


def open_note(msg: bytes, verifiers: Iterable[Verifier]) -> tuple[Note, list[Signature]]:
    """Parse and verify: returns the note and its verified signatures; raises
    :class:`UnverifiedNoteError` when none verifies or a known key's signature fails."""
    note = parse_note(msg)
    good = verify_signatures(note.text, note.signatures, verifiers)
    if not good:
        names = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in note.signatures)
        raise UnverifiedNoteError(f"no trusted key verified the note (signed by {names})")
    return note, good
