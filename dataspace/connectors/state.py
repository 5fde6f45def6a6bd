"""The connector's state over a site folder: the site, who is who, the publisher, the witness.

:class:`Connector` is made once by ``create_app`` and reached by every route
through the :data:`ConnectorDep` dependency (``app.state.connector``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, Request

from dataspace.audit.note import ALG_COSIGNATURE_V1, Verifier
from dataspace.audit.witness import Witness
from dataspace.audit.witnessing import service_logs
from dataspace.audit.witnesskey import endorse, load_or_create_witness_key
from dataspace.auth.service import Caller
from dataspace.connectors.publisher import Publisher
from dataspace.connectors.witnesses import Holders
from dataspace.errors import DataspaceError
from dataspace.policy import ContractError
from dataspace.site.folder import Site
from dataspace.site.identity import Identity
from dataspace.site.log import open_site_log, record


class Connector:
    """A site's connector: its site, the keys it knows, its publisher (None without a hub).

    The site's own key is the holder; ``trust`` identities have their role; the
    hub's key, once the publisher has learned it, is the operator. ``publish``:
    whether the service publishes to the hub (and gets SITE/log witnessed) while it runs.
    """

    def __init__(
        self,
        site: Site,
        hub_url: str | None,
        public_url: str | None = None,
        trust: Iterable[Identity] = (),
        publish: bool = True,
    ) -> None:
        self.site = site
        self.publish = publish
        self.known: dict[str, tuple[str, str]] = {site.identity.key_b64: (site.name, "holder")}
        for ident in trust:
            self.known[ident.key_b64] = (ident.name, ident.role)
        self.publisher = Publisher(site, hub_url, public_url) if hub_url else None
        #: the other holders of the data space, as the hub's catalog names them
        self.holders = Holders(site, self.publisher)
        #: the key this site cosigns others' checkpoints with, never its log key
        #: (SITE/witness.key, made on first start: dataspace.audit.witnesskey)
        self.witness_key = load_or_create_witness_key(site.root, site.name)
        with open_site_log(site, writable=False) as log:
            self.log_verifier = log.verifier
        self._endorsed: tuple[bytes, bytes] | None = None

    def directory(self, key_id: str) -> tuple[str, str] | None:
        """(name, role) of a key this connector knows, None for any other key."""
        if key_id in self.known:
            return self.known[key_id]
        if self.publisher is not None and key_id == self.publisher.hub_key:
            return ("hub", "operator")
        return None

    def record_refusal(self, caller: Caller, e: DataspaceError, what: dict[str, Any]) -> None:
        """A signed caller's refusal, in the site's log (auth.service.Refusals)."""
        if not isinstance(e, ContractError):  # the policy library logs its own refusals
            record(self.site, "access.refused", consumer=caller.key_id, **what)

    def witness(self) -> Witness | None:
        """The site's C2SP witness (state in SITE/witness): it cosigns the hub's checkpoints
        (key learned when publishing) and the other holders' (connectors.witnesses)."""
        p = self.publisher
        if p is None or p.hub_key is None or p.hub_name is None:
            return None
        w = Witness(
            self.site.root / "witness",
            self.site.name,
            self.witness_key,
            [],
            log_keys=[self.log_verifier.public_key],
        )
        # the hub's log first (pinned), under its old origin (its name) or its new one,
        # as it endorsed or as cosigned before (dataspace.audit.witnessing.service_logs)
        for v in [
            *service_logs(w, p.hub_name, base64.b64decode(p.hub_key), "hub"),
            *self.holders.log_verifiers(w),
        ]:
            w.trust(v)
        w.endorsement = self.endorsement(w)
        return w

    def endorsement(self, w: Witness) -> bytes:
        """The witness key and log key, endorsed by the site's identity key (the one the
        hub's registry and catalog name): what ``GET /v1/log/witness-key`` answers."""
        ident = self.site.identity.key_b64.encode()
        if self._endorsed is None or self._endorsed[0] != ident:
            v = Verifier(w.name, w.signer.public_key, ALG_COSIGNATURE_V1)
            self._endorsed = (ident, endorse(self.site.key, v, self.log_verifier))
        return self._endorsed[1]


async def connector_of(request: Request) -> Connector:
    """FastAPI dependency: the app's :class:`Connector`."""
    return request.app.state.connector


#: a route parameter: the connector's state
ConnectorDep = Annotated[Connector, Depends(connector_of)]
