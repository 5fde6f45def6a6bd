"""A site's transparency log: SITE/log, SITE/public.vkey, and ``record`` (issue 3).

Every connector keeps the log of everything done with its data at ``SITE/log``
(a :class:`dataspace.audit.log.TransparencyLog` signed with the site's key).
``SITE/public.vkey`` holds the log's verifier key in the C2SP signed-note vkey
text form, one line; its key name is the log's origin.

The origin (C2SP tlog-checkpoint: a schema-less URL) of a log made now is
``dataspace.invalid/site/HEX``, HEX the first 16 bytes of SHA-256 of the log's
public key (:func:`dataspace.audit.witnesskey.log_origin`). Not the site's name,
which is no URL, nor its connector's ``--public-url``, which is not known when
the site is made (``dataspace site create``) and moves with hosts, while an
origin is forever; derived from the key, it is stable, not secret, and
self-certifying: a witness that knows the site by name and identity key computes
it, so even a site with no connector URL is witnessed without announcing it.
A log made before keeps its origin, the site's name: it opens, verifies, is
witnessed and served as before.

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
from dataspace.audit.witnesskey import log_origin
from dataspace.site.folder import Site
from dataspace.site.identity import load_private_key

#: longest refusal reason logged: a refused message may quote what it was sent, and a
#: hostile sender must not make the holder's log grow by more than this per message
MAX_REASON_CHARS = 2000


def site_vkey(site: Site, origin: str | None = None) -> str:
    """The site log's verifier key text: ORIGIN+HEX(keyID)+BASE64(0x01 || pub32);
    ``origin``: the log's (default: what a new log of this site is named)."""
    pub = raw_public(log_key(site))
    return vkey_text(origin or log_origin("site", pub), pub)


def log_key(site: Site) -> Ed25519PrivateKey:
    """The key that signs the site log's checkpoints: the site key, or, once the site's
    identity key has been rotated (site.rotation.rotate_site_key), the original one
    kept in SITE/log.key, because witnesses pin a log's verifier key."""
    path = site.root / "log.key"
    return load_private_key(path) if path.exists() else site.key


def init_site_log(site: Site) -> TransparencyLog:
    """Create SITE/log (origin :func:`~dataspace.audit.witnesskey.log_origin` of the
    site's log key, the site key) and write SITE/public.vkey.

    Idempotent: an existing log is opened, and the vkey file rewritten if missing.
    """
    if (site.log_dir / META).exists():
        log = TransparencyLog.open(site.log_dir, key=log_key(site))
    else:
        key = log_key(site)
        log = TransparencyLog.create(site.log_dir, log_origin("site", raw_public(key)), key)
    if not site.vkey_path.exists():
        atomic_write(site.vkey_path, (site_vkey(site, log.origin) + "\n").encode())
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
