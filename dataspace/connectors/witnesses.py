"""A site's log, witnessed by the hub (DESIGN.md, "Audit log": the logs witness each other).

The hub runs a C2SP tlog-witness at ``HUB/v1/log/add-checkpoint`` under its
name and identity key (type 0x04); the connector learns both when it publishes
its catalog (``GET /v1/hub``). A background :class:`WitnessPusher` pushes the
site log's latest checkpoint there whenever SITE/log grew, whoever appended
(the service, the budget ledger in a training process, the CLI): it watches the
log's size. Cosignatures come back to ``SITE/log/cosigned/``.
"""

from __future__ import annotations

import base64

from dataspace.audit.log import TransparencyLog
from dataspace.audit.witnessing import Peer, WitnessPusher, peer_for_identity

#: seconds between checks of SITE/log's size
INTERVAL_S = 1.0


def hub_peers(publisher) -> list[Peer]:  # publisher: dataspace.connectors.service.Publisher
    """The hub's witness, once the publisher has learned the hub's name and key."""
    if publisher is None or publisher.hub_key is None or publisher.hub_name is None:
        return []
    return [
        peer_for_identity(
            publisher.hub_url, publisher.hub_name, base64.b64decode(publisher.hub_key)
        )
    ]


def site_pusher(log: TransparencyLog, publisher) -> WitnessPusher:
    return WitnessPusher(log, lambda: hub_peers(publisher), interval=INTERVAL_S)
