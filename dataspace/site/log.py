"""A site's transparency log: SITE/log, SITE/public.vkey, and ``record`` (issue 3).

Every connector keeps the log of everything done with its data at ``SITE/log``
(a :class:`dataspace.audit.log.TransparencyLog` whose origin and key name are
the site's name, signed with the site's key). ``SITE/public.vkey`` holds the
log's verifier key in the C2SP signed-note vkey text form, one line.

:func:`record` is the one way anything at a site logs an event; values are made
JSON-friendly by :func:`dataspace.audit.events.make_event` (one rule for all).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import raw_public, vkey_text
from dataspace.audit.storage import META, atomic_write
from dataspace.site.folder import Site
from dataspace.site.identity import load_private_key

#: longest refusal reason logged: a refused message may quote what it was sent, and a
#: hostile sender must not make the holder's log grow by more than this per message
MAX_REASON_CHARS = 2000


def site_vkey(site: Site) -> str:
    """The site log's verifier key text: NAME+HEX(keyID)+BASE64(0x01 || pub32)."""
    return vkey_text(site.name, raw_public(log_key(site)))


def log_key(site: Site) -> Ed25519PrivateKey:
    """The key that signs the site log's checkpoints: the site key, or, once the site's
    identity key has been rotated (site.rotation.rotate_site_key), the original one
    kept in SITE/log.key, because witnesses pin a log's verifier key."""
    path = site.root / "log.key"
    return load_private_key(path) if path.exists() else site.key


def init_site_log(site: Site) -> TransparencyLog:
    """Create SITE/log (origin = site name, key = site key) and write SITE/public.vkey.

    Idempotent: an existing log is opened, and the vkey file rewritten if missing.
    """
    if (site.log_dir / META).exists():
        log = TransparencyLog.open(site.log_dir, key=log_key(site))
    else:
        log = TransparencyLog.create(site.log_dir, site.name, log_key(site))
    if not site.vkey_path.exists():
        atomic_write(site.vkey_path, (site_vkey(site) + "\n").encode())
    return log


def open_site_log(site: Site, writable: bool = True) -> TransparencyLog:
    """Open SITE/log (creating it for a site made before the audit area existed)."""
    if not (site.log_dir / META).exists():
        return init_site_log(site)
    return TransparencyLog.open(site.log_dir, key=log_key(site) if writable else None)


def record(site: Site, kind: str, **fields: Any) -> int:
    """Sign an event with the site's key (actor = the site's identity) and append it to
    SITE/log; durable, and covered by a newly signed checkpoint, when this returns.

    ``fields`` are :func:`dataspace.audit.events.make_event`'s keyword arguments
    (dataset_id, fingerprint, contract_id, purpose, time, and the kind's details).
    Returns the entry's index in the log.
    """
    entry = make_event(kind, site.key, site.identity, **fields)
    with open_site_log(site) as log:
        return log.append(entry)


def refused(site: Site, reason: str, **request: Any) -> int:
    """Log an ``access.refused`` event: the reason (bounded) and the request's fields."""
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + f"... ({len(reason)} characters)"
    return record(site, "access.refused", reason=reason, **request)
