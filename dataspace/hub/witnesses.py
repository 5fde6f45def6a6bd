"""The hub's log, witnessed by the connectors (DESIGN.md, "Audit log": the logs witness each other).

Every registered holder whose catalog entries name a ``connector_url`` runs a
C2SP tlog-witness at ``CONNECTOR/v1/log/add-checkpoint`` under its own key
name (the site's name) and identity key, with key type 0x04. The hub pushes its
latest checkpoint there from a background thread (:class:`WitnessPusher`),
whenever its log grew; the cosignatures come back to ``DATA/log/cosigned/``.
A connector that is down is retried with back-off; requests never wait for it.

The current witness set is the holders' connectors the catalog names now; the
pusher writes it to ``DATA/log/witnesses.json`` (dataspace.audit.witnesspolicy),
and the witnessed checkpoint the hub serves is the newest one that every live
connector cosigned (or ``DATASPACE_WITNESS_QUORUM`` of them): a connector
failing for ``DATASPACE_WITNESS_STALE_S`` seconds (default 300) is stale and
no longer holds it back; a holder gone from the catalog stops counting.
"""

from __future__ import annotations

import base64
import binascii

from dataspace.audit.log import TransparencyLog
from dataspace.audit.witnessing import Peer, WitnessPusher, peer_for_identity, policy_settings
from dataspace.hub.store import HubStore

#: seconds between checks of the log's size (appends are noticed within this)
INTERVAL_S = 1.0


def holder_peers(store: HubStore) -> list[Peer]:
    """The witnesses of the hub's log: each holder's connector, as its catalog entries name it."""
    urls: dict[str, str] = {}
    for entry in list(store.catalog.values()):  # a C-level copy: safe against concurrent writes
        url, holder = entry.get("connector_url"), entry.get("holder")
        if url and holder:
            urls.setdefault(holder, url)
    peers = []
    participants = dict(store.participants)
    for key_id, url in sorted(urls.items()):
        p = participants.get(key_id)
        if p is None or p["role"] != "holder":
            continue
        try:
            peers.append(peer_for_identity(url, p["name"], base64.b64decode(key_id)))
        except (binascii.Error, ValueError):
            continue
    return peers


def hub_pusher(log: TransparencyLog, store: HubStore) -> WitnessPusher:
    """The :class:`WitnessPusher` of the hub's log (the hub's app starts and stops it)."""
    return WitnessPusher(log, lambda: holder_peers(store), interval=INTERVAL_S, **policy_settings())
