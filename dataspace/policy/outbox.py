"""The policy area's events reach SITE/log exactly once, whatever crashes in between.

A change in the site's DuckDB (a charge, a released round, an evaluation, an
agreed or ended contract, a published policy) and its entry in the site's log
are two writes to two stores. A ``kill -9`` between them once left an
acknowledged contract or a charged round without an entry, for good: a retry
saw the change done and logged nothing, and the honest holder's log failed
``audit verify`` from then on. The transactional outbox closes that window:

1. :func:`stage`: in the same DuckDB transaction as the change, the event (its
   kind and fields, as logged) goes into the ``outbox`` table;
2. :func:`publish`: after COMMIT, the event is appended to SITE/log, carrying
   its outbox id in the detail ``outbox``, and the row is marked with its log
   index;
3. :func:`flush`: before every policy action (and so on every retry and after
   every restart) each row left unmarked is published: unless the log already
   holds an entry with its outbox id (a crash between the append and the mark),
   which is then only marked.

So a change whose entry cannot be written is not acknowledged (the caller gets
the error, nothing of it is released), and the next action or retry completes
it with exactly one entry. ``DATASPACE_FAULT=outbox:KIND:POINT`` (``POINT`` is
``committed`` or ``appended``) ends the process with ``os._exit`` at that point:
the fault hook the crash tests use; nothing else reads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dataspace.audit.events import parse_event, plain
from dataspace.policy import store
from dataspace.site import log as events

if TYPE_CHECKING:
    import duckdb

    from dataspace.site.folder import Site

#: how far before an unmarked row's time :func:`flush` looks for its entry (clock slack)
SLACK = timedelta(minutes=5)


def _fault(kind: str, point: str) -> None:
    """Tests only: die here (no cleanup, as ``kill -9``) when ``DATASPACE_FAULT`` says so."""
    if os.environ.get("DATASPACE_FAULT") == f"outbox:{kind}:{point}":
        os._exit(137)


def stage(con: duckdb.DuckDBPyConnection, kind: str, **fields: Any) -> int:
    """Put one event in the outbox, inside the caller's transaction; returns its id."""
    (oid,) = con.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM outbox").fetchone()  # type: ignore[misc]
    as_json = {k: plain(v) for k, v in fields.items()}
    con.execute(
        "INSERT INTO outbox (id, kind, fields, staged_at) VALUES (?, ?, ?, ?)",
        [oid, kind, json.dumps(as_json), datetime.now(UTC).replace(tzinfo=None)],
    )
    return int(oid)


def publish(site: Site, oid: int) -> int:
    """Append staged event ``oid`` to SITE/log and mark it; returns its log index."""
    with _publishing(site):
        return _publish_locked(site, oid)


@contextlib.contextmanager
def _publishing(site: Site) -> Iterator[None]:
    """One publisher at a time per site, across threads and processes (``flock``).

    Reading a row's mark, appending its entry and marking it must not interleave
    with another publisher's: two runs charging one contract at once each flushed
    the other's freshly committed row while its owner was publishing it, and the
    same ``round.started`` reached the log twice (the log then said more was
    charged than the ledger had).
    """
    with open(site.root / "outbox.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _publish_locked(site: Site, oid: int) -> int:
    with site.db() as con:
        row = con.execute(
            "SELECT kind, fields, log_index FROM outbox WHERE id = ?", [oid]
        ).fetchone()
    if row is None:
        raise KeyError(f"outbox event {oid} does not exist")
    kind, fields, index = row
    if index is not None:
        return int(index)
    _fault(kind, "committed")
    index = events.record(site, kind, outbox=oid, **json.loads(fields))
    _fault(kind, "appended")
    _mark(site, oid, index)
    return index


def _mark(site: Site, oid: int, index: int) -> None:
    with site.db() as con:
        con.execute("UPDATE outbox SET log_index = ? WHERE id = ?", [index, oid])


def flush(site: Site) -> int:
    """Publish every staged event left unmarked (module docstring); returns how many.

    One query when there are none (the usual case). Otherwise the log is read
    backwards from its end down to the oldest unmarked event's time (less
    :data:`SLACK`), for entries that carry their outbox id: those rows are only
    marked, the others appended.
    """
    with site.db() as con:
        store.ensure_tables(con)
        (unmarked,) = con.execute(  # type: ignore[misc]
            "SELECT count(*) FROM outbox WHERE log_index IS NULL"
        ).fetchone()
    if not unmarked:
        return 0
    with _publishing(site):
        return _flush_locked(site)


def _flush_locked(site: Site) -> int:
    with site.db() as con:
        rows = con.execute(
            "SELECT id, staged_at FROM outbox WHERE log_index IS NULL ORDER BY id"
        ).fetchall()
    if not rows:  # another publisher completed them while this one waited
        return 0
    oldest = rows[0][1].replace(tzinfo=UTC) - SLACK
    pending = {int(r[0]) for r in rows}
    found: dict[int, int] = {}
    with events.open_site_log(site, writable=False) as log:
        end = log.size
        while end > 0 and len(found) < len(pending):
            start = max(0, end - 512)
            batch = log.entries(start, end)
            older = False
            for i in range(len(batch) - 1, -1, -1):
                ev = parse_event(batch[i])
                oid = ev.fields.get("outbox")
                if type(oid) is int and oid in pending:
                    found[oid] = start + i
                older = older or ev.time < oldest
            if older:
                break
            end = start
    for oid in sorted(pending):
        if oid in found:
            _mark(site, oid, found[oid])
        else:
            _publish_locked(site, oid)
    return len(pending)
