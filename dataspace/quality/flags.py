"""Per-episode quality flags, kept on site (issue 6, "Per-episode flags").

Table ``episode_flags(dataset_id, episode_index, check, detail)`` in the site's
DuckDB: one row per failing (episode, check). A new check of a dataset
replaces all of its rows in one transaction, so the table always holds the
latest run. Training excludes flagged episodes with ``--exclude-flagged``
through :func:`flagged_episodes`. Flags never leave the site.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import duckdb

from dataspace.site.folder import Site


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``episode_flags`` if missing."""
    con.execute(
        """
        CREATE TABLE IF NOT EXISTS episode_flags (
            dataset_id VARCHAR, episode_index BIGINT, "check" VARCHAR, detail VARCHAR,
            PRIMARY KEY (dataset_id, episode_index, "check"))
        """
    )


def replace_flags(site: Site, dataset_id: str, flags: Iterable[tuple[int, str, str]]) -> int:
    """Replace a dataset's flags with ``(episode_index, check, detail)`` rows; returns the count."""
    rows = {(int(e), str(c)): str(d) for e, c, d in flags}
    with site.db() as con:
        ensure_tables(con)
        con.begin()
        con.execute("DELETE FROM episode_flags WHERE dataset_id = ?", [dataset_id])
        if rows:
            con.executemany(
                "INSERT INTO episode_flags VALUES (?, ?, ?, ?)",
                [[dataset_id, e, c, d] for (e, c), d in sorted(rows.items())],
            )
        con.commit()
    return len(rows)


def flagged_episodes(site: Site, dataset_id: str, checks: Sequence[str] | None = None) -> set[int]:
    """Episode indices with at least one flag (optionally only from ``checks``).

    An unchecked dataset has no flags: the empty set (nothing excluded).
    """
    with site.db() as con:
        if not _has_table(con):
            return set()
        sql = "SELECT DISTINCT episode_index FROM episode_flags WHERE dataset_id = ?"
        args: list[object] = [dataset_id]
        if checks:
            sql += f' AND "check" IN ({", ".join("?" * len(checks))})'
            args += list(checks)
        return {int(r[0]) for r in con.execute(sql, args).fetchall()}


def list_flags(site: Site, dataset_id: str) -> list[tuple[int, str, str]]:
    """Every flag of a dataset as ``(episode_index, check, detail)``, sorted."""
    with site.db() as con:
        if not _has_table(con):
            return []
        return [
            (int(e), str(c), str(d))
            for e, c, d in con.execute(
                'SELECT episode_index, "check", detail FROM episode_flags WHERE dataset_id = ? '
                'ORDER BY episode_index, "check"',
                [dataset_id],
            ).fetchall()
        ]


def _has_table(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'episode_flags'"
        ).fetchone()[0]
    )
