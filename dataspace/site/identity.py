"""Identities: an Ed25519 key pair with a name and a role.

A participant *is* its public key. On disk an identity is two files:

* ``FILE``: the private key, PKCS#8 PEM, mode 0600, never printed;
* ``FILE.pub``: JSON ``{"name", "role", "public_key"}`` with the raw 32-byte
  public key in standard base64. This is what others are given.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dataspace.errors import DataspaceError, NotFoundError

ROLES = ("holder", "consumer", "auditor", "operator")


class IdentityKeyError(DataspaceError):
    """A key or identity file, or a key rotation, that is malformed, of the wrong kind,
    already there where a new one is made, or whose signatures do not verify."""

    #: the ``error`` field of a service's answer (dataspace.auth.service.error_code)
    code = "key"


@dataclass(frozen=True)
class Identity:
    """A participant: name, role and raw Ed25519 public key."""

    name: str
    role: str
    public_key: bytes

    @property
    def key_b64(self) -> str:
        """The public key as standard base64: the participant's id everywhere."""
        return base64.b64encode(self.public_key).decode()

    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role, "public_key": self.key_b64}

    @classmethod
    def from_json(cls, obj: dict[str, str]) -> Identity:
        try:
            role = obj["role"]
            if role not in ROLES:
                raise IdentityKeyError(
                    f"unknown role {role!r} (expected one of {', '.join(ROLES)})"
                )
            raw = base64.b64decode(obj["public_key"], validate=True)
            if len(raw) != 32:
                raise IdentityKeyError(f"public key has {len(raw)} bytes, Ed25519 needs 32")
            return cls(name=str(obj["name"]), role=role, public_key=raw)
        except (KeyError, ValueError, TypeError) as e:
            raise IdentityKeyError(f"malformed identity {obj!r}: {e}") from e


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write a PKCS#8 PEM private key, created with mode 0600 (never world-readable)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def new_identity(path: Path, name: str, role: str) -> Identity:
    """Make a key pair at ``path`` (private) and ``path.pub`` (public identity)."""
    path = Path(path)
    pub_path = public_path(path)
    if role not in ROLES:
        raise IdentityKeyError(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
    for p in (path, pub_path):
        if p.exists():
            raise IdentityKeyError(f"{p} already exists; refusing to overwrite a key")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IdentityKeyError(f"cannot create the folder for {path}: {e.strerror}") from e
    key = Ed25519PrivateKey.generate()
    write_private_key(path, key)
    ident = Identity(name=name, role=role, public_key=public_bytes(key))
    pub_path.write_text(json.dumps(ident.to_json(), indent=2) + "\n")
    return ident


def public_path(private_path: Path) -> Path:
    return Path(str(private_path) + ".pub")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise NotFoundError(f"key file {path} does not exist") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise IdentityKeyError(f"{path} is not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityKeyError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_identity(path: Path) -> Identity:
    """Read an identity from ``X.pub``, or from the ``.pub`` beside private key ``X``."""
    path = Path(path)
    if path.suffix != ".pub" and public_path(path).exists():
        path = public_path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise NotFoundError(f"identity file {path} does not exist") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IdentityKeyError(f"{path} is not an identity JSON file: {e}") from e
    return Identity.from_json(obj)


# --- key rotation ---------------------------------------------------------------

ROTATION_TYPE = "dataspace/key-rotation/v1"


@dataclass(frozen=True)
class KeyRotation:
    """A statement that ``old_key`` hands over to ``new_key``, signed by both.

    The old key's signature says who authorised the change; the new key's
    proves its holder has it. Both sign the RFC 8785 canonical JSON of
    :meth:`statement`. Kept as one JSON line per rotation in ``FILE.rotations``.
    """

    name: str
    role: str
    old_key: str  # base64
    new_key: str  # base64
    time: str  # RFC 3339 UTC
    old_signature: str = ""
    new_signature: str = ""

    def statement(self) -> dict[str, str]:
        return {
            "type": ROTATION_TYPE,
            "name": self.name,
            "role": self.role,
            "old_key": self.old_key,
            "new_key": self.new_key,
            "time": self.time,
        }

    def message(self) -> bytes:
        return rfc8785.dumps(self.statement())

    def to_json(self) -> dict[str, str]:
        return {
            **self.statement(),
            "old_signature": self.old_signature,
            "new_signature": self.new_signature,
        }

    @classmethod
    def from_json(cls, obj: dict[str, str]) -> KeyRotation:
        try:
            if obj["type"] != ROTATION_TYPE:
                raise IdentityKeyError(f"not a key rotation: type {obj['type']!r}")
            return cls(**{k: str(obj[k]) for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as e:
            raise IdentityKeyError(f"malformed key rotation {obj!r}: {e}") from e

    def verify(self) -> None:
        """Both signatures verify over the statement; raises :class:`IdentityKeyError` if not."""
        for who, key, sig in (
            ("old", self.old_key, self.old_signature),
            ("new", self.new_key, self.new_signature),
        ):
            try:
                pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(key, validate=True))
                pub.verify(base64.b64decode(sig, validate=True), self.message())
            except (InvalidSignature, ValueError) as e:
                raise IdentityKeyError(
                    f"key rotation of {self.name}: the {who} key's signature does not verify"
                ) from e


def rotations_path(private_path: Path) -> Path:
    return Path(str(private_path) + ".rotations")


def sign_rotation(
    old: Ed25519PrivateKey, new: Ed25519PrivateKey, ident: Identity, time: str
) -> KeyRotation:
    r = KeyRotation(
        name=ident.name,
        role=ident.role,
        old_key=base64.b64encode(public_bytes(old)).decode(),
        new_key=base64.b64encode(public_bytes(new)).decode(),
        time=time,
    )
    msg = r.message()
    return replace(
        r,
        old_signature=base64.b64encode(old.sign(msg)).decode(),
        new_signature=base64.b64encode(new.sign(msg)).decode(),
    )


def rotate_identity(
    path: Path, new_key: Ed25519PrivateKey | None = None, time: str | None = None
) -> KeyRotation:
    """Replace the key at ``path`` by a new one, keeping name and role.

    Order matters for a crash at any point: the rotation statement and a copy
    of the old private key (``FILE.old-<hex of old key[:8]>``, 0600) are
    written first, then the new private key replaces the old by an atomic
    rename, then the public file. The statement is appended to ``FILE.rotations``.
    """
    path = Path(path)
    old = load_private_key(path)
    ident = load_identity(path)
    new = new_key or Ed25519PrivateKey.generate()
    if public_bytes(new) == public_bytes(old):
        raise IdentityKeyError(f"{path}: the new key is the old key")
    time = time or datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    rotation = sign_rotation(old, new, ident, time)
    archive = Path(f"{path}.old-{public_bytes(old)[:4].hex()}")
    if not archive.exists():
        write_private_key(archive, old)
    with open(rotations_path(path), "a") as f:
        f.write(json.dumps(rotation.to_json(), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp = Path(f"{path}.new")
    if tmp.exists():
        tmp.unlink()
    write_private_key(tmp, new)
    os.replace(tmp, path)
    new_ident = Identity(name=ident.name, role=ident.role, public_key=public_bytes(new))
    pub_tmp = Path(f"{public_path(path)}.new")
    pub_tmp.write_text(json.dumps(new_ident.to_json(), indent=2) + "\n")
    os.replace(pub_tmp, public_path(path))
    return rotation


def load_rotations(path: Path) -> list[KeyRotation]:
    """The rotations recorded beside a key file, oldest first (each verified)."""
    p = rotations_path(Path(path))
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        if line.strip():
            r = KeyRotation.from_json(json.loads(line))
            r.verify()
            out.append(r)
    return out
