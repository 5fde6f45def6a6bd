"""The hub service: catalog, contract registry, run registry and the hub's audit log.

``create_app(data_dir)`` builds the FastAPI app; ``dataspace serve hub --data DIR
--port N`` runs it with uvicorn. The routes are in ``dataspace.hub.routes`` (one
module per group), the state they share in ``dataspace.hub.state``, and what
both services share (signatures, limits, errors, refusals) in
``dataspace.auth.service``. Everything under ``DATA``::

    DATA/hub.key, hub.key.pub   the hub's Ed25519 identity (role operator), made on first start
    DATA/hub.duckdb             participants, catalog, contracts, runs, budget reports
                                (dataspace.hub.store)
    DATA/log/                   the hub's transparency log (dataspace.audit); origin
                                dataspace.invalid/hub/HEX (the hub's name for older logs)
    DATA/nonces                 nonces of signed requests seen within the window (replay guard)
    DATA/refusals.jsonl         requests refused before a caller was authenticated
    DATA/runs/<run-id>/         run directories (``--runs-dir``, shared with the hub worker):
                                registration.json (written here), the ServerApp's files

Who may call what (roles from ``dataspace.site.identity``; a key the hub
does not know is a consumer):

========================  =========================================================
route                     roles
========================  =========================================================
GET  /v1/hub, /v1/whoami  any signed caller
GET  /v1/catalog          any signed caller (metadata only)
POST/DELETE /v1/catalog   holder (its own entries)
POST /v1/contracts        holder (contracts both parties signed: hub.registry)
GET  /v1/contracts        consumer: its own; holder: its datasets'; auditor, operator: all
POST /v1/runs, rounds     consumer (runs over its own contracts), operator
GET  /v1/runs             consumer: its own; holder: over its contracts; auditor, operator: all
GET  /v1/runs/{id}/files  the run's consumer, auditor, operator (allow-listed run files)
POST /v1/runs/{id}/finished  the run's consumer, operator (logs run.finished)
POST /v1/budget           holder (a statement its site signed, on a dataset it published)
GET  /v1/budget           holder: its own; auditor, operator: all
/v1/participants          operator (register holders, auditors, operators)
/v1/log/...               holder, auditor, operator (the log names consumers and contracts)
========================  =========================================================

The hub appends its own events to its log: catalog.published, contract.registered,
run.registered, round.registered, run.finished, access.refused. It never holds or serves data
rows, frames or per-episode values: only what connectors chose to publish. Budget
reports are kept, not logged: each is a statement its site signed (dataspace.hub.budgets).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from starlette.middleware import Middleware

from dataspace.auth.httpsig import WINDOW_S
from dataspace.auth.limits import DEFAULT_LIMITS, ConnectionLimits
from dataspace.auth.log_api import log_router
from dataspace.auth.service import Refusals, log_access, service_app
from dataspace.federated.rundir import MAX_RUN_FILE
from dataspace.hub.dashboard import Dashboard, dashboard_token
from dataspace.hub.read_cache import ReadCacheMiddleware
from dataspace.hub.routes import budget, catalog, contracts, info, runs
from dataspace.hub.state import DEFAULT_NAME, Hub, SuperLink
from dataspace.hub.witnesses import hub_pusher
from dataspace.site.identity import Identity


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """While the app runs, the holders' connectors are asked to cosign the hub's log."""
    app.state.witnessing.start()
    yield
    app.state.witnessing.stop()


def create_app(
    data_dir: Path | str,
    *,
    name: str = DEFAULT_NAME,
    trust: list[Identity] | tuple[Identity, ...] = (),
    window_s: int = WINDOW_S,
    runs_dir: Path | str | None = None,
    superlink: SuperLink | None = None,
    max_run_file: int = MAX_RUN_FILE,
    authorities: Iterable[str] = (),
    limits: ConnectionLimits = DEFAULT_LIMITS,
) -> FastAPI:
    """The hub app over ``data_dir`` (created if missing). ``trust``: identities to register;
    ``runs_dir``: the hub worker's run directories (default ``DATA/runs``); ``superlink``:
    where consumers submit runs (``GET /v1/hub``); ``max_run_file``: the largest run file
    served (bytes); ``authorities``: the names clients reach the hub by (``host[:port]``
    or URLs), besides the address they connect to; ``limits``: its body deadline."""
    hub = Hub(
        Path(data_dir),
        name,
        trust,
        runs_dir=Path(runs_dir) if runs_dir is not None else None,
        superlink=superlink,
        max_run_file=max_run_file,
    )
    # never named to a remote caller (auth.service.public_detail)
    private = (hub.data_dir, hub.runs_dir)
    app = service_app(
        title="dataspace hub",
        summary="Catalog, contract registry, run registry and audit log of the data space.",
        doc=__doc__,
        nonces=hub.data_dir / "nonces",
        directory=hub.store.lookup,
        refusals=Refusals(hub.data_dir / "refusals.jsonl", hub.record_refusal, private),
        private=private,
        window_s=window_s,
        authorities=authorities,
        limits=limits,
        # after the signature check: answers repeated reads
        inner=[Middleware(ReadCacheMiddleware, cache=hub.read_cache)],
        # /dashboard: unsigned (a browser cannot sign), local clients holding the hub's token
        outer=[
            Middleware(
                Dashboard, store=hub.store, hub_log=hub.log, token=dashboard_token(hub.data_dir)
            )
        ],
        lifespan=lifespan,
    )
    app.state.hub = hub
    # connectors cosign the hub's checkpoints
    app.state.witnessing = hub_pusher(hub.log.log, hub.store)
    # the audit area's log endpoints, and the hub's witness for site logs
    app.include_router(
        log_router(hub.log.log, hub.witness),
        prefix="/v1/log",
        dependencies=[Depends(log_access("operator"))],
    )
    for group in (info, catalog, contracts, runs, budget):
        app.include_router(group.router)
    return app
