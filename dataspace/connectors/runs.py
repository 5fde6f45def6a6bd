"""A site's own record of the released models its rounds went into (``run.finished``).

When a consumer's run through the hub ends, the hub logs ``run.finished`` with the
SHA-256 of the released model (:mod:`dataspace.hub.routes.runs`). The holder's
connector follows the hub (:mod:`.publisher`): for every run of one of this site's
contracts that the hub says ended, and in which this site's log shows rounds trained
under that contract (``round.finished``), it appends ``run.finished`` to SITE/log
once per (run, contract), with the rounds it trained, the model hash and the index
of the hub's entry. ``dataspace audit show`` then ties the model a consumer ships to
the site's rounds and contract from the site's log alone, and the auditor's
cross-check finds the same model at that index of the hub's log.

What the site vouches for is its own part: the rounds it trained. The model hash is
the hub's statement, recorded as such (``hub_log_index``, ``hub``); a hub that told
the consumer another model is caught by the consumer (``HubEngine`` compares the hash
with what it downloaded) and by an auditor comparing the two logs. Anything the hub
answers is untrusted input: a run that names none of this site's contracts, a hash
that is not 64 hex digits, a run this site took no part in, is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dataspace.audit.events import parse_event
from dataspace.site.folder import Site
from dataspace.site.log import open_site_log, record

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: the statuses the hub's run.finished may carry (dataspace.audit.rules: run-malformed)
ENDED = ("finished", "stopped")


@dataclass(frozen=True)
class SiteRuns:
    """What SITE/log says of runs: the rounds trained per (run, contract) and the
    (run, contract) pairs already recorded as finished."""

    trained: dict[tuple[str, str], tuple[int, ...]]
    dataset: dict[str, str]
    finished: frozenset[tuple[str, str]]


def read_site_runs(site: Site) -> SiteRuns:
    """One pass over SITE/log (read-only)."""
    trained: dict[tuple[str, str], set[int]] = {}
    dataset: dict[str, str] = {}
    finished: set[tuple[str, str]] = set()
    with open_site_log(site, writable=False) as log:
        for entry in log.entries(0, log.size):
            ev = parse_event(entry)
            run_id, cid = ev.fields.get("run_id"), ev.fields.get("contract_id")
            if type(run_id) is not str or type(cid) is not str:
                continue
            if ev.kind == "round.finished" and type(ev.fields.get("round")) is int:
                trained.setdefault((run_id, cid), set()).add(ev.fields["round"])
                if type(ev.fields.get("dataset_id")) is str:
                    dataset[cid] = ev.fields["dataset_id"]
            elif ev.kind == "run.finished":
                finished.add((run_id, cid))
    return SiteRuns(
        {k: tuple(sorted(v)) for k, v in trained.items()}, dataset, frozenset(finished)
    )


def ended_runs(runs: Iterable[Any]) -> list[dict[str, Any]]:
    """The well-formed ended runs of a ``GET /v1/runs`` answer (untrusted)."""
    out = []
    for r in runs:
        if not isinstance(r, dict):
            continue
        model, idx = r.get("model_sha256"), r.get("finished_log_index")
        if (
            type(r.get("run_id")) is str
            and isinstance(r.get("contract_ids"), list)
            and r.get("status") in ENDED
            and type(model) is str
            and _SHA256_HEX.fullmatch(model)
            and type(idx) is int
            and idx >= 0
        ):
            out.append(r)
    return out


def record_finished_runs(site: Site, runs: Iterable[Any], hub_key: str) -> list[int]:
    """Append ``run.finished`` for each ended run of ``runs`` this site trained in and has
    not recorded yet; returns the new entries' indexes (module docstring)."""
    ended = ended_runs(runs)
    if not ended:
        return []
    mine = read_site_runs(site)
    added = []
    for r in ended:
        for cid in dict.fromkeys(c for c in r["contract_ids"] if type(c) is str):
            key = (r["run_id"], cid)
            rounds = mine.trained.get(key)
            if not rounds or key in mine.finished:
                continue
            added.append(
                record(
                    site,
                    "run.finished",
                    run_id=r["run_id"],
                    contract_id=cid,
                    dataset_id=mine.dataset.get(cid),
                    status=r["status"],
                    rounds=list(rounds),
                    model_sha256=r["model_sha256"],
                    hub_log_index=r["finished_log_index"],
                    hub=hub_key,
                )
            )
    return added
