"""What a connector tells the hub: its catalog entries and its agreed contracts.

:class:`Publisher` publishes the site's catalog to the hub on start (signed with
the site's key; retried in the background while the hub is unreachable) and
copies each agreed contract to the hub's contract registry. It is also where the
connector learns the hub's name and key (``GET /v1/hub``), which its witness trusts.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import duckdb
import httpx

from dataspace import policy
from dataspace.auth.client import ServiceUnavailableError, call, signed_client
from dataspace.errors import DataspaceError
from dataspace.site.folder import Site
from dataspace.site.store import DatasetRecord, list_datasets

log = logging.getLogger("dataspace.connector")

#: seconds between attempts to publish to an unreachable hub (doubling up to the last)
RETRY_S = (0.5, 1, 2, 5, 10, 30)


def publish_request(site: Site, rec: DatasetRecord, public_url: str | None) -> dict[str, Any]:
    """The hub's PublishRequest for one dataset: dataset-level metadata only."""
    return {
        "dataset_id": rec.dataset_id,
        "fingerprint": rec.fingerprint,
        "dcat": rec.catalog,
        "title": rec.name,
        "robot_type": rec.robot_type,
        "fps": rec.fps,
        "tasks": list(rec.tasks),
        "episodes": rec.episodes,
        "frames": rec.frames,
        "state_dim": rec.state_dim,
        "action_dim": rec.action_dim,
        "license": rec.license,
        "format": rec.format,
        "quality_score": quality_score(site, rec.dataset_id),
        "connector_url": public_url,
        "privacy_unit": privacy_unit(site),
    }


def privacy_unit(site: Site) -> str | None:
    """What one unit of epsilon protects at this site (``site.toml [training]
    privacy_unit``, read here without importing the training code and torch);
    None for a value the training code would refuse."""
    unit = site.config.get("training", {}).get("privacy_unit", "frame")
    return unit if unit in ("frame", "episode") else None


def quality_score(site: Site, dataset_id: str) -> float | None:
    """The latest overall quality score (0..100) of a dataset, None if never checked.

    Read straight from the quality area's ``quality_reports`` table (the query of
    ``dataspace.quality.report.latest_score``): importing the quality package
    pulls in Great Expectations, which takes seconds a service start need not pay.
    """
    with site.db(read_only=True) as con:
        try:
            row = con.execute(
                "SELECT score FROM quality_reports WHERE dataset_id = ? "
                "ORDER BY created_at DESC LIMIT 1",
                [dataset_id],
            ).fetchone()
        except duckdb.CatalogException:  # no quality report ever made at this site
            return None
    return None if row is None or row[0] is None else float(row[0])


def hub_record(c: policy.Contract, connector_url: str | None) -> dict[str, Any]:
    """What the hub's contract registry keeps of a contract (terms, state, signatures)."""
    return {
        "contract_id": c.terms.contract_id,
        "dataset_id": c.terms.dataset_id,
        "fingerprint": c.terms.fingerprint,
        "consumer": c.consumer.key_b64,
        "purpose": c.terms.purpose,
        "template": c.terms.template,
        "epsilon": c.terms.epsilon,
        "delta": c.terms.delta,
        "rounds": c.terms.rounds,
        "until": c.terms.to_json()["until"],
        "state": c.state,
        "connector_url": connector_url,
        "agreement": c.agreement().to_json(),
    }


class Publisher:
    """Publishes the site's catalog to the hub; retried in a daemon thread until it succeeds."""

    def __init__(self, site: Site, hub_url: str, public_url: str | None) -> None:
        self.site = site
        self.hub_url = hub_url
        self.public_url = public_url
        self.published = 0
        self.error: str | None = None
        self.done = threading.Event()
        self.hub_key: str | None = None
        self.hub_name: str | None = None
        self._stop = threading.Event()

    def publish_once(self) -> int:
        with signed_client(self.hub_url, self.site.key) as hub:
            info = call(hub, "GET", "/v1/hub")
            self.hub_key = info["public_key"]
            self.hub_name = info["name"]
            n = 0
            for rec in list_datasets(self.site):
                call(
                    hub,
                    "POST",
                    "/v1/catalog",
                    json=publish_request(self.site, rec, self.public_url),
                )
                n += 1
        self.published = n
        self.error = None
        self.done.set()
        return n

    def run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                n = self.publish_once()
                log.info("published %d catalog entries to %s", n, self.hub_url)
                return
            except (DataspaceError, httpx.HTTPError, OSError) as e:
                self.error = str(e)
                log.warning("publishing to %s failed: %s", self.hub_url, e)
            self._stop.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1

    def start(self) -> None:
        threading.Thread(target=self.run, name="catalog-publisher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def register_agreed(self, c: policy.Contract) -> None:
        """Copy ``c`` to the hub's registry in the background, once it is agreed."""
        if c.state == "agreed":
            record = hub_record(c, self.public_url)
            threading.Thread(target=self.register_contract, args=(record,), daemon=True).start()

    def register_contract(self, record: dict[str, Any]) -> None:
        """Copy an agreed contract to the hub's registry (the site is the truth).

        Retried (RETRY_S) while the hub cannot be reached, e.g. while it restarts after a
        crash (tests/assurance/test_hub_faults.py); a refusal by the hub is not retried.
        """
        attempt = 0
        while not self._stop.is_set():
            try:
                with signed_client(self.hub_url, self.site.key) as hub:
                    call(hub, "POST", "/v1/contracts", json=record)
                return
            except (ServiceUnavailableError, httpx.HTTPError, OSError) as e:
                log.warning("registering contract %s at the hub: %s", record["contract_id"], e)
            except DataspaceError as e:
                log.warning("the hub refused contract %s: %s", record["contract_id"], e)
                return
            self._stop.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1
