"""Metadata a holder states or refreshes after enrollment: licence, attachments.

A dataset's frames (and so its fingerprint and id) never change once enrolled;
two things about it may: the licence the holder grants (a source often names
none, and the quality check's accessibility dimension counts "licence stated"),
and whether the files its source references (LeRobot videos) are present (the
completeness dimension counts them). :func:`set_license` and
:func:`refresh_attachments` update the ``datasets`` row (and the catalog entry's
``dct:license``); the next quality check (``dataspace quality check``) counts
them. ``dataspace connector licence`` / ``connector attachments`` call these.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dataspace.connectors.reader import inside, sha256_file
from dataspace.errors import DataspaceError
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
