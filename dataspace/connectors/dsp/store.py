"""The provider's DSP negotiations, in the site's DuckDB beside its contracts.

One row per negotiation (table ``dsp_negotiations``): its ``providerPid`` (ours, a
``urn:uuid:``), the consumer's ``consumerPid`` and key (who signed the request), the
dataset, the DSP state, the contract it maps to (``contracts.contract_id``), and the
provider's latest message (the holder-signed terms) for a consumer that polls. It is
the connector's other state's store (DuckDB, ``SITE/site.duckdb``): a committed change
survives a crash or a restart, and each change is one compare-and-set statement in one
transaction, so two requests racing on one negotiation cannot both move it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dataspace.connectors.dsp.messages import NegotiationNotFoundError

if TYPE_CHECKING:
    import duckdb

    from dataspace.site.folder import Site

#: serialises read-decide-write of negotiations within a process (DuckDB: across them)
LOCK = threading.RLock()

_DDL = """
CREATE TABLE IF NOT EXISTS dsp_negotiations (
    provider_pid VARCHAR PRIMARY KEY,
    consumer_pid VARCHAR NOT NULL,
    consumer VARCHAR NOT NULL,
    consumer_name VARCHAR,
    dataset_id VARCHAR NOT NULL,
    contract_id VARCHAR NOT NULL,
    state VARCHAR NOT NULL,
    callback VARCHAR,
    message JSON,
    reason VARCHAR,
    created TIMESTAMP NOT NULL,
    updated TIMESTAMP NOT NULL,
    UNIQUE (consumer, consumer_pid)
)
"""
_COLUMNS = (
    "provider_pid, consumer_pid, consumer, consumer_name, dataset_id, contract_id, state, "
    "callback, message, reason, created, updated"
)


@dataclass(frozen=True)
class Negotiation:
    """One negotiation as the provider stores it."""

    provider_pid: str
    consumer_pid: str
    consumer: str  # base64 Ed25519 key of the consumer (the request's signer)
    consumer_name: str | None
    dataset_id: str
    contract_id: str
    state: str
    callback: str | None
    message: dict[str, Any] | None  # the provider's latest message (agreement or offer)
    reason: str | None
    created: datetime
    updated: datetime


def _db_time(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


def _row(row: tuple[Any, ...]) -> Negotiation:
    d = dict(zip(_COLUMNS.split(", "), row, strict=True))
    d["message"] = json.loads(d["message"]) if d["message"] else None
    d["created"] = d["created"].replace(tzinfo=UTC)
    d["updated"] = d["updated"].replace(tzinfo=UTC)
    return Negotiation(**d)


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_DDL)


def insert(site: Site, n: Negotiation) -> None:
    """Store a new negotiation (a duplicate (consumer, consumerPid) raises duckdb's
    ConstraintException; :func:`find` first to answer it)."""
    with LOCK, site.db() as con:
        ensure_table(con)
        con.execute(
            f"INSERT INTO dsp_negotiations ({_COLUMNS}) VALUES ({', '.join(['?'] * 12)})",
            [
                n.provider_pid,
                n.consumer_pid,
                n.consumer,
                n.consumer_name,
                n.dataset_id,
                n.contract_id,
                n.state,
                n.callback,
                None if n.message is None else json.dumps(n.message),
                n.reason,
                _db_time(n.created),
                _db_time(n.updated),
            ],
        )


def get(site: Site, provider_pid: str) -> Negotiation:
    """The negotiation ``provider_pid`` (NegotiationNotFoundError if none)."""
    with site.db() as con:
        ensure_table(con)
        row = con.execute(
            f"SELECT {_COLUMNS} FROM dsp_negotiations WHERE provider_pid = ?", [provider_pid]
        ).fetchone()
    if row is None:
        raise NegotiationNotFoundError(f"no negotiation {provider_pid[:200]!r} at this provider")
    return _row(row)


def find(site: Site, consumer: str, consumer_pid: str) -> Negotiation | None:
    """The negotiation ``consumer`` started under ``consumer_pid``, if any."""
    with site.db() as con:
        ensure_table(con)
        row = con.execute(
            f"SELECT {_COLUMNS} FROM dsp_negotiations WHERE consumer = ? AND consumer_pid = ?",
            [consumer, consumer_pid],
        ).fetchone()
    return None if row is None else _row(row)


def move(
    site: Site,
    provider_pid: str,
    from_states: tuple[str, ...],
    to_state: str,
    now: datetime,
    reason: str | None = None,
    message: dict[str, Any] | None = None,
) -> bool:
    """Compare-and-set: move the negotiation to ``to_state`` if it is in one of
    ``from_states`` (and, given, replace the provider's latest ``message``); whether it
    moved."""
    with LOCK, site.db() as con:
        ensure_table(con)
        marks = ", ".join("?" for _ in from_states)
        row = con.execute(
            "UPDATE dsp_negotiations SET state = ?, updated = ?, reason = coalesce(?, reason), "
            f"message = coalesce(?, message) WHERE provider_pid = ? AND state IN ({marks}) "
            "RETURNING provider_pid",
            [
                to_state,
                _db_time(now),
                reason,
                None if message is None else json.dumps(message),
                provider_pid,
                *from_states,
            ],
        ).fetchone()
    return row is not None
