"""The connector service: a site's face to the data space (FastAPI over the site folder).

``create_app(site, hub_url)`` builds it; ``dataspace serve connector SITE --hub URL
--port N`` runs it. On start it publishes the site's catalog entries to the hub
(signed with the site's key; retried in the background while the hub is
unreachable). It wraps the libraries, never reimplements them: enrollment
records (``connectors.store``), policies, contracts and the budget ledger
(``dataspace.policy``), the site's transparency log (``dataspace.audit``).

Who may call what (the site's own key is the holder; identities given with
``--trust`` have their role; the hub's key is the operator; any other key that
signs correctly is a consumer):

===========================================  ================================
route                                        roles
===========================================  ================================
GET  /v1/datasets[/{id}]                     any signed caller (catalog metadata)
POST /v1/offers                              any (evaluates the policy, changes nothing)
POST /v1/contracts, .../{id}/countersign     consumer (for itself)
GET  /v1/contracts[/{id}]                    consumer: its own; holder, auditor: all
/v1/admin/...                                holder (pending contracts, budget, policy)
/v1/log/...                                  holder, auditor, operator
===========================================  ================================

It never returns rows, frames or exact per-episode values: only the dataset
level catalog entry, policy decisions, contracts, budgets and the log.
Refusals of a known caller are logged to the site's log as ``access.refused``;
requests refused before the caller is known go to ``SITE/service/refusals.jsonl``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import duckdb
import httpx
from fastapi import Depends, FastAPI, Request
from starlette.types import Scope

from dataspace.auth.client import ServiceUnavailableError, call, signed_client
from dataspace.auth.httpsig import WINDOW_S
from dataspace.auth.nonces import FileNonceStore
from dataspace.auth.service import (
    ERROR_RESPONSES,
    PUBLIC_LOG,
    PUBLIC_PATHS,
    SIGNATURE_DOC,
    Caller,
    PrivatePaths,
    SignedRequests,
    caller_of,
    error_code,
    install_error_handlers,
    public_detail,
    require,
    require_unless_public,
)
from dataspace.connectors import models as m
from dataspace.connectors.site import Site
from dataspace.connectors.store import DatasetRecord, get_dataset, list_datasets
from dataspace.errors import DataspaceError, NotFoundError
from dataspace.policy.contracts import ContractError
from dataspace.policy.identity import Identity

log = logging.getLogger("dataspace.connector")

AnyCaller = Annotated[Caller, Depends(caller_of)]
Holder = Annotated[Caller, Depends(require("holder"))]

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


def dataset_view(site: Site, rec: DatasetRecord) -> dict[str, Any]:
    return publish_request(site, rec, None) | {"holder": site.identity.key_b64}


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


def create_app(
    site: Site | Path | str,
    hub_url: str | None,
    *,
    public_url: str | None = None,
    trust: list[Identity] | tuple[Identity, ...] = (),
    publish: bool = True,
    window_s: int = WINDOW_S,
) -> FastAPI:
    """The connector app over a site folder; publishes to ``hub_url`` on start if given."""
    site = site if isinstance(site, Site) else Site.open(site)
    service_dir = site.root / "service"
    service_dir.mkdir(exist_ok=True)
    private = (site.root,)  # never named to a remote caller (auth.service.public_detail)
    known: dict[str, tuple[str, str]] = {site.identity.key_b64: (site.name, "holder")}
    for ident in trust:
        known[ident.key_b64] = (ident.name, ident.role)
    publisher = Publisher(site, hub_url, public_url) if hub_url else None

    def directory(key_id: str) -> tuple[str, str] | None:
        if key_id in known:
            return known[key_id]
        if publisher is not None and key_id == publisher.hub_key:
            return ("hub", "operator")
        return None

    refusals_path = service_dir / "refusals.jsonl"

    def on_refused(scope: Scope, e: DataspaceError, caller: Caller | None) -> None:
        what = {
            "reason": error_code(e),
            # the site log is read by remote auditors and the hub: no local paths in it
            "detail": public_detail(str(e), private)[:500],
            "method": scope.get("method"),
            "path": scope.get("path"),
        }
        if caller is None:
            fd = os.open(refusals_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps({"time": time.time(), **what}) + "\n").encode())
            finally:
                os.close(fd)
        elif not isinstance(e, ContractError):  # the policy library logs its own refusals
            from dataspace.connectors.sitelog import record

            record(site, "access.refused", consumer=caller.key_id, **what)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        witnessing = getattr(app.state, "witnessing", None)  # the hub cosigns SITE/log
        if publisher is not None and publish:
            publisher.start()
            witnessing.start()
        yield
        if publisher is not None:
            publisher.stop()
            witnessing.stop()

    app = FastAPI(
        title=f"dataspace connector ({site.name})",
        version="1",
        summary="A data holder's connector: catalog, offers, contracts, budget, site log.",
        description=(__doc__ or "").split("\n\n", 1)[0] + "\n" + SIGNATURE_DOC,
        responses=ERROR_RESPONSES,
        lifespan=lifespan,
    )
    app.state.site = site
    app.state.publisher = publisher
    app.add_middleware(
        SignedRequests,
        nonces=FileNonceStore(service_dir / "nonces"),
        directory=directory,
        on_refused=on_refused,
        window_s=window_s,
        public_paths=PUBLIC_PATHS | PUBLIC_LOG,
    )
    # error answers (the log router's own included) never name a local path
    app.add_middleware(PrivatePaths, private=private)
    install_error_handlers(app, on_refused, private=private)

    @app.get("/healthz", response_model=m.Health, summary="Liveness (no signature needed)")
    def healthz() -> m.Health:
        return m.Health(
            service="connector",
            name=site.name,
            published=None if publisher is None else publisher.done.is_set(),
            # public (no signature): the error text without the site's paths
            publish_error=None
            if publisher is None or publisher.error is None
            else public_detail(publisher.error, private),
        )

    # --- catalog -----------------------------------------------------------------
    @app.get("/v1/datasets", response_model=list[m.DatasetView], summary="This site's datasets")
    def datasets(caller: AnyCaller) -> list[dict[str, Any]]:
        return [dataset_view(site, r) for r in list_datasets(site)]

    @app.get("/v1/datasets/{dataset_id}", response_model=m.DatasetView, summary="One dataset")
    def dataset(dataset_id: str, caller: AnyCaller) -> dict[str, Any]:
        try:
            rec = get_dataset(site, dataset_id)
        except NotFoundError as e:  # the store's text names the site folder; this one does not
            raise NotFoundError(f"dataset {dataset_id!r} is not enrolled at this site") from e
        return dataset_view(site, rec)

    @app.post("/v1/admin/publish", response_model=m.Published, summary="Publish to the hub now")
    def republish(caller: Holder) -> m.Published:
        if publisher is None:
            raise NotFoundError("this connector was started without a hub")
        return m.Published(published=publisher.publish_once())

    _mount_contracts(app, site, publisher)
    _mount_log(app, site, publisher)
    return app


def _mount_contracts(app: FastAPI, site: Site, publisher: Publisher | None) -> None:
    from dataspace.connectors import contracts_api

    contracts_api.mount(app, site, publisher)


def _mount_log(app: FastAPI, site: Site, publisher: Publisher | None) -> None:
    """The audit area's log endpoints over SITE/log under /v1/log, and the site's witness.

    The witness (C2SP tlog-witness, state in SITE/witness) cosigns the hub's
    checkpoints and the other holders' (dataspace.connectors.witnesses); it trusts
    the hub log key learned when publishing to the hub.
    The checkpoint and add-checkpoint are public (see dataspace.hub.app).
    """
    from dataspace.audit.api import log_router
    from dataspace.audit.note import Verifier
    from dataspace.audit.witness import Witness
    from dataspace.connectors.sitelog import open_site_log

    def witness() -> Witness | None:
        if publisher is None or publisher.hub_key is None or publisher.hub_name is None:
            return None
        hub = Verifier(publisher.hub_name, base64.b64decode(publisher.hub_key))
        # and the other holders' logs, as the hub's catalog names them (connectors.witnesses)
        return Witness(site.root / "witness", site.name, site.key, [hub, *holders.log_verifiers()])

    from dataspace.connectors.witnesses import Holders, site_pusher

    holders = Holders(site, publisher)
    site_log = open_site_log(site)
    app.state.witnessing = site_pusher(site_log, publisher, holders)
    app.include_router(
        log_router(site_log, witness),
        prefix="/v1/log",
        dependencies=[Depends(_log_access)],
    )


_read_log = require_unless_public(PUBLIC_LOG, "holder", "auditor", "operator")
_append_log = require("holder")


async def _log_access(request: Request) -> None:
    """Log routes: appends by the holder only; reads as PUBLIC_LOG and _read_log say."""
    if request.url.path.endswith("/append"):
        await _append_log(request)
    else:
        await _read_log(request)


__all__ = ["Publisher", "create_app", "publish_request"]
