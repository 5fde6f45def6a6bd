"""Small helpers the user notebooks call (notebooks/*.ipynb), so each cell stays short.

They only compose the public functions of the other areas, like the demo does.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dataspace.connectors.site import Site
from dataspace.demo.orchestrate import (
    ORGS,
    DemoOptions,
    consumer_identity,
    enroll_site,
    ensure_policy,
    open_or_init_site,
    prepare_sources,
)
from dataspace.demo.sources import find_source


def ensure_holders(
    workdir: Path | str, episodes: int = 10, sites: int = 3, epsilon: float = 8.0
) -> tuple[list[Site], list[dict[str, Any]]]:
    """The demo's holder sites under ``workdir``: made, enrolled, checked, under policy."""
    opts = DemoOptions(
        workdir=Path(workdir).resolve(), sites=sites, epsilon=epsilon, episodes_per_site=episodes
    )
    paths, _ = prepare_sources(opts, find_source(), lambda _m: None)
    consumer, _, _ = consumer_identity(opts.workdir)
    out_sites, out_ds = [], []
    for i, p in enumerate(paths):
        site = open_or_init_site(opts.workdir / "sites" / f"site-{i}", ORGS[i])
        ds = enroll_site(site, p, lambda _m: None)
        ensure_policy(site, ds, opts, consumer.key_b64)
        out_sites.append(site)
        out_ds.append(ds)
    return out_sites, out_ds


def catalog(sites: list[Site]) -> list[dict[str, Any]]:
    """What the hub's catalog shows of each site's datasets: metadata and quality."""
    from dataspace.connectors.service import quality_score

    rows = []
    for s in sites:
        with s.db(read_only=True) as con:
            for did, name, robot, fps, eps, frames, sdim in con.execute(
                "SELECT dataset_id, name, robot_type, fps, episodes, frames, state_dim "
                "FROM datasets ORDER BY dataset_id"
            ).fetchall():
                rows.append(
                    {
                        "holder": s.name,
                        "dataset_id": did,
                        "name": name,
                        "robot": robot,
                        "fps": fps,
                        "episodes": eps,
                        "hours": round(frames / fps / 3600, 3) if fps else None,
                        "state_dim": sdim,
                        "quality": quality_score(s, did),
                    }
                )
    return rows


def consumer_key(workdir: Path | str):
    """The consumer's identity and private key (made on first use)."""
    ident, key, _ = consumer_identity(Path(workdir).resolve())
    return ident, key


def request_contracts(
    sites: list[Site],
    datasets: list[dict[str, Any]],
    consumer,
    key,
    epsilon: float = 4.0,
    rounds: int = 2,
) -> list[str]:
    """A contract per dataset, negotiated with each holder's connector code."""
    from dataspace.policy.contracts import OfferRequest, negotiate

    ids = []
    for s, d in zip(sites, datasets, strict=True):
        c = negotiate(
            s,
            OfferRequest(
                dataset_id=d["dataset_id"],
                purpose="robot-policy-training",
                epsilon=epsilon,
                rounds=rounds,
                until=datetime.now(UTC) + timedelta(days=7),
                consumer=consumer,
                template="bc-mlp",
                delta=1e-5,
            ),
            key,
        )
        ids.append(c.contract_id)
    return ids


def validation_episodes(workdir: Path | str):
    """The consumer's own validation episodes (never given to any site)."""
    from dataspace.federated.shards import read_lerobot_episodes

    eps, _ = read_lerobot_episodes(Path(workdir).resolve() / "consumer" / "validation")
    return eps


def trace(site: Site, dataset_id: str) -> list[dict[str, Any]]:
    """Every logged use of a dataset: kind, contract, purpose, epsilon, model, time."""
    from dataspace.audit.checkpoint import checkpoint_of_note
    from dataspace.audit.source import open_source

    src = open_source(str(site.root))
    size = checkpoint_of_note(src.checkpoint()).size
    rows = []
    for i, entry in enumerate(src.iter_entries(0, size)):
        ev = json.loads(entry)
        if ev.get("dataset_id") != dataset_id:
            continue
        rows.append(
            {
                "index": i,
                "kind": ev.get("kind"),
                "time": ev.get("time"),
                "contract": (ev.get("contract_id") or "")[:8],
                "consumer": (ev.get("consumer") or "")[:10],
                "purpose": ev.get("purpose"),
                "run": ev.get("run_id"),
                "round": ev.get("round"),
                "epsilon": ev.get("epsilon"),
                "model": (ev.get("model_sha256") or "")[:12],
            }
        )
    return rows


def tampered_copy(site: Site, out: Path | str) -> Path:
    """An exported bundle of the site's log with one byte of one entry changed."""
    from dataspace.audit.bundle import write_bundle
    from dataspace.audit.checkpoint import checkpoint_of_note
    from dataspace.audit.source import open_source

    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    src = open_source(str(site.root))
    note = src.checkpoint()
    size = checkpoint_of_note(note).size
    write_bundle(out, note, src.iter_entries(0, size))
    lines = (out / "entries.jsonl").read_bytes().split(b"\n")
    i = len(lines) // 2
    lines[i] = lines[i].replace(b'"kind":"', b'"kind":"X', 1)
    (out / "entries.jsonl").write_bytes(b"\n".join(lines))
    return out
