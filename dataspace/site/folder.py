"""A connector's site folder: the holder's key, store, database, log and config.

Layout (DESIGN.md, "The site folder")::

    SITE/
      site.toml        config: org, created, settings (TOML)
      site.key         Ed25519 private key, PKCS#8 PEM, mode 0600
      site.key.pub     the site's public identity (JSON, see policy.identity)
      public.vkey      the site log's verifier key, C2SP signed-note vkey text
      site.duckdb      datasets, episodes, policies, contracts, ledger, flags
      store/datasets/<fingerprint-hex>/   canonical frames, Parquet (content-addressed)
      store/staging/   enrollments in progress (removed on failure and at open)
      log/             the site's transparency log (dataspace.audit)
      outbox.lock      one publisher of staged log entries at a time (policy.outbox)

DuckDB allows one writing process at a time, and a site is used by several
(the CLI, the connector service, the SuperNode's ClientApp). So nobody holds a
connection open: every unit of work opens one with :meth:`Site.db`, which
retries while another process holds the lock, and closes it at once.
"""

from __future__ import annotations

import contextlib
import random
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import duckdb
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.errors import DataspaceError, NotFoundError
from dataspace.site.identity import Identity, load_identity, load_private_key

CONFIG = "site.toml"
KEY = "site.key"
DB = "site.duckdb"
VKEY = "public.vkey"


class SiteError(DataspaceError):
    """A site folder that cannot be created or opened."""


class SiteBusyError(SiteError):
    """Another process kept the site's database locked for too long."""


@dataclass(frozen=True)
class Site:
    """An opened site folder. Cheap to create; holds no open handles."""

    root: Path

    # --- paths -------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def key_path(self) -> Path:
        return self.root / KEY

    @property
    def db_path(self) -> Path:
        return self.root / DB

    @property
    def vkey_path(self) -> Path:
        return self.root / VKEY

    @property
    def store_dir(self) -> Path:
        return self.root / "store" / "datasets"

    @property
    def staging_dir(self) -> Path:
        return self.root / "store" / "staging"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def dataset_dir(self, fingerprint_hex: str) -> Path:
        return self.store_dir / fingerprint_hex

    # --- identity and config -----------------------------------------------
    @cached_property
    def config(self) -> dict:
        return tomllib.loads(self.config_path.read_text())

    @property
    def org(self) -> str:
        return str(self.config["site"]["org"])

    @property
    def name(self) -> str:
        """The site's name: its key name in signed notes and its log's origin."""
        return str(self.config["site"]["name"])

    @cached_property
    def key(self) -> Ed25519PrivateKey:
        return load_private_key(self.key_path)

    @cached_property
    def identity(self) -> Identity:
        return load_identity(self.key_path)

    # --- database -----------------------------------------------------------
    @contextlib.contextmanager
    def db(
        self, read_only: bool = False, timeout_s: float = 30.0
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived DuckDB connection; retries while another process holds the lock."""
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while True:
            try:
                con = duckdb.connect(str(self.db_path), read_only=read_only)
                break
            except duckdb.ConnectionException as e:
                # DuckDB shares one database instance per file within a process and
                # refuses a second connection with another access mode. Threads of
                # one process (services="threads", the witness pushers) then share the
                # instance: a reader takes the writable one already open, which locks
                # nothing more; a writer waits for the readers to close.
                if "different configuration" not in str(e):
                    raise
                if read_only:
                    read_only = False
                    continue
                if time.monotonic() > deadline:
                    raise SiteBusyError(f"{self.db_path}: {e}") from e
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.25)
            except duckdb.IOException as e:
                if "lock" not in str(e).lower() or time.monotonic() > deadline:
                    raise SiteBusyError(f"{self.db_path}: {e}") from e
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.25)
        try:
            yield con
        finally:
            con.close()

    # --- lifecycle ------------------------------------------------------------
    @classmethod
    def open(cls, root: Path | str) -> Site:
        root = Path(root)
        if not (root / CONFIG).is_file() or not (root / KEY).is_file():
            raise NotFoundError(f"{root} is not a site folder (run `dataspace connector init`)")
        return cls(root.resolve())
