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
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dataspace.errors import DataspaceError, NotFoundError

ROLES = ("holder", "consumer", "auditor", "operator")


class KeyError_(DataspaceError):
    """A key file that is missing, unreadable, of the wrong kind or too open."""


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
                raise KeyError_(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
            raw = base64.b64decode(obj["public_key"], validate=True)
            if len(raw) != 32:
                raise KeyError_(f"public key has {len(raw)} bytes, Ed25519 needs 32")
            return cls(name=str(obj["name"]), role=role, public_key=raw)
        except (KeyError, ValueError, TypeError) as e:
            raise KeyError_(f"malformed identity {obj!r}: {e}") from e


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
        raise KeyError_(f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
    for p in (path, pub_path):
        if p.exists():
            raise KeyError_(f"{p} already exists; refusing to overwrite a key")
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
        raise KeyError_(f"{path} is not a PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
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
        raise KeyError_(f"{path} is not an identity JSON file: {e}") from e
    return Identity.from_json(obj)
