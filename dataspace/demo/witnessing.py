"""The demo's logs witness each other before the auditor looks (DESIGN.md, "Audit log").

With services, the hub's witnessing thread pushes the hub's checkpoints to every
connector's witness and each connector's pushes its site log to the hub's
(:mod:`dataspace.hub.witnesses`, :mod:`dataspace.connectors.witnesses`). The
demo waits, before stopping the services, until the hub's latest checkpoint is
cosigned by every connector and each site's latest by the hub, so the auditor
sees the witnesses; and it adds the witness keys to the auditor's trusted keys.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.cosignature import witness_vkey
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import parse_note
from dataspace.connectors.site import Site

#: how long the demo waits for the witnesses (they push within about a second)
TIMEOUT_S = 60.0


def _cosigners(log_dir: Path) -> tuple[int, int, set[str]]:
    """(log size, witnessed checkpoint size, its witnesses) of a log folder, read-only."""
    with TransparencyLog.open(log_dir) as log:
        note = log.witnessed_checkpoint()
        names = {s.name for s in parse_note(note).signatures} - {log.origin}
        return log.size, checkpoint_of_note(note).size, names


def await_witnesses(
    services: Any, sites: list[Site], step: Callable[[str], None], timeout: float = TIMEOUT_S
) -> list[Path]:
    """Wait for the cosignatures (module docstring); returns the hub witness's vkey file.

    Only for a hub this demo started (an external hub witnesses on its own terms).
    Never fails the demo: after ``timeout`` it says what is missing and goes on.
    """
    if services.hub is None or not services.hub_info:
        return []
    hub_name = str(services.hub_info["name"])
    vkey = services.workdir / "auditor" / "hub-witness.vkey"
    raw = base64.b64decode(services.hub_info["public_key"])
    vkey.write_text(witness_vkey(hub_name, raw) + "\n")
    logs = {hub_name: (services.workdir / "hub" / "log", {s.name for s in sites})}
    logs |= {s.name: (s.log_dir, {hub_name}) for s in sites}
    step("witnesses: the connectors cosign the hub's log, the hub each site's")
    deadline = time.monotonic() + timeout
    while True:
        missing = []
        for origin, (folder, want) in logs.items():
            size, cosigned, names = _cosigners(folder)
            if cosigned < size or not want <= names:
                missing.append(f"{origin} (size {size}, cosigned {cosigned} by {sorted(names)})")
        if not missing:
            break
        if time.monotonic() > deadline:
            step(f"witnesses: still missing after {timeout:.0f}s: {'; '.join(missing)}")
            return [vkey]
        time.sleep(0.25)
    step(
        f"witnesses: {hub_name}'s log cosigned by {', '.join(sorted(logs[hub_name][1]))}; "
        f"each site's by {hub_name}"
    )
    return [vkey]
