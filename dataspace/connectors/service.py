"""The connector service: a site's face to the data space (FastAPI over the site folder).

``create_app(site, hub_url)`` builds it; ``dataspace serve connector SITE --hub URL
--port N`` runs it. On start it publishes the site to the hub: catalog entries, agreed
contracts, each dataset's budget in a statement the site signs
(``dataspace.connectors.publisher``: signed with the site's key; retried in the
background while the hub is unreachable), then follows the site, so that what the
CLI or a training process changes reaches the hub within a second. It wraps the libraries, never
reimplements them: enrollment records (``dataspace.site.store``), policies,
contracts and the budget ledger (``dataspace.policy``), the site's transparency
log (``dataspace.audit``). The routes are in ``dataspace.connectors.routes`` (one
module per group), the state they share in ``dataspace.connectors.state``, and
what both services share (signatures, limits, errors, refusals) in
``dataspace.auth.service``.

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

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI

from dataspace.auth.httpsig import WINDOW_S
from dataspace.auth.limits import DEFAULT_LIMITS, ConnectionLimits
from dataspace.auth.log_api import log_router
from dataspace.auth.service import Refusals, log_access, service_app
from dataspace.connectors.routes import admin, contracts, datasets, dsp, vocab
from dataspace.connectors.state import Connector
from dataspace.connectors.witnesses import site_pusher
from dataspace.site.folder import Site
from dataspace.site.identity import Identity
from dataspace.site.log import open_site_log


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the app runs (with a hub): the catalog is published, and the hub and the
    other holders are asked to cosign SITE/log."""
    conn = app.state.connector
    publisher = conn.publisher
    if publisher is not None and conn.publish:
        publisher.start()
        app.state.witnessing.start()
    yield
    if publisher is not None:
        publisher.stop()
        app.state.witnessing.stop()


def create_app(
    site: Site | Path | str,
    hub_url: str | None,
    *,
    public_url: str | None = None,
    trust: list[Identity] | tuple[Identity, ...] = (),
    publish: bool = True,
    window_s: int = WINDOW_S,
    authorities: Iterable[str] = (),
    limits: ConnectionLimits = DEFAULT_LIMITS,
) -> FastAPI:
    """The connector app over a site folder; publishes to ``hub_url`` on start if given.

    Signed requests must name it: by ``public_url``, one of ``authorities`` (names
    clients reach it by, ``host[:port]`` or URLs) or the address they connect to.
    ``limits``: its body deadline."""
    site = site if isinstance(site, Site) else Site.open(site)
    service_dir = site.root / "service"
    service_dir.mkdir(exist_ok=True)
    conn = Connector(site, hub_url, public_url, trust, publish)
    private = (site.root,)  # never named to a remote caller (auth.service.public_detail)
    app = service_app(
        title=f"dataspace connector ({site.name})",
        summary="A data holder's connector: catalog, offers, contracts, budget, site log.",
        doc=__doc__,
        nonces=service_dir / "nonces",
        directory=conn.directory,
        refusals=Refusals(service_dir / "refusals.jsonl", conn.record_refusal, private),
        private=private,
        window_s=window_s,
        authorities=[*authorities, *([public_url] if public_url else [])],
        limits=limits,
        lifespan=lifespan,
    )
    app.state.connector = conn
    site_log = open_site_log(site)
    # the hub and the other holders cosign SITE/log (dataspace.connectors.witnesses)
    app.state.witnessing = site_pusher(site_log, conn.publisher, conn.holders)
    for group in (datasets, contracts, admin, vocab):
        app.include_router(group.router)
    dsp.install(app)  # Dataspace Protocol 2025-1: catalog, negotiation, their error shapes
    # the audit area's log endpoints over SITE/log, and the site's witness
    app.include_router(
        log_router(site_log, conn.witness),
        prefix="/v1/log",
        dependencies=[Depends(log_access("holder"))],
    )
    return app
