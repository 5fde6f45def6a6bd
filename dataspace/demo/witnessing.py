"""The demo's logs witness each other before the auditor looks (DESIGN.md, "Audit log").

With services, the hub's witnessing thread pushes the hub's checkpoints to every
connector's witness and each connector's pushes its site log to the hub's and
the other connectors' (:mod:`dataspace.hub.witnesses`,
:mod:`dataspace.connectors.witnesses`). The demo waits, before stopping the
services, until the hub's latest checkpoint is cosigned by every connector and
each site's latest by the hub and the other connectors, so the auditor sees the
witnesses; and it adds the witness keys to the auditor's trusted keys.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.cosignature import witness_vkey
from dataspace.audit.crosscheck import cross_check
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import parse_note
from dataspace.audit.source import open_source
from dataspace.audit.witnesskey import WITNESS_VKEY
from dataspace.errors import DataspaceError
from dataspace.site.folder import Site

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
    # the hub cosigns with its witness key (DATA/witness.vkey), not its identity key
    hub_vkey = services.workdir / "hub" / WITNESS_VKEY
    if hub_vkey.is_file():
        vkey.write_text(hub_vkey.read_text())
    else:  # a hub from before witness keys cosigns with its identity key
        raw = base64.b64decode(services.hub_info["public_key"])
        vkey.write_text(witness_vkey(hub_name, raw) + "\n")
    names = {s.name for s in sites}
    logs = {hub_name: (services.workdir / "hub" / "log", names)}
    logs |= {s.name: (s.log_dir, {hub_name} | (names - {s.name})) for s in sites}
    step("witnesses: the connectors cosign the hub's log; the hub and the others each site's")
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        missing = []
        for origin, (folder, want) in logs.items():
            size, cosigned, got = _cosigners(folder)
            if cosigned < size or not want <= got:
                missing.append(f"{origin} (size {size}, cosigned {cosigned} by {sorted(got)})")
        if not missing:
            break
        if time.monotonic() > deadline:
            step(f"witnesses: still missing after {timeout:.0f}s: {'; '.join(missing)}")
            return [vkey]
        time.sleep(0.25)
    others = " and the other connectors" if len(sites) > 1 else ""
    step(
        f"witnesses: {hub_name}'s log cosigned by {', '.join(sorted(names))}; "
        f"each site's by {hub_name}{others} ({time.monotonic() - t0:.1f} s)"
    )
    return [vkey]


def cross_check_sites(audits: list[dict[str, Any]], sites: list[Site], hub_log: Path) -> None:
    """Each site's log against the hub's (:mod:`dataspace.audit.crosscheck`): adds a
    ``cross_check`` member to each site's audit dict (information: the run's rounds must
    be in both; earlier runs without the hub show up as ``run-not-in-hub``)."""

    def entries(folder: Path) -> list[bytes]:
        src = open_source(folder)
        return list(src.iter_entries(0, checkpoint_of_note(src.checkpoint()).size))

    for a, s in zip(audits, sites, strict=False):
        try:
            rep = cross_check(entries(s.root), entries(hub_log))
        except DataspaceError as e:
            a["cross_check"] = {"ok": False, "first_mismatch": str(e), "rounds_matched": 0}
            continue
        a["cross_check"] = {
            "ok": rep.ok,
            "first_mismatch": str(rep.first) if rep.first else None,
            "rounds_matched": rep.rounds_matched,
        }
