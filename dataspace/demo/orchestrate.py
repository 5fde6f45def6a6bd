"""``dataspace demo``: the whole data space on one machine, on real robot data.

One call of :func:`run_demo` plays every part, in order, through the other
areas' public functions, never around them:

1. data: one real recording split into ``sites`` episode ranges (different
   recording sessions, :mod:`.sources`), plus a few episodes the consumer keeps
   as its own validation set;
2. holders: a connector site each (``create_site``), enrollment of its range
   with the connector's LeRobot reader, the quality suite (signed report in
   the site's log), an ODRL usage policy with a lifetime privacy budget;
3. consumer: a contract per dataset (offer, holder's signature, countersign,
   epsilon reserved from the budget), through the connector services when
   they run (:mod:`.services`), on the site folders otherwise;
4. training, by default the consumer's path (``engine="hub"``): the hub's
   SuperLink and worker and each holder's SuperNode and site worker run as
   separate processes, and the consumer trains with
   :class:`dataspace.federated.remote.HubEngine` from its own folder, reaching
   no site (what ``dataspace train --hub`` does); ``engine="deployment"`` runs the
   same apps on Flower's deployment engine without the hub, ``"simulation"`` in
   one process (the holder's or developer's local mode);
5. value: held-out loss on the consumer's validation episodes and GTG-Shapley
   contributions (:mod:`dataspace.federated.contribution`);
6. auditor: every log verified with only public keys (:mod:`.auditor`:
   :func:`dataspace.audit.verify_source`, what ``dataspace audit verify`` calls);
7. report: ``WORKDIR/summary.json`` and ``WORKDIR/report.html`` (:mod:`.report`).

Rerunning in the same workdir reuses the sites, their datasets, quality
reports and policies, and makes a new contract and a new run: each run spends
from each dataset's lifetime budget, which the holder's connector enforces.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dataspace.connectors.enroll import enroll
from dataspace.connectors.publisher import quality_score
from dataspace.connectors.runs import read_site_runs
from dataspace.connectors.shards import read_lerobot_episodes
from dataspace.demo.auditor import trusted_keys_file, verify_log
from dataspace.demo.report import write_html
from dataspace.demo.services import Services, check_port, reachable
from dataspace.demo.sources import Source, episode_ranges, export_range, find_source
from dataspace.demo.witnessing import await_witnesses, cross_check_sites
from dataspace.errors import DataspaceError, NotFoundError, RefusedError
from dataspace.federated import DeploymentEngine, RunSpec, SimulationEngine
from dataspace.federated import train as train_run
from dataspace.federated.remote import HubEngine
from dataspace.policy.contracts import OfferRequest, negotiate
from dataspace.policy.ledger import budget_report
from dataspace.policy.odrl import build_policy
from dataspace.policy.policies import current_policy, publish_policy
from dataspace.policy.terms import ContractTerms
from dataspace.site import Site, create_site
from dataspace.site.identity import load_identity, load_private_key, new_identity

PURPOSE = "robot-policy-training"
TEMPLATE = "bc-mlp"
#: site names: one holder per recording session
ORGS = ("Plant North", "Plant East", "Plant South", "Plant West", "Plant Centre", "Lab 6")

Step = Callable[[str], None]


class DemoError(DataspaceError):
    """The demo cannot go on (bad options, a site it was told to use is missing)."""

    exit_code = 2


#: how the demo trains: the consumer through the hub (the product's path), Flower's
#: deployment engine driven from the holders' side, or one process
ENGINES = ("hub", "deployment", "simulation")


@dataclass
class DemoOptions:
    workdir: Path
    sites: int = 3
    rounds: int = 3
    epsilon: float = 8.0
    delta: float = 1e-5
    simulate: bool = True
    #: one of :data:`ENGINES`; None: "simulation" with ``simulate``, else "hub" (or
    #: "deployment" with ``hub_url``: a hub this demo did not start has none of its sites)
    engine: str | None = None
    #: lifetime budget of each dataset, in runs of ``epsilon``
    budget_runs: int = 10
    episodes_per_site: int | None = None
    validation_episodes: int = 4
    source: Path | None = None
    seed: int = 0
    #: also run the hub and connectors: False, True (processes) or "threads" (in this process)
    services: bool | str = False
    #: leave the services running after the demo (``result.services``; the caller stops them)
    keep_services: bool = False
    hub_url: str | None = None
    port: int = 0
    #: the recipe's peak learning rate; None: its optimizer's default (DP-Adam: 3e-3)
    lr: float | None = None
    #: seconds the deployment-engine run may take before the demo gives up
    deploy_timeout: float = 600.0


@dataclass
class SiteSummary:
    site: str
    org: str
    dataset_id: str
    name: str
    episodes: int
    frames: int
    episode_range: str
    fingerprint: str
    quality: float | None
    contract_id: str
    epsilon_budget: float
    epsilon_spent: float
    epsilon_left: float
    epsilon_run: float
    heldout_mse: float | None
    contribution: float | None
    share: float | None
    log_size: int = 0
    log_verified: bool = False
    log_problem: str | None = None
    #: "verified" (anchored by witnesses), "self-consistent only" (no witness ran) or "FAILED"
    log_status: str = "FAILED"


@dataclass
class DemoResult:
    workdir: str
    run_id: str
    engine: str
    engine_note: str | None
    source: str
    bundled_sample: bool
    rounds: list[dict[str, Any]]
    sites: list[SiteSummary]
    heldout_mse: float | None
    validation_mse: dict[str, float]
    model_sha256: str | None
    audit: list[dict[str, Any]]
    report_html: str
    seconds: float
    hub_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return all(a["ok"] for a in self.audit)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["verified"] = self.verified
        return d


# -- 1. data ----------------------------------------------------------------------------


def prepare_sources(opts: DemoOptions, source: Source, step: Step) -> tuple[list[Path], Path]:
    """Export each site's episode range and the consumer's validation range."""
    n_val = min(opts.validation_episodes, max(1, source.episodes // 10))
    usable = source.episodes - n_val
    if usable < opts.sites:
        raise DemoError(
            f"{source.path} has {source.episodes} episodes: too few for {opts.sites} sites"
        )
    ranges = episode_ranges(usable, opts.sites, opts.episodes_per_site)
    out = opts.workdir / "sources"
    paths = []
    for i, r in enumerate(ranges):
        step(f"exporting episodes {r.start}-{r.stop - 1} for site {i}")
        dst = out / f"site-{i}-episodes-{r.start:03d}-{r.stop - 1:03d}"
        paths.append(export_range(source.path, dst, r))
    val = range(source.episodes - n_val, source.episodes)
    vdir = export_range(source.path, opts.workdir / "consumer" / "validation", val)
    return paths, vdir


# -- 2. holders ---------------------------------------------------------------------------


def open_or_init_site(root: Path, org: str) -> Site:
    if (root / "site.toml").exists():
        return Site.open(root)
    return create_site(root, org, name=org.lower().replace(" ", "-"))


def enroll_site(site: Site, path: Path, step: Step) -> dict[str, Any]:
    """Enroll (idempotent on content) and quality-check once; the dataset's row."""
    step(f"{site.name}: enrolling {path.name}")
    res = enroll(site, path, name=f"G1 pick-bottle, {path.name.split('-episodes-')[-1]}")
    score = _quality_score(site, res.dataset_id)
    if score is None:
        # heavy (Great Expectations): only when the dataset has no report yet
        from dataspace.quality.check import run_checks

        step(f"{site.name}: quality suite on {res.episodes} episodes")
        score = run_checks(site, res.dataset_id).score
    return {**res.to_json(), "quality": score}


def _quality_score(site: Site, dataset_id: str) -> float | None:
    return quality_score(site, dataset_id)


def ensure_policy(site: Site, ds: dict[str, Any], opts: DemoOptions, consumer_b64: str) -> None:
    """Publish the dataset's usage policy unless one is in force already."""
    try:
        current_policy(site, ds["dataset_id"])
        return
    except NotFoundError:
        pass
    publish_policy(
        site,
        build_policy(
            dataset_id=ds["dataset_id"],
            fingerprint=ds["fingerprint"],
            assigner=site.identity.key_b64,
            epsilon=opts.epsilon * opts.budget_runs,
            delta=opts.delta * opts.budget_runs,
            purposes=[PURPOSE],
            consumers=[consumer_b64],
            until=datetime.now(UTC) + timedelta(days=365),
            max_rounds=max(50, opts.rounds),
            templates=[TEMPLATE, "bc-chunk"],
        ),
    )


# -- 3. consumer --------------------------------------------------------------------------


def consumer_identity(workdir: Path):
    path = workdir / "consumer" / "consumer.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        new_identity(path, name="robotco", role="consumer")
    return load_identity(Path(str(path) + ".pub")), load_private_key(path), path


def contract_locally(site: Site, dataset_id: str, opts: DemoOptions, consumer, key) -> str:
    c = negotiate(
        site,
        OfferRequest(
            dataset_id=dataset_id,
            consumer=consumer,
            terms=ContractTerms(
                purpose=PURPOSE,
                epsilon=opts.epsilon,
                rounds=opts.rounds,
                until=datetime.now(UTC) + timedelta(days=30),
                template=TEMPLATE,
                delta=opts.delta,
            ),
        ),
        key,
    )
    return c.terms.contract_id


# -- 4. training --------------------------------------------------------------------------


def engine_of(opts: DemoOptions) -> str:
    """The engine the options ask for (:data:`ENGINES`)."""
    if opts.engine is not None:
        if opts.engine not in ENGINES:
            raise DemoError(f"--engine must be one of {', '.join(ENGINES)}, not {opts.engine!r}")
        if opts.engine == "hub" and opts.hub_url:
            raise DemoError(
                "--engine hub starts its own hub with a SuperLink; with --hub URL use "
                "--engine deployment or simulation"
            )
        return opts.engine
    if opts.simulate:
        return "simulation"
    return "deployment" if opts.hub_url else "hub"


def train_through_hub(
    opts: DemoOptions, services: Services, contract_ids: list[str], out: Path, run_id: str,
    key, step: Step,
) -> dict[str, Any]:  # fmt: skip
    """The consumer's path: ``dataspace train --hub`` as a library call. The consumer's
    process gets no site folder: only the hub's URL, its own key and the contract ids."""
    logging.getLogger("flwr").setLevel(logging.WARNING)

    def on_round(r: dict[str, Any]) -> None:
        mse = r.get("eval_mse")
        shown = f"held-out MSE {mse:.4f}" if isinstance(mse, float) else "trained"
        step(f"round {r['round']}/{opts.rounds} at the hub: {shown}")

    spec = RunSpec(
        contracts=contract_ids, template=TEMPLATE, rounds=opts.rounds, out_dir=str(out),
        run_id=run_id, seed=opts.seed, lr=opts.lr,
    )  # fmt: skip
    step("consumer: waiting for the connectors to register the contracts at the hub")
    services.await_contracts(contract_ids, key)
    step("consumer: dataspace train --hub (the hub's SuperLink, the holders' SuperNodes)")
    try:
        return train_run(spec, [], HubEngine(services.hub_url, key), on_round)
    except DataspaceError as e:
        logs = opts.workdir / "deploy" / "logs"
        raise DemoError(
            f"training run {run_id} through the hub did not finish: {e} (the hub's and "
            f"holders' logs are in {logs}, the consumer's in {out / 'deploy' / 'logs'}); "
            "`dataspace demo --simulate` runs the same apps in one process"
        ) from e


def train(
    opts: DemoOptions, contract_ids: list[str], sites: list[Site], out: Path, run_id: str,
    step: Step,
) -> tuple[dict[str, Any], str, str | None]:  # fmt: skip
    """Train on the deployment engine (or in one process with ``--simulate``)."""
    # the federated area pulls torch, Opacus and Flower: only when the demo trains

    # Flower logs every aggregation at INFO; the demo shows rounds in its own progress
    logging.getLogger("flwr").setLevel(logging.WARNING)

    def on_round(r: dict[str, Any]) -> None:
        step(f"round {r['round']}/{opts.rounds}: held-out MSE {r['eval_mse']:.4f}")

    spec = RunSpec(
        contracts=contract_ids, template=TEMPLATE, rounds=opts.rounds, out_dir=str(out),
        run_id=run_id, seed=opts.seed, lr=opts.lr,
    )  # fmt: skip
    if engine_of(opts) == "simulation":
        step("training in simulation (Flower ServerApp + the connectors' ClientApps)")
        return train_run(spec, sites, SimulationEngine(), on_round), "simulation", None
    step("training on Flower's deployment engine (SuperLink + SuperNodes on 127.0.0.1)")
    try:
        h = train_run(spec, sites, DeploymentEngine(timeout=opts.deploy_timeout), on_round)
    except (DataspaceError, subprocess.TimeoutExpired) as e:
        raise DemoError(
            f"the deployment engine did not finish run {run_id}: {e} (logs in "
            f"{out / 'deploy' / 'logs'}); `dataspace demo --simulate` runs the same "
            "apps in one process"
        ) from e
    if h.get("status") != "finished":
        raise DemoError(
            f"the deployment-engine run {run_id} {h.get('status')}: {h.get('error')} "
            f"(logs in {out / 'deploy' / 'logs'})"
        )
    return h, "deployment", None


def await_site_runs(
    sites: list[Site], run_id: str, contract_ids: list[str], step: Step, timeout: float = 30.0
) -> None:
    """Wait until each holder's connector has recorded the run's end in its site's log
    (``run.finished``, :mod:`dataspace.connectors.runs`); says what is missing after
    ``timeout`` and goes on (the auditor then sees the sites' logs without it)."""
    step("holders: each connector records the run's end (run.finished) in its site's log")
    deadline = time.monotonic() + timeout
    while True:
        missing = [
            s.name for s, cid in zip(sites, contract_ids, strict=True)
            if (run_id, cid) not in read_site_runs(s).finished
        ]  # fmt: skip
        if not missing:
            return
        if time.monotonic() > deadline:
            step(f"holders: no run.finished after {timeout:.0f} s at {', '.join(missing)}")
            return
        time.sleep(0.25)


# -- the whole demo -----------------------------------------------------------------------


def run_demo(opts: DemoOptions, step: Step = lambda _m: None) -> DemoResult:
    """Run the demo (module docstring); raises DataspaceError subclasses on bad input."""
    # heavy (torch): the run's report and the contributions evaluate models
    from dataspace.federated.contribution import run_contributions
    from dataspace.federated.report import write_report

    t0 = time.monotonic()
    if opts.sites < 1 or opts.sites > len(ORGS):
        raise DemoError(f"--sites must be between 1 and {len(ORGS)}, not {opts.sites}")
    if opts.rounds < 1:
        raise DemoError(f"--rounds must be at least 1, not {opts.rounds}")
    if not opts.epsilon > 0:
        raise DemoError(f"--epsilon must be positive, not {opts.epsilon}")
    engine = engine_of(opts)
    if opts.hub_url or (opts.services and opts.port):
        # fail before any work: a hub that is not there, a port that is taken
        if opts.hub_url:
            reachable(opts.hub_url)
        else:
            check_port(opts.port)
    wd = opts.workdir = Path(opts.workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    source = find_source(opts.source)
    step(f"data: {source.path} ({source.episodes} episodes)")
    paths, vdir = prepare_sources(opts, source, step)

    consumer, ckey, ckey_path = consumer_identity(wd)
    sites: list[Site] = []
    datasets: list[dict[str, Any]] = []
    for i, p in enumerate(paths):
        site = open_or_init_site(wd / "sites" / f"site-{i}", ORGS[i])
        ds = enroll_site(site, p, step)
        ds["range"] = p.name.split("-episodes-")[-1]
        ensure_policy(site, ds, opts, consumer.key_b64)
        sites.append(site)
        datasets.append(ds)

    services = None
    witness_keys: list[Path] = []  # the hub's witness key, when it cosigned the sites' logs
    if engine == "hub":
        services = Services.start_with_superlink(wd, sites, opts, step)
    elif opts.services or opts.hub_url:
        services = Services.start(wd, sites, opts, step)
    try:
        contract_ids = []
        for site, ds in zip(sites, datasets, strict=True):
            step(f"{site.name}: contract for {ds['dataset_id']} (epsilon {opts.epsilon})")
            try:
                if services is not None:
                    cid = services.request_contract(site, ds["dataset_id"], ckey)
                else:
                    cid = contract_locally(site, ds["dataset_id"], opts, consumer, ckey)
            except RefusedError as e:
                raise RefusedError(
                    f"{site.name} ({site.root}) refused the contract for {ds['dataset_id']}: {e}"
                ) from e
            contract_ids.append(cid)

        run_id = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        out = wd / "runs" / run_id
        note = None
        if engine == "hub":
            assert services is not None
            history = train_through_hub(opts, services, contract_ids, out, run_id, ckey, step)
        else:
            history, engine, note = train(opts, contract_ids, sites, out, run_id, step)

        step("value: held-out loss on the consumer's episodes, GTG-Shapley contributions")
        val_eps, _ = read_lerobot_episodes(vdir)
        value = run_contributions(out, TEMPLATE, val_eps)
        report = write_report(out)
        if services is not None:
            # through the hub, the run, its rounds and run.finished are registered already
            # (the contributions, which the consumer computes afterwards, are not)
            if engine != "hub":
                step("hub: registering the run and its rounds")
                services.register_run(run_id, contract_ids, history, ckey)
            else:
                await_site_runs(sites, run_id, contract_ids, step)
            witness_keys = await_witnesses(services, sites, step)
    except BaseException:
        if services is not None:
            services.stop()
        raise
    if services is not None and not opts.keep_services:
        services.stop()

    step("auditor: verifying every log with public keys only")
    extra = [Path(str(ckey_path) + ".pub")]
    if services is not None:
        extra += services.trusted_extra() + witness_keys
    trusted = trusted_keys_file(wd, sites, extra)
    audits = [verify_log(str(s.root), trusted) for s in sites]
    if services is not None:
        audits.append(services.verify_hub(trusted))
        if witness_keys:  # a hub this demo ran: a site's rounds must be the hub's run's
            cross_check_sites(audits, sites, wd / "hub" / "log")

    last = history["rounds"][-1] if history.get("rounds") else {}
    per_ds_mse = last.get("eval_mse_per_dataset", {})
    summaries = []
    for site, ds, cid, a in zip(sites, datasets, contract_ids, audits, strict=False):
        (b,) = budget_report(site, ds["dataset_id"])
        summaries.append(
            SiteSummary(
                site=site.name,
                org=site.org,
                dataset_id=ds["dataset_id"],
                name=ds["name"],
                episodes=int(ds["episodes"]),
                frames=int(ds["frames"]),
                episode_range=ds["range"],
                fingerprint=ds["fingerprint"],
                quality=ds["quality"],
                contract_id=cid,
                epsilon_budget=b.budget,
                epsilon_spent=b.spent,
                epsilon_left=b.remaining,
                epsilon_run=float(report["epsilon"].get(ds["dataset_id"], 0.0)),
                heldout_mse=per_ds_mse.get(ds["dataset_id"]),
                contribution=value["contribution"].get(ds["dataset_id"]),
                share=value["split"].get(ds["dataset_id"]),
                log_size=a["size"],
                log_verified=a["ok"],
                log_problem=a["first_violation"],
                log_status=a["status"],
            )
        )
    result = DemoResult(
        workdir=str(wd),
        run_id=run_id,
        engine=engine,
        engine_note=note,
        source=str(source.path),
        bundled_sample=source.bundled,
        rounds=report["rounds"],
        sites=summaries,
        heldout_mse=report["heldout_mse"],
        validation_mse=value["validation_mse"],
        model_sha256=report["model"]["sha256"],
        audit=audits,
        report_html=str(wd / "report.html"),
        seconds=0.0,
        hub_url=services.hub_url if services is not None else None,
    )
    if services is not None and opts.keep_services:
        result.services = services  # type: ignore[attr-defined]  # not a field: not in JSON
    result.seconds = round(time.monotonic() - t0, 1)
    write_html(result, out, wd / "report.html")
    (wd / "summary.json").write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
    (out / "demo.json").write_text(json.dumps(result.to_json(), indent=2, sort_keys=True))
    return result
