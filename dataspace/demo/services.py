"""The demo's services: the hub and one connector per site, as plain processes.

Each is exactly the command a deployment runs (``dataspace serve hub --data DIR
--port N`` and ``dataspace serve connector SITE --hub URL --port N``, the
commands of docker-compose.yml) on 127.0.0.1. Contracts then go over HTTP with
signed requests (``dataspace.connectors.client.request_via_connector``), the
connectors register them with the hub, and the consumer registers its run and
rounds there, so the hub's dashboard shows the whole story.

``--hub URL`` uses a hub that is already running instead of starting one.

:meth:`Services.start_with_superlink` is the consumer's path of the default demo:
first what the hub operator and the holders run beside the services (a Flower
SuperLink with TLS and SuperNode authentication, the hub's worker confined to
``WORKDIR/hub/runs``, and per holder a SuperNode and its site worker over that
holder's folder: :class:`dataspace.federated.deploy.Deployment`), then the hub
service naming that SuperLink to consumers (``--superlink``, ``--superlink-ca``,
``--runs-dir``), then the connectors. Logs are in ``WORKDIR/deploy/logs`` and
``WORKDIR/logs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from dataspace.auth.client import call, signed_client
from dataspace.connectors.client import request_via_connector
from dataspace.demo.auditor import verify_log
from dataspace.errors import DataspaceError, NotFoundError
from dataspace.federated.deploy import Deployment
from dataspace.net import bind, free_port
from dataspace.site.folder import Site
from dataspace.site.identity import load_identity, load_private_key, new_identity

PYTHON = sys.executable


class DemoServiceError(DataspaceError):
    """A service that would not start or cannot be reached."""

    exit_code = 2


def check_port(port: int) -> None:
    """Fail clearly, before anything starts, when ``port`` is taken."""
    bind("127.0.0.1", port).close()


def reachable(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """The ``/healthz`` answer of a service, or a DemoServiceError naming the URL."""
    try:
        r = httpx.get(url.rstrip("/") + "/healthz", timeout=timeout)
    except (httpx.HTTPError, ValueError) as e:
        raise DemoServiceError(f"cannot reach the hub at {url}: {e}") from e
    if r.status_code != 200:
        raise DemoServiceError(f"{url}/healthz answered HTTP {r.status_code}: not a dataspace hub")
    try:
        return r.json()
    except ValueError as e:
        raise DemoServiceError(f"{url}/healthz did not answer JSON: not a dataspace hub") from e


@dataclass
class Process:
    name: str
    url: str
    proc: subprocess.Popen
    log: Path

    @classmethod
    def spawn(
        cls, name: str, args: list[str], port: int, logs: Path, env: dict | None = None
    ) -> Process:
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        f = open(log, "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [PYTHON, "-m", "dataspace.cli.serve", *args, "--port", str(port)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        return cls(name, f"http://127.0.0.1:{port}", proc, log)

    def wait_ready(self, timeout: float = 300.0, until: Callable[[dict], bool] = bool) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise DemoServiceError(
                    f"{self.name} exited with {self.proc.returncode}: {' / '.join(tail)} "
                    f"(log {self.log})"
                )
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(self.url + "/healthz", timeout=2)
                if r.status_code == 200 and until(r.json() or {"ok": True}):
                    return
            time.sleep(0.2)
        raise DemoServiceError(
            f"{self.name} at {self.url} not ready in {timeout:.0f}s (log {self.log})"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Threaded:
    """The same service app run by uvicorn in a thread of this process (tests, dashboard)."""

    def __init__(self, name: str, args: list[str], port: int) -> None:
        import threading

        import uvicorn


        self.name, self.url = name, f"http://127.0.0.1:{port}"
        opts = _parse(args)
        trust = [load_identity(Path(p)) for p in opts.get("--trust", [])]
        # heavy (FastAPI, uvicorn): only the service this thread runs
        if args[0] == "hub":
            from dataspace.hub.app import create_app as hub_app

            app = hub_app(Path(opts["--data"][0]), trust=trust)
        else:
            # heavy (FastAPI)
            from dataspace.connectors.service import create_app as connector_app

            app = connector_app(Path(args[1]), opts["--hub"][0], public_url=self.url, trust=trust)
        sock = bind("127.0.0.1", port)
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()

    def wait_ready(self, timeout: float = 60.0, until: Callable[[dict], bool] = bool) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = httpx.get(self.url + "/healthz", timeout=2)
                if r.status_code == 200:
                    return
            time.sleep(0.1)
        raise DemoServiceError(f"{self.name} at {self.url} not ready in {timeout:.0f}s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def _parse(args: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, a in enumerate(args):
        if a.startswith("--") and i + 1 < len(args):
            out.setdefault(a, []).append(args[i + 1])
    return out


def _spawn(name: str, args: list[str], port: int, logs: Path, threads: bool, env=None):
    if threads:
        return Threaded(name, args, port)
    return Process.spawn(name, args, port, logs, env)


@dataclass
class Services:
    workdir: Path
    hub_url: str
    hub: Process | Threaded | None
    connectors: dict[str, Process | Threaded] = field(default_factory=dict)
    opts: Any = None
    hub_info: dict[str, Any] = field(default_factory=dict)
    #: the SuperLink, hub worker and holders' SuperNodes (:meth:`start_with_superlink`)
    deployment: Deployment | None = None

    @property
    def dashboard_url(self) -> str:
        """The dashboard's address with the hub's token (only a hub we started has it here)."""
        # heavy (FastAPI): the dashboard module, for one file name
        from dataspace.hub.dashboard import TOKEN_FILE

        token = self.workdir / "hub" / TOKEN_FILE
        query = f"?token={token.read_text().strip()}" if token.exists() else ""
        return f"{self.hub_url}/dashboard{query}"

    @classmethod
    def start_with_superlink(
        cls, workdir: Path, sites: list[Site], opts: Any, step: Callable[[str], None]
    ) -> Services:
        """The hub with its SuperLink and worker, the holders' SuperNodes and site workers,
        then the hub service and the connectors (module docstring), all as processes."""
        step("hub: Flower SuperLink (TLS, SuperNode auth) and the hub worker; holders: a "
             "SuperNode and a site worker each")  # fmt: skip
        dep = Deployment(
            workdir / "deploy",
            [s.root for s in sites],
            runs_dir=workdir / "hub" / "runs",
            # a rerun in the same workdir starts a fresh SuperLink (new TLS and node keys)
            database=":flwr-in-memory:",
        )
        dep.start()
        try:
            assert dep.tls is not None
            self = cls.start(
                workdir, sites, opts, step,
                hub_args=["--runs-dir", str(workdir / "hub" / "runs"),
                          "--superlink", f"127.0.0.1:{dep.control_port}",
                          "--superlink-ca", str(dep.tls.ca_cert)],
                threads=False,
            )  # fmt: skip
        except BaseException:
            dep.stop()
            raise
        self.deployment = dep
        return self

    @classmethod
    def start(
        cls,
        workdir: Path,
        sites: list[Site],
        opts: Any,
        step: Callable[[str], None],
        hub_args: list[str] | None = None,
        threads: bool | None = None,
    ) -> Services:
        """Start (or reach) the hub, then one connector per site; wait until all answer.
        ``hub_args``: more options of ``serve hub``; ``threads``: run the services in this
        process (default: ``opts.services == "threads"``)."""
        if threads is None:
            threads = opts.services == "threads"
        logs = workdir / "logs"
        hub = None
        if opts.hub_url:
            step(f"hub: {opts.hub_url}")
            reachable(opts.hub_url)
            hub_url = opts.hub_url.rstrip("/")
        else:
            port = opts.port or free_port()
            check_port(port)
            args = ["hub", "--data", str(workdir / "hub")]
            for s in sites:
                args += ["--trust", str(s.root / "site.key.pub")]
            auditor = auditor_identity(workdir)
            args += ["--trust", str(auditor) + ".pub", *(hub_args or [])]
            step(f"hub: dataspace serve hub on 127.0.0.1:{port}")
            # the holders of this one-machine demo use the hub's dashboard to approve requests
            holder_keys = os.pathsep.join(str(s.key_path) for s in sites)
            env = {"DATASPACE_DASHBOARD_HOLDER_KEYS": holder_keys}
            hub = _spawn("hub", args, port, logs, threads, env)
            hub_url = hub.url
        self = cls(workdir, hub_url, hub, opts=opts)
        try:
            if hub is not None:
                hub.wait_ready()
            for s in sites:
                step(f"{s.name}: dataspace serve connector")
                self.connectors[s.name] = _spawn(
                    f"connector-{s.name}",
                    ["connector", str(s.root), "--hub", hub_url],
                    free_port(),
                    logs,
                    threads,
                )
            for p in self.connectors.values():
                p.wait_ready()
            if hub is not None:
                self.fetch_hub_keys()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in self.connectors.values():
            p.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.deployment is not None:
            self.deployment.stop()

    def request_contract(self, site: Site, dataset_id: str, key) -> str:
        p = self.connectors[site.name]
        c = request_via_connector(
            p.url,
            key,
            dataset=dataset_id,
            purpose="robot-policy-training",
            epsilon=self.opts.epsilon,
            rounds=self.opts.rounds,
            until=datetime.now(UTC) + timedelta(days=30),
            template="bc-mlp",
            delta=self.opts.delta,
            expected_holder=site.identity.key_b64,
        )
        if c.get("state") not in (None, "agreed", "active"):
            raise DemoServiceError(
                f"contract {c.get('contract_id')} for {dataset_id} is {c.get('state')}: "
                "the holder must approve it first (dashboard or `dataspace contract approve`)"
            )
        return str(c["contract_id"])

    def await_contracts(self, contract_ids: list[str], key, timeout: float = 60.0) -> None:
        """Wait until the hub's registry has every contract as agreed: the connectors copy
        agreed contracts to the hub in the background (what the README's consumer waits for
        with ``dataspace contract list --hub``)."""
        deadline = time.monotonic() + timeout
        with signed_client(self.hub_url, key) as c:
            for cid in contract_ids:
                while True:
                    with contextlib.suppress(NotFoundError):
                        if call(c, "GET", f"/v1/contracts/{cid}").get("state") == "agreed":
                            break
                    if time.monotonic() > deadline:
                        raise DemoServiceError(
                            f"contract {cid} did not reach the hub's registry as agreed within "
                            f"{timeout:.0f} s (connector logs in {self.workdir / 'logs'})"
                        )
                    time.sleep(0.2)

    def register_run(self, run_id: str, contract_ids: list[str], history: dict, key) -> None:
        """Register the run and its rounds with the hub (aggregates only)."""
        with signed_client(self.hub_url, key) as c:
            # the connectors register contracts with the hub in the background
            deadline = time.monotonic() + 30
            while True:
                try:
                    call(
                        c,
                        "POST",
                        "/v1/runs",
                        json={"run_id": run_id, "contract_ids": contract_ids, "template": "bc-mlp",
                              "meta": {"engine": "demo"}},
                    )  # fmt: skip
                    break
                except NotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            value = _contribution(Path(history["spec"]["out_dir"]))
            # what each round added to each contract's epsilon (round 1 includes the
            # statistics released before it), so the hub's spent is the sites' ledgers'
            before: dict[str, float] = {}
            for r in history.get("rounds", []):
                added = {d: e - before.get(d, 0.0) for d, e in r["epsilon"].items()}
                before.update(r["epsilon"])
                call(
                    c,
                    "POST",
                    f"/v1/runs/{run_id}/rounds",
                    json={
                        "round": r["round"],
                        "loss": r["eval_mse"],
                        "epsilon": added,
                        "contributions": value if r is history["rounds"][-1] else {},
                    },
                )

    def fetch_hub_keys(self) -> None:
        """The hub log's vkey and identity, as an auditor gets them: ``GET /v1/hub``."""

        key = load_private_key(auditor_identity(self.workdir))
        with signed_client(self.hub_url, key) as c:
            info = call(c, "GET", "/v1/hub")
        d = self.workdir / "auditor"
        (d / "hub.vkey").write_text(info["vkey"].strip() + "\n")
        self.hub_info = info

    def trusted_extra(self) -> list[Path]:
        """The hub log's vkey, for the auditor's trusted keys (the hub signs its events)."""
        vk = self.workdir / "auditor" / "hub.vkey"
        return [vk] if vk.exists() else []

    def verify_hub(self, trusted: Path) -> dict[str, Any]:
        return verify_log(str(self.workdir / "hub" / "log"), trusted)


def _contribution(out: Path) -> dict[str, float]:
    p = out / "contribution.json"
    return json.loads(p.read_text()) if p.exists() else {}


def auditor_identity(workdir: Path) -> Path:
    path = workdir / "auditor" / "auditor.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        new_identity(path, name="auditor", role="auditor")
    return path
