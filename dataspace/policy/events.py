"""Writing the policy area's events to the site's transparency log.

Every event goes through ``dataspace.connectors.sitelog.record(site, kind,
**fields)`` (signed with the site's key, durable on return). Values are made
JSON-friendly here (times as RFC 3339 UTC strings) so callers pass what they have.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from dataspace.policy.odrl import format_datetime

if TYPE_CHECKING:
    from dataspace.connectors.site import Site


def plain(v: Any) -> Any:
    """``v`` as logged: datetimes as RFC 3339 UTC strings, tuples as lists."""
    if isinstance(v, datetime):
        return format_datetime(v)
    if isinstance(v, tuple):
        return [plain(x) for x in v]
    return v


def record(site: Site, kind: str, **fields: Any) -> int:
    """Append one event of ``kind`` to ``SITE/log``; returns its index."""
    from dataspace.connectors.sitelog import record as sitelog_record

    return sitelog_record(site, kind, **{k: plain(v) for k, v in fields.items()})


#: longest refusal reason logged: a refused message may quote what it was sent, and a
#: hostile sender must not make the holder's log grow by more than this per message
MAX_REASON_CHARS = 2000


def refused(site: Site, reason: str, **request: Any) -> int:
    """Log an ``access.refused`` event: the reason (bounded) and the request's fields."""
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + f"... ({len(reason)} characters)"
    return record(site, "access.refused", reason=reason, **request)
