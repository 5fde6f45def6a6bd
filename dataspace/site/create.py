"""Creating a site folder: key, config, store, database tables and log, all or nothing."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime
from pathlib import Path

from dataspace.site.folder import CONFIG, KEY, Site, SiteError
from dataspace.site.identity import new_identity
from dataspace.site.log import init_site_log
from dataspace.site.store import ensure_tables


def create_site(root: Path | str, org: str, name: str | None = None) -> Site:
    """Create a site folder; refuses to touch an existing one.

    Everything is built in a temporary sibling folder and renamed into place, so an
    interrupted creation leaves no half site.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SiteError(f"{root} already exists and is not empty; refusing to overwrite")
    name = name or _default_name(org, root)
    if any(c.isspace() or c == "+" for c in name):
        raise SiteError(f"site name {name!r} may not contain spaces or '+' (it is a key name)")
    tmp = root.with_name(f".{root.name}.init-{random.getrandbits(32):08x}")
    tmp.mkdir(parents=True)
    try:
        new_identity(tmp / KEY, name=name, role="holder")
        created = datetime.now(UTC).isoformat(timespec="seconds")
        (tmp / CONFIG).write_text(
            f'[site]\norg = {_toml_str(org)}\nname = {_toml_str(name)}\ncreated = "{created}"\n'
        )
        (tmp / "store" / "datasets").mkdir(parents=True)
        (tmp / "store" / "staging").mkdir(parents=True)
        site = Site(tmp)
        with site.db() as con:
            ensure_tables(con)
        # the log and its vkey are part of the site: made before the rename, so a
        # crash never leaves a site without its log
        init_site_log(site)
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Site(root.resolve())


def _default_name(org: str, root: Path) -> str:
    base = "".join(c if c.isalnum() or c in "-._" else "-" for c in f"{org}-{root.name}".lower())
    return base.strip("-") or "site"


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
