"""The demo's auditor: the trusted keys it is given, and each log verified with them
through :func:`dataspace.audit.verify_source`, the code of ``dataspace audit verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dataspace.audit import verify_source
from dataspace.audit.witnesskey import WITNESS_VKEY
from dataspace.site import Site


def trusted_keys_file(workdir: Path, sites: list[Site], extra: list[Path]) -> Path:
    """The auditor's trusted keys: each log's vkey and every actor's public key."""
    path = workdir / "auditor" / "trusted-keys"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# written by dataspace demo: log keys (vkey) and actor keys (X.pub)"]
    for s in sites:
        lines += [str(s.vkey_path.resolve()), f"actor {(s.root / 'site.key.pub').resolve()}"]
        # it cosigns the hub's log: with its witness key (SITE/witness.vkey, made when its
        # connector first started), and before witness keys with its identity key
        lines.append(f"witness {(s.root / 'site.key.pub').resolve()}")
        if (s.root / WITNESS_VKEY).is_file():
            lines.append(f"witness {(s.root / WITNESS_VKEY).resolve()}")
    for p in extra:
        lines.append(f"actor {p.resolve()}" if p.suffix == ".pub" else str(p.resolve()))
    path.write_text("\n".join(lines) + "\n")
    return path


def verify_log(source: str, trusted: Path, allow_unanchored: bool | None = None) -> dict[str, Any]:
    """What ``dataspace audit verify SOURCE --trusted-keys FILE`` checks, as a dict.

    A log counts as verified only when a trusted witness cosigned it (DESIGN.md,
    "Threat model"). ``allow_unanchored``: True accepts a log no trusted witness
    cosigned as self-consistent only (``--allow-unanchored``); False requires the
    anchor; None (default) requires it where the log has witnesses (its witness set,
    or any witness of a kept checkpoint: the demo with services) and accepts it where
    it has none at all (the demo without services, the notebooks). Either way the dict
    says ``anchored`` and ``status``: "verified", "self-consistent only" or "FAILED".
    The checks are :func:`dataspace.audit.verify_source`'s, the command's own.
    """
    rep = verify_source(source, trusted, allow_unanchored=allow_unanchored)
    return {
        "source": source,
        "origin": rep.origin,
        "size": rep.size,
        "root": rep.root,
        "ok": rep.ok,
        "anchored": rep.anchored,
        "status": _audit_status(rep.ok, rep.anchored),
        "rounds": len(rep.rounds),
        "witnesses": rep.witnesses,
        "kinds": rep.kinds,
        "epsilon_by_dataset": rep.epsilon_by_dataset,
        "first_violation": str(rep.first) if rep.first else None,
    }


def _audit_status(ok: bool, anchored: bool) -> str:
    """How a log's audit may be described: only an anchored one is "verified"."""
    if not ok:
        return "FAILED"
    return "verified" if anchored else "self-consistent only"
