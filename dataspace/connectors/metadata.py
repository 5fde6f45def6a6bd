"""Metadata a holder states or refreshes after enrollment: licence, attachments, ranges.

A dataset's frames (and so its fingerprint and id) never change once enrolled;
two things about it may: the licence the holder grants (a source often names
none, and the quality check's accessibility dimension counts "licence stated"),
and whether the files its source references (LeRobot videos) are present (the
completeness dimension counts them). :func:`set_license` and
:func:`refresh_attachments` update the ``datasets`` row (and the catalog entry's
``dct:license``); the next quality check (``dataspace quality check``) counts
them. ``dataspace connector licence`` / ``connector attachments`` call these.

A third may change too: the feature ranges the holder declares (catalog key
``robot:declaredRanges``, :mod:`dataspace.connectors.ranges`), which the quality
check uses to narrow its out-of-range limits. Re-enrolling with another
declaration is refused, so :func:`set_declared_ranges` (``dataspace connector
ranges``) is the one way to declare, change or clear them after enrollment; it
checks a declaration as enrollment does and logs ``dataset.ranges`` before the
catalog entry changes, so the site's log shows every declaration the check applied.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dataspace.connectors.ranges import DECLARED_RANGES_KEY, check_ranges, stored_ranges
from dataspace.connectors.reader import inside, sha256_file
from dataspace.errors import DataspaceError
from dataspace.site import log as sitelog
from dataspace.site.folder import Site
from dataspace.site.store import DatasetRecord, ensure_tables, get_dataset

#: longest licence text (the hub's catalog model allows 200 characters)
MAX_LICENSE = 200
#: an SPDX licence expression (ids, LicenseRef-/DocumentRef-, AND/OR/WITH, parentheses)
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+\-:]*|\(|\)")


class MetadataError(DataspaceError):
    """A licence or attachment refresh that cannot be stored as asked."""

    exit_code = 2


def check_license(value: str) -> str:
    """``value`` stripped, when it reads as an SPDX licence expression; else MetadataError.

    Syntax only (offline: no list of ids to look up), e.g. ``CC-BY-4.0``,
    ``Apache-2.0``, ``MIT OR Apache-2.0``, ``LicenseRef-ACME-internal``.
    """
    text = " ".join(value.split())
    if not text:
        raise MetadataError("a licence must not be empty (an SPDX id such as CC-BY-4.0)")
    if len(text) > MAX_LICENSE:
        raise MetadataError(f"a licence is at most {MAX_LICENSE} characters, got {len(text)}")
    rest = _TOKEN.sub(" ", text).strip()
    if rest:
        raise MetadataError(
            f"{value!r} is not an SPDX licence expression (e.g. CC-BY-4.0, Apache-2.0, "
            "MIT OR Apache-2.0, LicenseRef-NAME): unexpected "
            f"{rest.split()[0]!r}"
        )
    depth = 0
    for t in _TOKEN.findall(text):
        depth += 1 if t == "(" else -1 if t == ")" else 0
        if depth < 0:
            break
    if depth != 0:
        raise MetadataError(f"{value!r}: unbalanced parentheses")
    return text


def set_license(site: Site, dataset: str, license: str) -> DatasetRecord:
    """State ``dataset``'s licence (an SPDX expression); returns the updated record."""
    text = check_license(license)
    rec = get_dataset(site, dataset)
    catalog = dict(rec.catalog or {})
    if catalog:
        catalog["dct:license"] = text
    with site.db() as con:
        ensure_tables(con)
        con.execute(
            "UPDATE datasets SET license = ?, catalog = ? WHERE dataset_id = ?",
            [text, json.dumps(catalog), rec.dataset_id],
        )
    return get_dataset(site, rec.dataset_id)


def refresh_attachments(site: Site, dataset: str, source: Path | None = None) -> DatasetRecord:
    """Look again for the files the dataset's source references (e.g. LeRobot videos).

    They are looked for under ``source`` (default: the folder it was enrolled
    from), each must resolve inside it; ``present`` and ``sha256`` are updated.
    """
    rec = get_dataset(site, dataset)
    if not rec.attachments:
        return rec
    root = Path(source) if source is not None else Path(rec.source_path or "")
    if not str(root) or not root.is_dir():
        raise MetadataError(
            f"{root} is not a folder: give the folder the dataset's files are in"
            if str(root)
            else "the dataset records no source folder: give the folder its files are in"
        )
    out = []
    for a in rec.attachments:
        full = root / str(a.get("path", ""))
        present = full.is_file()
        if present:
            inside(root, full)
        out.append(a | {"present": present, "sha256": sha256_file(full) if present else None})
    with site.db() as con:
        ensure_tables(con)
        con.execute(
            "UPDATE datasets SET attachments = ? WHERE dataset_id = ?",
            [json.dumps(out), rec.dataset_id],
        )
    return get_dataset(site, rec.dataset_id)


def set_declared_ranges(
    site: Site,
    dataset: str,
    declared: Mapping[str, Any] | None,
    where: Path | str | None = None,
) -> DatasetRecord:
    """Declare (``None``: clear) ``dataset``'s feature ranges; returns the updated record
    (:func:`declare_ranges`, which also says whether it changed)."""
    return declare_ranges(site, dataset, declared, where)[0]


def declare_ranges(
    site: Site,
    dataset: str,
    declared: Mapping[str, Any] | None,
    where: Path | str | None = None,
) -> tuple[DatasetRecord, bool]:
    """Declare (``None``: clear) ``dataset``'s feature ranges: (the updated record,
    whether the declaration changed), both decided under one open database.

    The declaration is checked as enrollment checks it, against the dataset's own state
    and action names (:func:`dataspace.connectors.ranges.check_ranges`; RangesError,
    naming ``where``, e.g. the file), before anything is written. The same declaration
    as the stored one (after normalisation: ``[0, 40]`` is ``[0.0, 40.0]``) changes
    nothing and logs nothing. Otherwise ``dataset.ranges`` (the new declaration and the
    one it replaces) is appended to the site's log first, and only then the catalog
    entry updated: a declaration the log cannot record is not applied (the error reaches
    the caller, nothing changed). A crash between the two leaves a logged declaration
    not applied; the holder's retry logs it again and applies it.

    The site's database stays open from the read to the update, so that a declaration
    from another process waits (DuckDB locks the file) and ``previous`` is what it replaced.
    """
    with site.db() as con:
        ensure_tables(con)
        rec = get_dataset(site, dataset)
        ranges = (
            None
            if declared is None
            else check_ranges(declared, rec.state_names, rec.action_names, where)
        )
        previous = stored_ranges(rec.catalog)
        if previous == ranges:
            return rec, False
        catalog = _with_ranges(rec, ranges)
        sitelog.record(
            site,
            "dataset.ranges",
            dataset_id=rec.dataset_id,
            fingerprint=rec.fingerprint,
            ranges=ranges,
            previous=previous,
        )
        con.execute(
            "UPDATE datasets SET catalog = ? WHERE dataset_id = ?",
            [json.dumps(catalog), rec.dataset_id],
        )
    return get_dataset(site, rec.dataset_id), True


def _with_ranges(rec: DatasetRecord, ranges: Mapping[str, Any] | None) -> dict[str, Any]:
    """``rec``'s catalog entry declaring ``ranges`` (None: none), its JSON-LD context
    naming the term as a JSON literal (an entry made before the term existed lacks it)."""
    if not rec.catalog:
        raise MetadataError(f"{rec.dataset_id} has no catalog entry to declare ranges in")
    catalog = dict(rec.catalog)
    catalog.pop(DECLARED_RANGES_KEY, None)
    if ranges is not None:
        catalog[DECLARED_RANGES_KEY] = ranges
        context = catalog.get("@context")
        if isinstance(context, dict) and DECLARED_RANGES_KEY not in context:
            catalog["@context"] = {**context, DECLARED_RANGES_KEY: {"@type": "@json"}}
    return catalog
