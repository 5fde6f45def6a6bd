"""Cross-checking a site's log against the hub's (DESIGN.md, "Audit log").

Each log is verified on its own (:mod:`dataspace.audit.verify`); this module
compares two of them, so that neither party can leave out what the other
recorded: "a round in a site's log matches the run in the hub's".

Site -> hub (rules, each named in the report):

``run-not-in-hub``       a ``round.started``/``round.finished`` of a run the hub never
                         registered (``run.registered``)
``contract-not-in-run``  the hub's run does not list the contract the site charged
``round-not-in-hub``     the hub has no ``round.registered`` of that (run, round); not
                         asked of round 0, the normalisation statistics (release
                         "stats"): the hub registers the run's training rounds only
``run-finished-not-in-hub`` a site's ``run.finished`` of a run the hub's log has no
                         ``run.finished`` for
``run-model-mismatch``   a site's ``run.finished`` naming another model, or another hub
                         entry, than the hub's ``run.finished`` of that run

Hub -> site, for the site's own datasets and contracts (the site is known by
the keys that signed its events, the hub names holders by key):

``round-not-in-site``    a ``round.registered`` that reports epsilon for one of the
                         site's datasets, with no ``round.started`` of that (run, round)
``contract-not-in-site`` a ``contract.registered`` of this holder that the site never
                         agreed (``contract.agreed``)
``dataset-not-in-site``  a ``catalog.published`` of this holder whose dataset id and
                         fingerprint the site never enrolled (``dataset.enrolled``)

The comparison is pure (entries in, report out); entries that do not parse
are skipped here (verify names them). :func:`released_models` reads the models a
hub's runs released (``run.finished``), which ``dataspace audit show --hub`` ties
to the site's rounds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from dataspace.audit.events import Event, EventError, parse_event

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: kinds a hub's log holds (dataspace.hub.app); a site's log holds run.finished too,
#: and the site's keys are those of its other entries
HUB_KINDS = frozenset(
    {
        "catalog.published",
        "contract.registered",
        "run.registered",
        "round.registered",
        "run.finished",
    }
)


@dataclass
class Mismatch:
    rule: str
    message: str
    site_index: int | None = None
    hub_index: int | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        where = ", ".join(
            f"{name} entry {i}"
            for name, i in (("site", self.site_index), ("hub", self.hub_index))
            if i is not None
        )
        vals = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{where or 'logs'}: {self.rule}: {self.message}" + (f" ({vals})" if vals else "")


@dataclass
class CrossCheckReport:
    site: str | None = None
    hub: str | None = None
    site_entries: int = 0
    hub_entries: int = 0
    rounds_matched: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def first(self) -> Mismatch | None:
        return self.mismatches[0] if self.mismatches else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["first_mismatch"] = str(self.first) if self.first else None
        return d


def parse_all(entries: Iterable[bytes]) -> list[tuple[int, Event]]:
    """The entries that parse as events, with their indices."""
    out = []
    for i, e in enumerate(entries):
        try:
            out.append((i, parse_event(e)))
        except EventError:
            continue
    return out


def is_hub_log(events: list[tuple[int, Event]]) -> bool:
    return any(ev.kind in HUB_KINDS for _, ev in events)


@dataclass
class _Hub:
    runs: dict[str, tuple[int, set[str]]] = field(default_factory=dict)
    rounds: dict[tuple[str, Any], tuple[int, dict[str, Any]]] = field(default_factory=dict)
    #: run id -> (index, model_sha256) of its first run.finished
    finished: dict[str, tuple[int, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Released:
    """A run's released model, as the hub's ``run.finished`` entry states it."""

    run_id: str
    model_sha256: str
    contracts: frozenset[str]
    status: Any
    index: int


def released_models(hub_entries: Iterable[bytes]) -> dict[str, Released]:
    """Run id -> the model its ``run.finished`` released (the first entry of a run; one
    without a 64-hex-digit ``model_sha256`` released none)."""
    out: dict[str, Released] = {}
    for i, ev in parse_all(hub_entries):
        sha = ev.get("model_sha256")
        if ev.kind != "run.finished" or not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            continue
        contracts = ev.get("contracts")
        ids = frozenset(map(str, contracts)) if isinstance(contracts, list) else frozenset()
        if ev.contract_id is not None:  # a site's entry: one per (run, contract)
            ids |= {ev.contract_id}
        run_id = str(ev.get("run_id"))
        first = out.get(run_id)
        if first is None:
            out[run_id] = Released(run_id, sha, ids, ev.get("status"), i)
        elif first.model_sha256 == sha:  # the same release, for more of the run's contracts
            out[run_id] = Released(run_id, sha, first.contracts | ids, first.status, first.index)
    return out


def _hub_index(hub: list[tuple[int, Event]]) -> _Hub:
    h = _Hub()
    for i, ev in hub:
        if ev.kind == "run.registered":
            h.runs.setdefault(str(ev.get("run_id")), (i, set(map(str, ev.get("contracts") or []))))
        elif ev.kind == "round.registered":
            eps = ev.get("epsilon_per_dataset")
            h.rounds.setdefault(
                (str(ev.get("run_id")), ev.get("round")), (i, eps if isinstance(eps, dict) else {})
            )
        elif ev.kind == "run.finished":
            h.finished.setdefault(str(ev.get("run_id")), (i, ev.get("model_sha256")))
    return h


def cross_check(site_entries: Iterable[bytes], hub_entries: Iterable[bytes]) -> CrossCheckReport:
    """Compare a site's log with the hub's (module docstring); returns every mismatch."""
    site = parse_all(site_entries)
    hub = parse_all(hub_entries)
    r = CrossCheckReport(site_entries=len(site), hub_entries=len(hub))
    site_keys = {ev.actor_key_b64 for _, ev in site if ev.kind not in HUB_KINDS}
    r.site = next((ev.actor_name for _, ev in site), None)
    r.hub = next((ev.actor_name for _, ev in hub), None)
    h = _hub_index(hub)
    started: set[tuple[str, Any, str | None]] = set()
    agreed: set[str] = set()
    enrolled: set[tuple[str | None, str | None]] = set()
    datasets: set[str] = set()
    matched: set[tuple[str, Any]] = set()
    for i, ev in site:
        if ev.kind == "dataset.enrolled":
            enrolled.add((ev.dataset_id, ev.fingerprint))
            if ev.dataset_id:
                datasets.add(ev.dataset_id)
        elif ev.kind == "contract.agreed" and ev.contract_id:
            agreed.add(ev.contract_id)
        elif ev.kind == "run.finished" and ev.actor_key_b64 in site_keys:
            run_id = str(ev.get("run_id"))
            what = {"run_id": run_id, "contract_id": ev.contract_id,
                    "model_sha256": ev.get("model_sha256")}  # fmt: skip
            fin = h.finished.get(run_id)
            if fin is None:
                r.mismatches.append(
                    Mismatch(
                        "run-finished-not-in-hub",
                        "the site records a run's end that the hub never logged",
                        i,
                        None,
                        what,
                    )
                )
            elif fin[1] != ev.get("model_sha256") or ev.get("hub_log_index") != fin[0]:
                r.mismatches.append(
                    Mismatch(
                        "run-model-mismatch",
                        "the site's run.finished names another model (or hub entry) than "
                        "the hub's run.finished of that run",
                        i,
                        fin[0],
                        what | {"hub_model_sha256": fin[1],
                                "hub_log_index": ev.get("hub_log_index")},
                    )
                )  # fmt: skip
        elif ev.kind in ("round.started", "round.finished"):
            run_id, rnd = str(ev.get("run_id")), ev.get("round")
            if ev.kind == "round.started":
                started.add((run_id, rnd, ev.dataset_id))
            what = {"run_id": run_id, "round": rnd, "contract_id": ev.contract_id}
            run = h.runs.get(run_id)
            if run is None:
                r.mismatches.append(
                    Mismatch(
                        "run-not-in-hub",
                        f"{ev.kind} of a run the hub never registered",
                        i,
                        None,
                        what,
                    )
                )
                continue
            if ev.contract_id is not None and ev.contract_id not in run[1]:
                r.mismatches.append(
                    Mismatch(
                        "contract-not-in-run",
                        "the hub's run does not list this contract",
                        i,
                        run[0],
                        what | {"hub_contracts": sorted(run[1])},
                    )
                )
            if ev.get("release") == "stats" and type(rnd) is int and rnd == 0:
                continue  # part of the run (checked above), not one of its rounds
            got = h.rounds.get((run_id, rnd))
            if got is None:
                r.mismatches.append(
                    Mismatch(
                        "round-not-in-hub",
                        f"{ev.kind} with no round.registered at the hub",
                        i,
                        run[0],
                        what,
                    )
                )
            elif ev.kind == "round.started":
                matched.add((run_id, rnd))
    r.rounds_matched = len(matched)
    for i, ev in hub:
        holder = ev.get("holder")
        if ev.kind == "round.registered":
            eps = ev.get("epsilon_per_dataset")
            mine = sorted(d for d in (eps if isinstance(eps, dict) else {}) if d in datasets)
            key = (str(ev.get("run_id")), ev.get("round"))
            for d in mine:
                if (key[0], key[1], d) not in started:
                    r.mismatches.append(
                        Mismatch(
                            "round-not-in-site",
                            "the hub reports a round over this site's dataset that the "
                            "site never started",
                            None,
                            i,
                            {"run_id": key[0], "round": key[1], "dataset_id": d},
                        )
                    )
        elif holder in site_keys and ev.kind == "contract.registered":
            if ev.contract_id not in agreed:
                r.mismatches.append(
                    Mismatch(
                        "contract-not-in-site",
                        "the hub registered a contract of this holder that the site never agreed",
                        None,
                        i,
                        {"contract_id": ev.contract_id},
                    )
                )
        elif (
            holder in site_keys
            and ev.kind == "catalog.published"
            and (ev.dataset_id, ev.fingerprint) not in enrolled
        ):
            r.mismatches.append(
                Mismatch(
                    "dataset-not-in-site",
                    "the hub publishes a dataset of this holder that the site never enrolled",
                    None,
                    i,
                    {"dataset_id": ev.dataset_id, "fingerprint": ev.fingerprint},
                )
            )
    return r
