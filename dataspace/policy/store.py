"""The policy area's tables in a site's DuckDB, and the queries they share.

Tables (all created by :func:`ensure_tables`, ``IF NOT EXISTS``):

* ``policies``: every policy ever published (the newest per dataset is in force);
* ``budgets``: per dataset, the whole-life epsilon and delta of the policy in force;
* ``contracts``: every contract, with its signed terms and state
  (pending | agreed | rejected | expired | revoked);
* ``ledger``: one charge per (dataset, run, round), written before the release's
  work (round 0: the normalisation statistics), with the privacy unit its epsilon
  is counted in, its mechanism, and when its one evaluation was claimed.

Times are stored as naive UTC ``TIMESTAMP`` (DuckDB's TIMESTAMPTZ needs a time
zone setting per connection); Python sees aware UTC datetimes.

Several processes share a site and DuckDB admits one writer at a time, so a
``with site.db() as con`` block is already exclusive across processes; within
one process (a service's threads) :data:`LOCK` serialises read-decide-write.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from dataspace.errors import NotFoundError
from dataspace.policy.evaluate import Usage
from dataspace.policy.odrl import upgrade_stored_text

if TYPE_CHECKING:
    import duckdb

#: serialises read-decide-write sequences (reservation, charge) within a process
LOCK = threading.RLock()

_DDL = (
    """
    CREATE TABLE IF NOT EXISTS policies (
        policy_sha256 VARCHAR PRIMARY KEY,
        dataset_id VARCHAR NOT NULL,
        fingerprint VARCHAR NOT NULL,
        uid VARCHAR NOT NULL,
        document JSON NOT NULL,
        published_at TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS budgets (
        dataset_id VARCHAR PRIMARY KEY,
        fingerprint VARCHAR NOT NULL,
        epsilon DOUBLE NOT NULL,
        delta DOUBLE NOT NULL,
        policy_sha256 VARCHAR NOT NULL,
        updated_at TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS contracts (
        contract_id VARCHAR PRIMARY KEY,
        dataset_id VARCHAR NOT NULL,
        fingerprint VARCHAR NOT NULL,
        holder VARCHAR NOT NULL,
        holder_name VARCHAR,
        consumer VARCHAR NOT NULL,
        consumer_name VARCHAR,
        action VARCHAR NOT NULL,
        purpose VARCHAR NOT NULL,
        template VARCHAR,
        epsilon DOUBLE NOT NULL,
        delta DOUBLE NOT NULL,
        rounds INTEGER NOT NULL,
        until TIMESTAMP NOT NULL,
        created TIMESTAMP NOT NULL,
        state VARCHAR NOT NULL,
        terms JSON NOT NULL,
        holder_signature VARCHAR,
        consumer_signature VARCHAR,
        policy_sha256 VARCHAR,
        decided_at TIMESTAMP,
        reason VARCHAR
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS ledger (
        dataset_id VARCHAR NOT NULL,
        run_id VARCHAR NOT NULL,
        round_no INTEGER NOT NULL,
        contract_id VARCHAR NOT NULL,
        epsilon DOUBLE NOT NULL,
        charged_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        epsilon_spent DOUBLE,
        model_sha256 VARCHAR,
        metrics JSON,
        PRIMARY KEY (dataset_id, run_id, round_no)
    )
    """,
    # what one unit of the charged epsilon protects (dp.TrainingSettings.privacy_unit);
    # sites made before the setting existed charged per frame
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS privacy_unit VARCHAR DEFAULT 'frame'",
    # the release (round 0: "stats"; rounds: "round"), its mechanism as the accountant's
    # releases [[noise, rate, steps], ...] and as readable parameters; when the round's one
    # evaluation was claimed; what a stats release sent (sent again, never recomputed)
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS release VARCHAR DEFAULT 'round'",
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS releases JSON",
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS mechanism JSON",
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS evaluated_at TIMESTAMP",
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS payload JSON",
    # the process computing the release (host:pid:start): a charge whose process died
    # before releasing anything may run again (dataspace.policy.ledger._not_charged)
    "ALTER TABLE ledger ADD COLUMN IF NOT EXISTS executor VARCHAR",
    # events staged with the change they record, until SITE/log holds them
    # (dataspace.policy.outbox: a crash between the two writes is completed, never lost)
    "CREATE TABLE IF NOT EXISTS outbox (id BIGINT PRIMARY KEY, kind VARCHAR NOT NULL, "
    "fields JSON NOT NULL, staged_at TIMESTAMP NOT NULL, log_index BIGINT)",
)


#: databases (path, inode) whose tables this process has already made
_READY: set[tuple[str, int]] = set()


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the policy area's tables if missing (once per database per process)."""
    row = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    ident = None
    if row and row[0]:
        with contextlib.suppress(OSError):
            ident = (row[0], os.stat(row[0]).st_ino)
    if ident is not None and ident in _READY:
        return
    for ddl in _DDL:
        con.execute(ddl)
    if ident is not None:
        _READY.add(ident)


def to_db(dt: datetime) -> datetime:
    """Aware datetime -> naive UTC, as stored."""
    return dt.astimezone(UTC).replace(tzinfo=None)


def from_db(dt: datetime | None) -> datetime | None:
    return None if dt is None else dt.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DatasetRef:
    """What the policy area needs of an enrolled dataset (read from ``datasets``)."""

    dataset_id: str
    name: str
    fingerprint: str


def dataset_ref(con: duckdb.DuckDBPyConnection, dataset_id: str) -> DatasetRef:
    """The dataset by id (or by unique name), from the connectors' ``datasets`` table."""
    # heavy: DuckDB (already loaded by the connection ``con``), so that importing the
    # policy area does not load it
    import duckdb

    try:
        rows = con.execute(
            "SELECT dataset_id, name, fingerprint FROM datasets WHERE dataset_id = ? OR name = ?",
            [dataset_id, dataset_id],
        ).fetchall()
    except duckdb.CatalogException as e:
        raise NotFoundError(f"dataset {dataset_id!r}: this site has no datasets table yet") from e
    exact = [r for r in rows if r[0] == dataset_id]
    rows = exact or rows
    if not rows:
        raise NotFoundError(f"dataset {dataset_id!r} is not enrolled at this site")
    if len(rows) > 1:
        raise NotFoundError(f"dataset name {dataset_id!r} is ambiguous; use its id")
    return DatasetRef(*rows[0])


def current_policy_row(con: duckdb.DuckDBPyConnection, dataset_id: str) -> tuple[str, str] | None:
    """(policy_sha256, document JSON) of the policy in force, or None.

    A document stored before the ODRL profile was published, with ``assignee`` as a left
    operand, comes back as the rule-level assignees it means (odrl.upgrade_stored_text);
    the sha256 stays the one of the document as published and logged."""
    row = con.execute(
        "SELECT policy_sha256, document FROM policies WHERE dataset_id = ? "
        "ORDER BY published_at DESC LIMIT 1",
        [dataset_id],
    ).fetchone()
    return None if row is None else (row[0], upgrade_stored_text(row[1]))


def expire_contracts(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """Persist the state of contracts whose end has passed (pending or agreed -> expired)."""
    con.execute(
        "UPDATE contracts SET state = 'expired', decided_at = COALESCE(decided_at, ?) "
        "WHERE state IN ('pending', 'agreed') AND until <= ?",
        [to_db(now), to_db(now)],
    )


@dataclass(frozen=True)
class Committed:
    """A dataset's budget use at one instant (epsilon and delta)."""

    spent: float
    reserved: float
    delta_spent: float
    delta_reserved: float
    live_contracts: int
    rounds: int

    @property
    def usage(self) -> Usage:
        return Usage(self.spent + self.reserved, self.delta_spent + self.delta_reserved)


def committed(con: duckdb.DuckDBPyConnection, dataset_id: str, now: datetime) -> Committed:
    """Spent and reserved epsilon and delta of a dataset (docs/odrl-profile.md, "Budget").

    * spent epsilon: every charge, the larger of charged and reported spent;
    * reserved epsilon: what live contracts (agreed, not yet ended) may still charge;
    * delta is consumed once per contract: spent once it has a charge,
      reserved while it is live without one.
    """
    row = con.execute(
        """
        WITH per_contract AS (
            SELECT c.contract_id, c.state, c.until, c.epsilon, c.delta,
                   COALESCE(SUM(GREATEST(l.epsilon, COALESCE(l.epsilon_spent, 0))), 0) AS spent,
                   COUNT(l.run_id) AS charges
            FROM contracts c LEFT JOIN ledger l
              ON l.contract_id = c.contract_id AND l.dataset_id = c.dataset_id
            WHERE c.dataset_id = ?
            GROUP BY ALL
        ), live AS (
            SELECT * FROM per_contract WHERE state = 'agreed' AND until > ?
        )
        SELECT
            (SELECT COALESCE(SUM(GREATEST(epsilon, COALESCE(epsilon_spent, 0))), 0)
               FROM ledger WHERE dataset_id = ?),
            (SELECT COALESCE(SUM(GREATEST(epsilon - spent, 0)), 0) FROM live),
            (SELECT COALESCE(SUM(delta), 0) FROM per_contract WHERE charges > 0),
            (SELECT COALESCE(SUM(delta), 0) FROM live WHERE charges = 0),
            (SELECT COUNT(*) FROM live),
            (SELECT COUNT(*) FROM ledger WHERE dataset_id = ? AND round_no >= 1)
        """,
        [dataset_id, to_db(now), dataset_id, dataset_id],
    ).fetchone()
    assert row is not None
    return Committed(
        spent=float(row[0]),
        reserved=float(row[1]),
        delta_spent=float(row[2]),
        delta_reserved=float(row[3]),
        live_contracts=int(row[4]),
        rounds=int(row[5]),
    )
