"""Rotating a site's identity key, logged before it takes effect."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.site.folder import Site
from dataspace.site.identity import KeyRotation, public_bytes, rotate_identity, write_private_key
from dataspace.site.log import record


def rotate_site_key(site: Site, new_key: Ed25519PrivateKey | None = None) -> KeyRotation:
    """Rotate a site's identity key; logs ``key.rotated`` (signed by the old key) first.

    The site's transparency log keeps its own key: witnesses and auditors pin
    a log's verifier key (``SITE/public.vkey``), so it must not change with
    the identity. Before the first rotation the current key is copied to
    ``SITE/log.key`` (0600) for the log to keep signing with.
    """
    log_key = site.root / "log.key"
    if not log_key.exists():
        write_private_key(log_key, site.key)
    old_ident = site.identity
    new = new_key or Ed25519PrivateKey.generate()
    record(
        site,
        "key.rotated",
        new_key=base64.b64encode(public_bytes(new)).decode(),
        new_name=old_ident.name,
        old_key=old_ident.key_b64,
        role=old_ident.role,
    )
    rotation = rotate_identity(site.key_path, new_key=new)
    # Site caches its key and identity; drop them so this object sees the new key.
    for attr in ("key", "identity"):
        site.__dict__.pop(attr, None)
    return rotation
