"""The hub's state: participants, catalog, contract registry, run registry (DuckDB).

One file, ``DATA/hub.duckdb``, opened for each unit of work and closed at once
(the brief's rule: nobody holds a DuckDB connection). The hub process is the
only writer, so it also keeps the rows in memory, loaded at start and updated
after each committed write: reads (catalog searches, contract lists) never
touch the database, which is what keeps a signed catalog query close to the
cost of a bare endpoint (bench/hub_load.py).

Nothing here holds data rows: a catalog entry is metadata (DCAT, counts,
robot type, tasks, a quality score); a contract is its terms; a run is its
per-round aggregate loss, epsilon and per-site contributions.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from dataspace.errors import DataspaceError, NotFoundError, RefusedError

DB = "hub.duckdb"

_TABLES = """
CREATE TABLE IF NOT EXISTS participants(
  key_id VARCHAR PRIMARY KEY, name VARCHAR, role VARCHAR, registered_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS catalog(
  holder VARCHAR, dataset_id VARCHAR, entry JSON, published_at TIMESTAMP,
  PRIMARY KEY(holder, dataset_id));
CREATE TABLE IF NOT EXISTS contracts(
  contract_id VARCHAR PRIMARY KEY, holder VARCHAR, consumer VARCHAR, dataset_id VARCHAR,
  record JSON, registered_at TIMESTAMP, log_index BIGINT);
ALTER TABLE contracts ADD COLUMN IF NOT EXISTS log_index BIGINT;
CREATE TABLE IF NOT EXISTS runs(
  run_id VARCHAR PRIMARY KEY, consumer VARCHAR, record JSON, created_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS run_rounds(
  run_id VARCHAR, round_no BIGINT, record JSON, posted_at TIMESTAMP,
  PRIMARY KEY(run_id, round_no));
"""


class ConflictError(DataspaceError):
    """A write that contradicts what is recorded (same id, different owner or terms)."""

    http_status = 409
    code = "conflict"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_TABLES)


class HubStore:
    """DuckDB on disk, rows in memory; thread-safe (FastAPI runs sync routes in threads)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / DB
        self._lock = threading.Lock()
        #: bumped on every write (keys the hub's read cache)
        self.generation = 0
        with self.db() as con:
            ensure_tables(con)
            self.participants: dict[str, dict[str, str]] = {
                k: {"name": n, "role": r}
                for k, n, r in con.execute("SELECT key_id, name, role FROM participants").fetchall()
            }
            self.catalog: dict[tuple[str, str], dict[str, Any]] = {
                (h, d): json.loads(e)
                for h, d, e in con.execute(
                    "SELECT holder, dataset_id, entry FROM catalog"
                ).fetchall()
            }
            self.contracts: dict[str, dict[str, Any]] = {
                c: json.loads(r)
                for c, r in con.execute("SELECT contract_id, record FROM contracts").fetchall()
            }
            self.runs: dict[str, dict[str, Any]] = {
                r: json.loads(rec)
                for r, rec in con.execute("SELECT run_id, record FROM runs").fetchall()
            }
            for run_id, rec in con.execute(
                "SELECT run_id, record FROM run_rounds ORDER BY run_id, round_no"
            ).fetchall():
                if run_id in self.runs:
                    self.runs[run_id].setdefault("rounds", []).append(json.loads(rec))

    @contextlib.contextmanager
    def db(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = duckdb.connect(str(self.path))
        try:
            yield con
        finally:
            con.close()

    # --- participants -------------------------------------------------------
    def register(self, key_id: str, name: str, role: str) -> None:
        with self._lock, self.db() as con:
            con.execute(
                "INSERT OR REPLACE INTO participants VALUES (?, ?, ?, ?)",
                [key_id, name, role, datetime.now(UTC)],
            )
            self.participants[key_id] = {"name": name, "role": role}
            self.generation += 1

    def lookup(self, key_id: str) -> tuple[str, str] | None:
        p = self.participants.get(key_id)
        return (p["name"], p["role"]) if p else None

    # --- catalog ------------------------------------------------------------
    def publish(self, holder: str, entry: dict[str, Any]) -> None:
        with self._lock, self.db() as con:
            con.execute(
                "INSERT OR REPLACE INTO catalog VALUES (?, ?, ?, ?)",
                [holder, entry["dataset_id"], json.dumps(entry), datetime.now(UTC)],
            )
            self.catalog[(holder, entry["dataset_id"])] = entry
            self.generation += 1

    def unpublish(self, holder: str, dataset_id: str) -> None:
        with self._lock:
            if (holder, dataset_id) not in self.catalog:
                raise NotFoundError(f"dataset {dataset_id!r} is not in the catalog for this holder")
            with self.db() as con:
                con.execute(
                    "DELETE FROM catalog WHERE holder = ? AND dataset_id = ?", [holder, dataset_id]
                )
            del self.catalog[(holder, dataset_id)]
            self.generation += 1

    # --- contracts ----------------------------------------------------------
    def add_contract(self, record: dict[str, Any]) -> bool:
        """Record a contract; False when the same record is already there (idempotent)."""
        cid = record["contract_id"]
        with self._lock:
            old = self.contracts.get(cid)
            if old is not None:
                if old["holder"] != record["holder"]:
                    raise ConflictError(f"contract {cid} is registered by another holder")
                if old == record:
                    return False
            with self.db() as con:
                # log_index NULL until the registration's log entry is appended (mark_logged)
                con.execute(
                    "INSERT OR REPLACE INTO contracts (contract_id, holder, consumer, dataset_id, "
                    "record, registered_at, log_index) VALUES (?, ?, ?, ?, ?, ?, NULL)",
                    [
                        cid,
                        record["holder"],
                        record["consumer"],
                        record["dataset_id"],
                        json.dumps(record),
                        datetime.now(UTC),
                    ],
                )
            self.contracts[cid] = record
            self.generation += 1
            return True

    def mark_logged(self, contract_id: str, log_index: int) -> None:
        """The contract's ``contract.registered`` entry is in the hub log at ``log_index``."""
        with self._lock, self.db() as con:
            con.execute(
                "UPDATE contracts SET log_index = ? WHERE contract_id = ?", [log_index, contract_id]
            )

    def unlogged_contracts(self) -> list[dict[str, Any]]:
        """Contracts stored but never marked logged: the hub died between the two writes."""
        with self.db() as con:
            ids = [r[0] for r in con.execute(
                "SELECT contract_id FROM contracts WHERE log_index IS NULL ORDER BY registered_at"
            ).fetchall()]  # fmt: skip
        return [self.contracts[c] for c in ids]

    # --- runs -----------------------------------------------------------------
    def add_run(self, record: dict[str, Any]) -> None:
        run_id = record["run_id"]
        with self._lock:
            if run_id in self.runs:
                raise ConflictError(f"run {run_id} is already registered")
            stored = {k: v for k, v in record.items() if k != "rounds"}
            with self.db() as con:
                con.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, ?)",
                    [run_id, record["consumer"], json.dumps(stored), datetime.now(UTC)],
                )
            self.runs[run_id] = {**stored, "rounds": []}
            self.generation += 1

    def add_round(self, run_id: str, consumer: str | None, rnd: dict[str, Any]) -> None:
        with self._lock:
            run = self.runs.get(run_id)
            if run is None or (consumer is not None and run["consumer"] != consumer):
                raise NotFoundError(f"run {run_id} does not exist")
            if any(r["round"] == rnd["round"] for r in run["rounds"]):
                raise ConflictError(f"round {rnd['round']} of run {run_id} is already recorded")
            with self.db() as con:
                con.execute(
                    "INSERT INTO run_rounds VALUES (?, ?, ?, ?)",
                    [run_id, rnd["round"], json.dumps(rnd), datetime.now(UTC)],
                )
            run["rounds"].append(rnd)
            run["rounds"].sort(key=lambda r: r["round"])
            self.generation += 1


def owner_check(caller_key: str, owner_key: str, what: str) -> None:
    if caller_key != owner_key:
        raise RefusedError(f"{what} belongs to another participant")
