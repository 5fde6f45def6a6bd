"""Site.db shared by threads of one process (the services run as threads in the demo)."""

from __future__ import annotations

import threading
import time

from dataspace.site.folder import Site


def test_reader_joins_a_writer_open_in_another_thread(site: Site) -> None:
    # DuckDB refuses a read-only connection while the same process holds the file
    # read-write; this raised ConnectionException (a 500 on /v1/offers in CI).
    with site.db() as writer:
        writer.execute("CREATE TABLE t (x INTEGER)")
        writer.execute("INSERT INTO t VALUES (1)")
        got: list = []

        def read() -> None:
            with site.db(read_only=True) as con:
                got.append(con.execute("SELECT x FROM t").fetchall())

        th = threading.Thread(target=read)
        th.start()
        th.join(10)
        assert got == [[(1,)]]


def test_writer_waits_for_readers_of_another_thread(site: Site) -> None:
    with site.db() as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    released = threading.Event()
    opened = threading.Event()

    def hold_reader() -> None:
        with site.db(read_only=True):
            opened.set()
            time.sleep(0.5)
            released.set()

    th = threading.Thread(target=hold_reader)
    th.start()
    opened.wait(10)
    with site.db() as con:
        # the writer got its connection only after the reader closed
        assert released.is_set()
        con.execute("INSERT INTO t VALUES (2)")
    th.join(10)
    with site.db(read_only=True) as con:
        assert con.execute("SELECT x FROM t").fetchall() == [(2,)]
