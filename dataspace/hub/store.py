"""The hub's state: participants, catalog, contract registry, run registry (DuckDB).

One file, ``DATA/hub.duckdb``, opened for each unit of work and closed at once
(the brief's rule: nobody holds a DuckDB connection). The hub process is the
only writer, so it also keeps the rows in memory, loaded at start and updated
after each committed write: reads (catalog searches, contract lists) never
touch the database, which is what keeps a signed catalog query close to the
cost of a bare endpoint (bench/hub_load.py).

Nothing here holds data rows: a catalog entry is metadata (DCAT, counts,
robot type, tasks, a quality score); a contract is its terms; a run is its
per-round aggregate loss, epsilon and per-site contributions; a budget report is
the latest statement a holder's site signed of a dataset's budget
(dataspace.policy.budget_statement).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from dataspace.errors import DataspaceError, NotFoundError

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
CREATE TABLE IF NOT EXISTS budget_reports(
  holder VARCHAR, dataset_id VARCHAR, record JSON, received_at TIMESTAMP,
  PRIMARY KEY(holder, dataset_id));
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
        self._pinned = threading.local()
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
            self.budgets: dict[tuple[str, str], dict[str, Any]] = {
                (h, d): json.loads(r)
                for h, d, r in con.execute(
                    "SELECT holder, dataset_id, record FROM budget_reports"
                ).fetchall()
            }
            for run_id, rec in con.execute(
                "SELECT run_id, record FROM run_rounds ORDER BY run_id, round_no"
            ).fetchall():
                if run_id in self.runs:
                    self.runs[run_id].setdefault("rounds", []).append(json.loads(rec))

    @contextlib.contextmanager
    def db(self) -> Iterator[duckdb.DuckDBPyConnection]:
        pinned = getattr(self._pinned, "con", None)
        if pinned is not None:  # inside burst(): each statement still commits on its own
            yield pinned
            return
        con = duckdb.connect(str(self.path))
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def burst(self) -> Iterator[None]:
        """One connection for a burst of writes on this thread (the group committer's).

        Opening hub.duckdb and closing it (a checkpoint) costs 40 ms of CPU and 100-200 ms
        of wall time under load, more than the writes themselves; a burst pays it once.
        Every unit of work in it still commits durably (WAL) before it returns. Only the
        hub process opens hub.duckdb, and the burst ends as soon as no write is waiting.
        """
        con = duckdb.connect(str(self.path))
        self._pinned.con = con
        try:
            yield
        finally:
            self._pinned.con = None
            con.close()

    # --- participants -------------------------------------------------------
    def register(self, key_id: str, name: str, role: str) -> None:
        """Give ``key_id`` its name and role. Names are unique (the hub's included): a
        name is a log's origin and key name, which witnesses and auditors go by, so
        a second key under one name could pass for the first (ConflictError)."""
        with self._lock:
            other = self.holder_of_name(name)
            if other is not None and other != key_id:
                raise ConflictError(
                    f"participant name {name!r} is another key's ({other}); names are unique"
                )
            with self.db() as con:
                con.execute(
                    "INSERT OR REPLACE INTO participants VALUES (?, ?, ?, ?)",
                    [key_id, name, role, datetime.now(UTC)],
                )
            self.participants[key_id] = {"name": name, "role": role}
            self.generation += 1

    def holder_of_name(self, name: str) -> str | None:
        """The key registered under ``name`` (the first, should a store from before names
        were unique hold several), or None."""
        return next((k for k, p in self.participants.items() if p["name"] == name), None)

    def forget(self, key_id: str) -> None:
        """Remove a participant: its key is a plain consumer from now on."""
        with self._lock:
            with self.db() as con:
                con.execute("DELETE FROM participants WHERE key_id = ?", [key_id])
            self.participants.pop(key_id, None)
            self.generation += 1

    def lookup(self, key_id: str) -> tuple[str, str] | None:
        p = self.participants.get(key_id)
        return (p["name"], p["role"]) if p else None

    # --- catalog ------------------------------------------------------------
    def publish_many(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Store catalog entries (holder, entry) in one transaction (one commit, one checkpoint)."""
        rows = [[holder, e["dataset_id"], json.dumps(e), datetime.now(UTC)] for holder, e in items]
        last = list({(r[0], r[1]): r for r in rows}.values())  # a batch may repeat a key
        # one statement with a VALUES list: executemany runs one statement per row (~30 ms
        # each here), a VALUES list of 50 rows costs about what one row does
        values = ", ".join(["(?, ?, ?, ?)"] * len(last))
        with self._lock, self.db() as con:
            con.execute(
                f"INSERT OR REPLACE INTO catalog VALUES {values}", [x for r in last for x in r]
            )
            for holder, e in items:
                self.catalog[(holder, e["dataset_id"])] = e
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

    def update_run(self, run_id: str, fields: dict[str, Any]) -> None:
        """Set ``fields`` (status, model hash, ...) on a registered run's record."""
        with self._lock:
            run = self.runs.get(run_id)
            if run is None:
                raise NotFoundError(f"run {run_id} does not exist")
            stored = {k: v for k, v in run.items() if k != "rounds"} | fields
            with self.db() as con:
                con.execute(
                    "UPDATE runs SET record = ? WHERE run_id = ?", [json.dumps(stored), run_id]
                )
            run.update(fields)
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

    # --- budget reports ---------------------------------------------------------
    def put_budget(self, record: dict[str, Any]) -> str:
        """Keep ``record`` (a verified statement's JSON) if it is newer than the one kept.

        Returns ``"stored"``, ``"unchanged"`` (the same statement again) or ``"stale"``
        (not newer than the one kept: ignored). Newer: a larger (site_log_size,
        reported_at) (dataspace.policy.budget_statement, "Order").
        """
        key = (record["holder"], record["dataset_id"])
        with self._lock:
            old = self.budgets.get(key)
            if old is not None:
                if old["statement"] == record["statement"]:
                    return "unchanged"
                if report_order(record) <= report_order(old):
                    return "stale"
            with self.db() as con:
                con.execute(
                    "INSERT OR REPLACE INTO budget_reports VALUES (?, ?, ?, ?)",
                    [key[0], key[1], json.dumps(record), datetime.now(UTC)],
                )
            self.budgets[key] = record
            self.generation += 1
            return "stored"


def report_order(record: dict[str, Any]) -> tuple[int, datetime]:
    """A kept budget report's order: (site_log_size, reported_at); larger is newer."""
    return (int(record["site_log_size"]), datetime.fromisoformat(record["reported_at"]))


#: queued by :meth:`GroupCommit.close`: the committer stops once it takes it
_STOP = object()


class GroupCommit:
    """Group commit: one thread runs ``commit(batch)`` over every request queued meanwhile.

    A hub write is a DuckDB transaction (open, insert, commit, checkpoint on close:
    ~100 ms on this machine) and a log append (three fsyncs). Done per request under
    one lock, ten publishing holders wait in line for each other (bench/RESULTS.md,
    hub_assurance_load: p99 4.3 s). Here each :meth:`submit` queues its item and
    waits; the committer takes everything queued (up to ``max_batch``) and writes it
    with one transaction and one ``append_many``, so the cost is paid once per batch.
    ``commit`` returns one result per item, in order; if it raises, the items are
    retried one by one, so a bad item fails only its own request. A request is
    answered only after its batch is durable (what PostgreSQL and Sunlight do).
    """

    def __init__(
        self,
        commit: Callable[[list[Any]], list[Any]],
        name: str,
        max_batch: int = 256,
        burst: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        linger_s: float = 0.2,
    ) -> None:
        self._commit, self.max_batch = commit, max_batch
        self._burst, self.linger_s = burst, linger_s
        self._queue: queue.SimpleQueue[tuple[Any, Future | None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        # the thread is a daemon (a stuck commit must not keep a stopping service alive),
        # but one still inside its burst (an open DuckDB connection) when the interpreter
        # finalises aborts the process: at exit, finish the queue and close the burst first
        atexit.register(self.close)

    def submit(self, item: Any) -> Any:
        """Queue ``item``; its result once its batch is committed (or its error, raised)."""
        fut: Future = Future()
        self._queue.put((item, fut))
        return fut.result()

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, end the burst and stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put((_STOP, None))
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first: tuple[Any, Future | None] | None = self._queue.get()
            if first[0] is _STOP:
                return
            # a burst (``burst()``, e.g. one open database) lasts while requests keep
            # arriving within ``linger_s`` of the last batch
            with self._burst():
                while first is not None:
                    batch, stop = [first], False
                    while len(batch) < self.max_batch:
                        try:
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if item[0] is _STOP:
                            stop = True
                            break
                        batch.append(item)
                    self._apply(batch)
                    if stop:
                        return
                    try:
                        first = self._queue.get(timeout=self.linger_s)
                    except queue.Empty:
                        first = None
                    if first is not None and first[0] is _STOP:
                        return

    def _apply(self, batch: list[tuple[Any, Future]]) -> None:
        try:
            results = self._commit([item for item, _ in batch])
        except BaseException as e:
            if len(batch) == 1:
                batch[0][1].set_exception(e)
                return
            for one in batch:  # isolate the item at fault
                self._apply([one])
            return
        for (_, fut), r in zip(batch, results, strict=True):
            fut.set_result(r)
