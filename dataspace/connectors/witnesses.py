"""A site's log, witnessed by the hub and by the other connectors; theirs, by this one.

DESIGN.md, "Audit log": the logs witness each other. The hub runs a C2SP
tlog-witness at ``HUB/v1/log/add-checkpoint`` under its name and identity key
(type 0x04); the connector learns both when it publishes its catalog
(``GET /v1/hub``). Every connector runs one too (``/v1/log/add-checkpoint``,
state in ``SITE/witness``), which trusts the hub's log and the logs of the other
holders in the hub's catalog (key = the holder's identity; origin = the holder's name
for a log made before URL origins, else ``dataspace.invalid/site/HEX`` derived from
the key: dataspace.audit.witnesskey, "Log origins"; the hub's likewise).
A log is its key: the hub's key, learned first, is pinned for the hub's name, and a
catalog name that is the hub's, this site's or held by two keys is trusted for none
of them (the hub keeps names unique; a catalog that does not is not believed).

A background :class:`WitnessPusher` pushes the site log's latest checkpoint to
the hub's witness and to every other holder's connector whenever SITE/log grew,
whoever appended (the service, the budget ledger in a training process, the
CLI): it watches the log's size. Cosignatures come back to ``SITE/log/cosigned/``.
The catalog is read by the pusher's thread only (every ``CATALOG_S`` seconds);
the witness endpoint uses what was read last, so a request never waits on the hub.

The current witness set (the hub, the other holders) is written to
``SITE/log/witnesses.json`` after each pass; SITE/log's witnessed checkpoint is
the newest one all live witnesses cosigned (dataspace.audit.witnesspolicy;
``DATASPACE_WITNESS_STALE_S``, ``DATASPACE_WITNESS_QUORUM``). A checkpoint this
connector's witness refuses as another history (HTTP 422) is kept in
``SITE/witness/refused/`` as evidence (``Witness.refused``).
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from dataclasses import dataclass, field

import httpx

from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import Verifier
from dataspace.audit.witness import Witness
from dataspace.audit.witnessing import (
    Peer,
    WitnessPusher,
    peer_for_identity,
    policy_settings,
    service_logs,
)
from dataspace.auth.client import call, signed_client
from dataspace.connectors.publisher import Publisher
from dataspace.errors import DataspaceError
from dataspace.site.folder import Site

#: seconds between checks of SITE/log's size
INTERVAL_S = 1.0
#: seconds between reads of the hub's catalog (who the other holders are, where)
CATALOG_S = 5.0


@dataclass(frozen=True)
class Holder:
    name: str
    key: bytes
    url: str


@dataclass
class Holders:
    """The other holders of the data space, as the hub's catalog names them."""

    site: Site
    publisher: Publisher | None
    holders: list[Holder] = field(default_factory=list)
    _read_at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> list[Holder]:
        """Re-read the catalog when due (pusher thread only); keep the last on failure."""
        p = self.publisher
        if p is None or p.hub_key is None or time.monotonic() - self._read_at < CATALOG_S:
            return self.holders
        self._read_at = time.monotonic()
        own = self.site.identity.key_b64
        found: dict[str, Holder] = {}
        try:
            with signed_client(p.hub_url, self.site.key) as hub:
                offset = 0
                while True:
                    page = call(hub, "GET", "/v1/catalog", params={"limit": 1000, "offset": offset})
                    for e in page["entries"]:
                        holder, name, url = (
                            e.get("holder"),
                            e.get("holder_name"),
                            e.get("connector_url"),
                        )
                        if holder and holder != own and name and url and holder not in found:
                            found[holder] = Holder(name, base64.b64decode(holder), url)
                    offset += len(page["entries"])
                    if not page["entries"] or offset >= page["total"]:
                        break
        except (DataspaceError, httpx.HTTPError, OSError, KeyError, binascii.Error):
            return self.holders
        with self._lock:
            self.holders = sorted(found.values(), key=lambda h: h.name)
        return self.holders

    def trusted(self) -> list[Holder]:
        """The other holders whose logs this connector's witness trusts besides the hub's:
        never one under the hub's name or this site's, nor a name two keys claim."""
        with self._lock:
            holders = list(self.holders)
        keys: dict[str, set[bytes]] = {}
        for h in holders:
            keys.setdefault(h.name, set()).add(h.key)
        taken = {self.site.name}
        if self.publisher is not None and self.publisher.hub_name is not None:
            taken.add(self.publisher.hub_name)
        return [h for h in holders if h.name not in taken and len(keys[h.name]) == 1]

    def log_verifiers(self, witness: Witness) -> list[Verifier]:
        """The other holders' logs ``witness`` trusts: for each :meth:`trusted` holder, its
        site log under its old origin (its name) or its new one, as it endorsed or as
        ``witness`` cosigned before (:func:`dataspace.audit.witnessing.service_logs`)."""
        return [v for h in self.trusted() for v in service_logs(witness, h.name, h.key, "site")]


def hub_peers(publisher: Publisher | None) -> list[Peer]:
    """The hub's witness, once the publisher has learned the hub's name and key."""
    if publisher is None or publisher.hub_key is None or publisher.hub_name is None:
        return []
    return [
        peer_for_identity(
            publisher.hub_url, publisher.hub_name, base64.b64decode(publisher.hub_key)
        )
    ]


def site_pusher(
    log: TransparencyLog, publisher: Publisher | None, holders: Holders | None = None
) -> WitnessPusher:
    """The pusher of SITE/log: to the hub's witness and the other holders' connectors."""

    def peers() -> list[Peer]:
        others = holders.refresh() if holders is not None else []
        return hub_peers(publisher) + [peer_for_identity(h.url, h.name, h.key) for h in others]

    return WitnessPusher(log, peers, interval=INTERVAL_S, **policy_settings())
