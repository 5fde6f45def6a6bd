"""What a connector tells the hub: its catalog, its contracts and its datasets' budgets.

:class:`Publisher` publishes the site to the hub on start (signed with the site's
key; retried in the background while the hub is unreachable): every catalog entry,
the agreed contracts the hub's registry lacks, and each published dataset's budget
as the site's ledger says it (:func:`dataspace.policy.budget_report`), in a
statement signed by the site (:mod:`dataspace.policy.budget_statement`,
``POST /v1/budget``). It is also where the connector learns the hub's name and key
(``GET /v1/hub``), which its witness trusts.

Then it follows the site: every change that moves a budget or a contract (an
agreement, an approval, a rejection, a revocation, a charged round, a new policy or
enrollment) appends to SITE/log, whichever process made it (this service, the
``dataspace`` CLI, a training process), so the publisher watches the log's size
(every :data:`POLL_S` s, a file size read) and, when it grew, publishes what changed
since the last pass: new or changed catalog entries, contracts the hub holds in
another state (or not at all, once agreed), and budgets whose figures moved. A full
pass also runs every :data:`REFRESH_S` s (contracts expire, and their reservations
end, without a log entry). What the hub refuses is logged and not sent again until
it changes; while the hub cannot be reached, the pass is retried.

Each pass also reads the runs of the site's contracts at the hub (``GET /v1/runs``)
and records in SITE/log, once, the end of each run the site trained in
(:mod:`.runs`: ``run.finished`` with the released model's hash); while such a run is
still open at the hub, passes run every :data:`RUNS_POLL_S` s.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import httpx

from dataspace import policy
from dataspace.audit.log import TransparencyLog
from dataspace.auth.client import ServiceError, ServiceUnavailableError, call, signed_client
from dataspace.connectors.runs import ENDED, record_finished_runs
from dataspace.errors import DataspaceError
from dataspace.policy.budget_statement import figures_of, sign_budget_statement
from dataspace.site.folder import Site
from dataspace.site.store import DatasetRecord, list_datasets

log = logging.getLogger("dataspace.connector")

#: seconds between attempts to publish to an unreachable hub (doubling up to the last)
RETRY_S = (0.5, 1, 2, 5, 10, 30)
#: seconds between looks at SITE/log's size (a change there is what moves a budget)
POLL_S = 0.5
#: seconds between full passes even when SITE/log did not grow (expiries)
REFRESH_S = 30.0
#: seconds between passes while a run of the site's contracts is open at the hub
RUNS_POLL_S = 1.0
#: how long after its registration a run that has not ended counts as open
RUNS_OPEN_S = 6 * 3600
#: the states in which a contract the hub never held is registered there
REGISTERED_FROM = ("agreed",)


def publish_request(site: Site, rec: DatasetRecord, public_url: str | None) -> dict[str, Any]:
    """The hub's PublishRequest for one dataset: dataset-level metadata only."""
    return {
        "dataset_id": rec.dataset_id,
        "fingerprint": rec.fingerprint,
        "dcat": rec.catalog,
        "title": rec.name,
        "robot_type": rec.robot_type,
        "fps": rec.fps,
        "tasks": list(rec.tasks),
        "episodes": rec.episodes,
        "frames": rec.frames,
        "state_dim": rec.state_dim,
        "action_dim": rec.action_dim,
        "license": rec.license,
        "format": rec.format,
        "quality_score": quality_score(site, rec.dataset_id),
        "connector_url": public_url,
        "privacy_unit": privacy_unit(site),
    }


def privacy_unit(site: Site) -> str | None:
    """What one unit of epsilon protects at this site (``site.toml [training]
    privacy_unit``, read here without importing the training code and torch);
    None for a value the training code would refuse."""
    unit = site.config.get("training", {}).get("privacy_unit", "frame")
    return unit if unit in ("frame", "episode") else None


def quality_score(site: Site, dataset_id: str) -> float | None:
    """The latest overall quality score (0..100) of a dataset, None if never checked.

    Read straight from the quality area's ``quality_reports`` table (the query of
    ``dataspace.quality.report.latest_score``): importing the quality package
    pulls in Great Expectations, which takes seconds a service start need not pay.
    """
    with site.db(read_only=True) as con:
        try:
            row = con.execute(
                "SELECT score FROM quality_reports WHERE dataset_id = ? "
                "ORDER BY created_at DESC LIMIT 1",
                [dataset_id],
            ).fetchone()
        except duckdb.CatalogException:  # no quality report ever made at this site
            return None
    return None if row is None or row[0] is None else float(row[0])


def hub_record(c: policy.Contract, connector_url: str | None) -> dict[str, Any]:
    """What the hub's contract registry keeps of a contract (terms, state, signatures)."""
    return {
        "contract_id": c.terms.contract_id,
        "dataset_id": c.terms.dataset_id,
        "fingerprint": c.terms.fingerprint,
        "consumer": c.consumer.key_b64,
        "purpose": c.terms.purpose,
        "template": c.terms.template,
        "epsilon": c.terms.epsilon,
        "delta": c.terms.delta,
        "rounds": c.terms.rounds,
        "until": c.terms.to_json()["until"],
        "state": c.state,
        "connector_url": connector_url,
        "agreement": c.agreement().to_json(),
    }


def transient(e: BaseException) -> bool:
    """An error worth retrying: the hub unreachable or failing (5xx), or the request's
    signature not accepted now (401: a clock off, a restart); not a refusal of it."""
    if isinstance(e, ServiceUnavailableError | httpx.HTTPError | OSError):
        return True
    return isinstance(e, ServiceError) and (e.status is None or e.status >= 500 or e.status == 401)


def _after(iso: Any, t: datetime) -> bool:
    """``iso`` (the hub's timestamp, untrusted) is a time after ``t``."""
    try:
        when = datetime.fromisoformat(str(iso))
    except ValueError:
        return False
    return (when if when.tzinfo else when.replace(tzinfo=UTC)) > t


@dataclass
class AtHub:
    """What the hub holds of this site, as the publisher last sent it (or read it back)."""

    #: dataset id -> the PublishRequest sent
    catalog: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: contract id -> its state at the hub
    contracts: dict[str, str] = field(default_factory=dict)
    #: dataset id -> the budget figures sent (without the log size)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: run ids whose end this site has recorded (or took no part in)
    runs_done: set[str] = field(default_factory=set)
    #: a run of the site's contracts is open at the hub (passes every RUNS_POLL_S)
    runs_open: bool = False


class Publisher:
    """Publishes the site to the hub and follows it (module docstring), in a daemon thread."""

    def __init__(
        self,
        site: Site,
        hub_url: str,
        public_url: str | None,
        *,
        poll_s: float = POLL_S,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.site = site
        self.hub_url = hub_url
        self.public_url = public_url
        self.poll_s = poll_s
        self.refresh_s = refresh_s
        self.published = 0
        self.error: str | None = None
        self.done = threading.Event()
        self.hub_key: str | None = None
        self.hub_name: str | None = None
        self.at_hub = AtHub()
        self._stop = threading.Event()
        self._wake = threading.Event()
        #: one publication pass at a time (the follower's, POST /v1/admin/publish's)
        self._pass = threading.Lock()
        #: guards at_hub.contracts (route threads register contracts too)
        self._lock = threading.Lock()
        self._log: TransparencyLog | None = None

    # --- passes ------------------------------------------------------------------------
    def publish_once(self) -> int:
        """Publish everything now: catalog, contracts the hub lacks, every budget."""
        with self._pass, signed_client(self.hub_url, self.site.key) as hub:
            info = call(hub, "GET", "/v1/hub")
            self.hub_key = info["public_key"]
            self.hub_name = info["name"]
            size = self.log_size()
            n = self._publish_catalog(hub, everything=True)
            self._read_contracts(hub)
            self._publish_contracts(hub)
            self._publish_budgets(hub, size, everything=True)
            self._record_runs(hub)
        self.published = n
        self.error = None
        self.done.set()
        return n

    def sync(self) -> None:
        """One pass: what changed at the site since the last one reaches the hub."""
        with self._pass, signed_client(self.hub_url, self.site.key) as hub:
            size = self.log_size()
            self._publish_catalog(hub)
            self._publish_contracts(hub)
            self._publish_budgets(hub, size)
            self._record_runs(hub)

    def _publish_catalog(self, hub: httpx.Client, everything: bool = False) -> int:
        """Post the catalog entries: all (a refusal fails the publication, as at start),
        or those new or changed (a refusal is logged); returns how many there are."""
        recs = list_datasets(self.site)
        for rec in recs:
            req = publish_request(self.site, rec, self.public_url)
            if everything:
                call(hub, "POST", "/v1/catalog", json=req)
            elif self.at_hub.catalog.get(rec.dataset_id) != req:
                self._post(hub, "/v1/catalog", req, f"catalog entry {rec.dataset_id}")
            self.at_hub.catalog[rec.dataset_id] = req
        return len(recs)

    def _read_contracts(self, hub: httpx.Client) -> None:
        """Learn which of this site's contracts the hub holds, in which state."""
        body = call(hub, "GET", "/v1/contracts")
        own = self.site.identity.key_b64
        with self._lock:
            for c in body.get("contracts", []):
                if c.get("holder") == own:
                    self.at_hub.contracts[c["contract_id"]] = c["state"]

    def _publish_contracts(self, hub: httpx.Client) -> None:
        """Register agreed contracts the hub lacks, and the new state of those it holds."""
        for c in policy.list_contracts(self.site):
            cid, state = c.terms.contract_id, c.state
            with self._lock:
                have = self.at_hub.contracts.get(cid)
            if have == state or (have is None and state not in REGISTERED_FROM):
                continue
            self._post(hub, "/v1/contracts", hub_record(c, self.public_url), f"contract {cid}")
            with self._lock:
                self.at_hub.contracts[cid] = state

    def _publish_budgets(self, hub: httpx.Client, size: int, everything: bool = False) -> None:
        """Post a signed statement for each published dataset whose budget moved."""
        for row in policy.budget_report(self.site):
            did = row.dataset_id
            if did not in self.at_hub.catalog:
                continue  # the hub keeps budgets of catalog entries only
            figures = figures_of(row, size)
            figures.pop("site_log_size")
            if not everything and self.at_hub.budgets.get(did) == figures:
                continue
            body = {"statement": sign_budget_statement(self.site, row, max(size, 0))}
            self._post(hub, "/v1/budget", body, f"budget of {did}")
            self.at_hub.budgets[did] = figures

    def _record_runs(self, hub: httpx.Client) -> None:
        """Record in SITE/log the runs that ended at the hub (:mod:`.runs`); note whether
        one is still open (the follower then looks again within RUNS_POLL_S)."""
        body = call(hub, "GET", "/v1/runs")
        runs = body.get("runs") if isinstance(body, dict) else None
        if not isinstance(runs, list):
            return
        fresh = [
            r for r in runs
            if isinstance(r, dict) and r.get("run_id") not in self.at_hub.runs_done
        ]  # fmt: skip
        ended = [r for r in fresh if r.get("status") in ENDED]
        if ended:
            new = record_finished_runs(self.site, ended, self.hub_key or "")
            if new:
                log.info("recorded the end of %d run(s) in the site's log", len(new))
            self.at_hub.runs_done.update(str(r.get("run_id")) for r in ended)
        # a run registered but never ended (its consumer gave up) stops counting as open
        horizon = datetime.now(UTC) - timedelta(seconds=RUNS_OPEN_S)
        self.at_hub.runs_open = any(
            r.get("status") not in ENDED and _after(r.get("created_at"), horizon) for r in fresh
        )

    @staticmethod
    def _post(hub: httpx.Client, path: str, body: dict[str, Any], what: str) -> None:
        """POST; a refusal is logged (it is not sent again until it changes), a
        transient failure raised (the pass is retried)."""
        try:
            call(hub, "POST", path, json=body)
        except DataspaceError as e:
            if transient(e):
                raise
            log.warning("the hub refused the %s: %s", what, e)

    # --- the thread ----------------------------------------------------------------------
    def log_size(self) -> int:
        """SITE/log's size now (-1 while it cannot be read): what the follower watches."""
        try:
            if self._log is None:
                self._log = TransparencyLog.open(self.site.log_dir)
            return self._log.size
        except (DataspaceError, OSError):
            return -1

    def notify(self) -> None:
        """Run a pass soon (a route changed something)."""
        self._wake.set()

    def run(self) -> None:
        """Publish everything (retried until the hub answers), then follow the site."""
        attempt = 0
        while not self._stop.is_set():
            try:
                n = self.publish_once()
                log.info("published %d catalog entries to %s", n, self.hub_url)
                break
            except (DataspaceError, httpx.HTTPError, OSError, duckdb.Error) as e:
                self.error = str(e)
                log.warning("publishing to %s failed: %s", self.hub_url, e)
            self._stop.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1
        self.follow()

    def follow(self) -> None:
        """Until stopped: a pass whenever SITE/log grew, on :meth:`notify`, or when due."""
        seen, last, attempt = self.log_size(), time.monotonic(), 0
        dirty = False
        while not self._stop.is_set():
            woke = self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            size = self.log_size()
            every = RUNS_POLL_S if self.at_hub.runs_open else self.refresh_s
            due = time.monotonic() - last >= every
            if not (woke or dirty or due or size != seen):
                continue
            try:
                self.sync()
            except (DataspaceError, httpx.HTTPError, OSError, duckdb.Error) as e:
                self.error = str(e)
                dirty = True
                log.warning("publishing to %s failed: %s", self.hub_url, e)
                self._stop.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
                attempt += 1
                continue
            seen, last, attempt, dirty = size, time.monotonic(), 0, False
            self.error = None

    def start(self) -> None:
        threading.Thread(target=self.run, name="catalog-publisher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def register_agreed(self, c: policy.Contract) -> None:
        """Copy ``c`` to the hub's registry in the background, once it is agreed."""
        if c.state == "agreed":
            record = hub_record(c, self.public_url)
            threading.Thread(target=self.register_contract, args=(record,), daemon=True).start()
        self.notify()  # its budget moved (a reservation): the follower reports it

    def register_contract(self, record: dict[str, Any]) -> None:
        """Copy an agreed contract to the hub's registry (the site is the truth).

        Retried (RETRY_S) while the hub cannot be reached, e.g. while it restarts after a
        crash (tests/assurance/test_hub_faults.py); a refusal by the hub is not retried.
        """
        attempt = 0
        while not self._stop.is_set():
            try:
                with signed_client(self.hub_url, self.site.key) as hub:
                    call(hub, "POST", "/v1/contracts", json=record)
                with self._lock:
                    self.at_hub.contracts[record["contract_id"]] = record["state"]
                return
            except (ServiceUnavailableError, httpx.HTTPError, OSError) as e:
                log.warning("registering contract %s at the hub: %s", record["contract_id"], e)
            except DataspaceError as e:
                log.warning("the hub refused contract %s: %s", record["contract_id"], e)
                return
            self._stop.wait(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            attempt += 1
