"""Flower's deployment engine on one machine: a SuperLink and one SuperNode per site,
as separate processes on 127.0.0.1, with TLS and SuperNode authentication.

Everything a run needs is made here, per run, under ``OUT/deploy``: a CA and
server certificate (:mod:`.pki`), one ECDSA node key per site (registered with
``flwr supernode register``), ``FLWR_HOME`` with the connection in
``config.toml``, the app directory whose ``pyproject.toml`` names the
connector's apps (:mod:`.server_app`, :mod:`.client_app`), and the logs of
every process. Environment for all of them: ``FLWR_HOME`` per run,
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (the apps run in this
virtual environment; uv would fetch other wheels), ``FLWR_TELEMETRY_ENABLED=0``,
``FLWR_DISABLE_UPDATE_CHECK=1``.

Each SuperNode is given its site folder as node config (``site="/abs/path"``);
its ClientApp reads only that site.

Latency (see bench/RESULTS.md, fl_overhead): by default each SuperNode runs
with ``--isolation process`` and its site's warm worker is its SuperExec
(:mod:`.site_worker` executor mode, authenticated with a per-node SuperExec
HMAC secret), and the SuperLink runs with ``--isolation process`` with the
hub's warm worker as its ServerApp executor (:mod:`.hub_worker`), so no
process starts per message or per run; SuperNodes are started through
:mod:`.supernode`, which lowers Flower's fixed 3 s pull interval to 0.1 s
while messages flow; the ServerApp pulls replies every 50 ms, and evaluation
travels inside the next round's train message (``fold-evaluate``), with the
model as one flat tensor (``pack-arrays``, :mod:`.packing`).
``isolation="subprocess"`` keeps Flower's default (a ``flwr-clientapp``
process per message, forwarding to the warm worker over a Unix socket when
``warm``). ``flwr run --stream`` may exit 0 when the run failed, so the
outcome is read from the run directory's ``history.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from dataspace.errors import DataspaceError
from dataspace.federated.pki import TlsFiles, make_node_key, make_superexec_secret, make_tls
from dataspace.net import free_port

BIN = Path(sys.executable).parent
CONNECTION = "dataspace"


class DeploymentError(DataspaceError):
    """A SuperLink or SuperNode that would not start, or a run that did not finish."""


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(f"process exited ({proc.returncode}); see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise DeploymentError(f"port {port} did not open in {timeout}s; see {log}")


def app_pyproject(name: str = "dataspace-train") -> str:
    """The app's pyproject: components are the connector's installed modules."""
    return f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "dataspace federated DP training (connector apps)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "dataspace"

[tool.flwr.app.components]
serverapp = "dataspace.federated.server_app:app"
clientapp = "dataspace.federated.site_worker:app"

[tool.flwr.app.config]
run-id = ""
contracts = ""
template = "bc-mlp"
num-rounds = 1
out-dir = ""
seed = 0
lr = 0.001
optimizer = "adam"
lr-schedule = "cosine"
warmup = 0.05
local-epochs = 0
min-nodes = 1
expected-nodes = 0
round-timeout = 600.0
connect-timeout = 120.0
fold-evaluate = false
secagg = false
secagg-clipping-range = 8.0
secagg-max-weight = 0.0
pack-arrays = false
public-stats = ""
"""


def write_app(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(app_pyproject())
    (directory / "README.md").write_text(
        "Connector apps of dataspace: the code is dataspace.federated, installed at each site.\n"
    )
    return directory


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if '"' in str(v) and "'" not in str(v) and "\n" not in str(v):
        # a JSON object (public-stats): a TOML literal string, which flwr's
        # --run-config parser reads (it cuts a "..." value at its first quote)
        return f"'{v}'"
    return json.dumps(str(v))


def flwr_run_args(app_dir: Path, config: dict[str, Any]) -> list[str]:
    """``flwr run APP CONNECTION --stream --run-config ...`` for a run config."""
    cfg = " ".join(f"{k}={_toml(v)}" for k, v in config.items())
    return [str(BIN / "flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config", cfg]


def flwr_env(home: Path) -> dict[str, str]:
    """The environment of a ``flwr`` command whose connections are in ``home/config.toml``."""
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONUNBUFFERED="1",
        # Flower starts its helpers (flower-superexec, flwr-serverapp, ...) by name
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def write_connection(home: Path, address: str, ca_cert: Path) -> Path:
    """``home/config.toml`` naming the SuperLink at ``address`` (TLS with ``ca_cert``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f"address = {json.dumps(address)}\n"
        f"root-certificates = {json.dumps(str(ca_cert.resolve()))}\n"
    )
    return home


@dataclass
class Deployment:
    """A running SuperLink + SuperNodes; use as a context manager (stops them all)."""

    root: Path
    sites: Sequence[Path]
    trusted_entities: Path | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    tls: TlsFiles | None = None
    control_port: int = 0
    node_keys: list[Path] = field(default_factory=list)
    #: run a warm site worker per SuperNode (see :mod:`.site_worker`)
    warm: bool = True
    sockets: list[Path] = field(default_factory=list)
    #: extra SuperNodes started with ``--trusted-entities guard_trust`` (they must refuse FABs
    #: that carry no signature by a trusted key)
    guarded_sites: Sequence[Path] = ()
    guard_trust: Path | None = None
    #: "process": the warm worker is the SuperNode's SuperExec (no process per message);
    #: "subprocess": Flower starts ``flwr-clientapp`` per message (proxy to the worker if warm)
    isolation: str = "process"
    #: start SuperNodes through :mod:`.supernode` (pull interval capped, see there)
    fast_poll: bool = True
    #: the ServerApp runs in a warm hub process (:mod:`.hub_worker`), not one per run
    warm_hub: bool = True
    #: the SuperLink's state: a file under ``root`` if None (kept for audit), or Flower's
    #: ":flwr-in-memory:" (no disk writes: faster on a loaded machine)
    database: str | None = None
    #: the hub's deployment: the hub worker confines every run to ``runs_dir/<run-id>``
    #: and runs only runs the hub registered there (:mod:`.rundir`); None: ``out-dir``
    runs_dir: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = flwr_env(self.root / "flwr-home")
        # without the warm hub worker, the SuperLink's SuperExec starts the ServerApp
        # within 0.2 s of `flwr run` (default 1 s)
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.2"
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        f = open(log, "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            args, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def start(self) -> Deployment:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Deployment:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls(self.root / "tls")
        # one HTTPS port serves the Control, Fleet and Runtime APIs (Flower 1.42)
        self.control_port = free_port()
        address = f"127.0.0.1:{self.control_port}"
        write_connection(self.root / "flwr-home", address, self.tls.ca_cert)
        hub_args: list[str] = []
        if self.warm_hub:
            hub_secret = self._secret("hub")
            hub_args = ["--isolation", "process", "--superexec-auth-secret-file", str(hub_secret)]
        link = self._spawn(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile", str(self.tls.ca_cert),
                "--ssl-certfile", str(self.tls.server_cert),
                "--ssl-keyfile", str(self.tls.server_key),
                "--enable-supernode-auth",
                "--host", "127.0.0.1",
                "--port", str(self.control_port),
                "--database", self.database or str(self.root / "superlink.db"),
                *hub_args,
            ],
        )  # fmt: skip
        _wait_port(self.control_port, link, self.root / "logs" / "superlink.log")
        if self.warm_hub:
            self._spawn(
                "hub-worker",
                [
                    str(BIN / "dataspace"), "serve", "hub-worker",
                    "--runtime-api", f"127.0.0.1:{self.control_port}",
                    "--root-certificates", str(self.tls.ca_cert),
                    "--secret-file", str(hub_secret),
                    *(["--runs-dir", str(self.runs_dir)] if self.runs_dir else []),
                ],
            )  # fmt: skip
        nodes = [(Path(s), self.trusted_entities) for s in self.sites]
        nodes += [(Path(s), self.guard_trust) for s in self.guarded_sites]
        for i, (site, trust) in enumerate(nodes):
            key, pub = make_node_key(self.root / "keys" / f"node-{i}.key")
            self.node_keys.append(key)
            self.register(pub)
            self.start_supernode(i, site, key, trust)
        # warm workers are ready once their imports are done: they print "site worker ..."
        # or "hub worker ..." then
        for name in [n for n in self.procs if n.startswith(("worker-", "hub-worker"))]:
            self._wait_log(name, " worker ")
        return self

    def _wait_log(self, name: str, text: str, timeout: float = 300.0) -> None:
        log = self.root / "logs" / f"{name}.log"
        deadline = time.monotonic() + timeout
        while text not in log.read_text(errors="replace"):
            if self.procs[name].poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(f"{name} did not get ready; see {log}")
            time.sleep(0.1)

    def register(self, pub: Path) -> None:
        r = subprocess.run(
            [str(BIN / "flwr"), "supernode", "register", str(pub), CONNECTION],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise DeploymentError(f"flwr supernode register {pub}: {r.stdout}{r.stderr}")

    def start_worker(self, i: int) -> Path:
        """The site's warm worker serving a Unix socket (subprocess isolation)."""
        sock = Path(tempfile.gettempdir()) / f"dsw-{uuid.uuid4().hex[:12]}.sock"
        proc = self._spawn(
            f"worker-{i}",
            [sys.executable, "-m", "dataspace.federated.site_worker", "--socket", str(sock)],
        )
        self.sockets.append(sock)
        deadline = time.monotonic() + 180
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(f"site worker {i} did not start; see logs/worker-{i}.log")
            time.sleep(0.1)
        return sock

    def start_executor(self, i: int, runtime_port: int, secret: Path) -> subprocess.Popen:
        """The site's warm worker as the SuperNode's SuperExec (process isolation)."""
        return self._spawn(
            f"worker-{i}",
            [
                str(BIN / "dataspace"), "serve", "site-worker",
                "--runtime-api", f"127.0.0.1:{runtime_port}",
                "--secret-file", str(secret),
            ],
        )  # fmt: skip

    def _secret(self, i: int | str) -> Path:
        """A fresh SuperExec HMAC secret for node ``i``, readable by the holder only."""
        return make_superexec_secret(self.root / "keys" / f"superexec-{i}.secret")

    def start_supernode(
        self, i: int, site: Path, key: Path, trusted_entities: Path | None = None
    ) -> subprocess.Popen:
        node_config = f"site={_toml(str(site.resolve()))}"
        executor = self.warm and self.isolation == "process"
        if self.warm and not executor:
            node_config += f" worker={_toml(str(self.start_worker(i)))}"
        runtime_port = free_port()
        launcher = (
            [sys.executable, "-m", "dataspace.federated.supernode"]
            if self.fast_poll
            else [str(BIN / "flower-supernode")]
        )
        args = [
            *launcher,
            "--superlink", f"127.0.0.1:{self.control_port}",
            "--root-certificates", str(self.tls.ca_cert),  # type: ignore[union-attr]
            "--auth-supernode-private-key", str(key),
            "--node-config", node_config,
            "--port", str(runtime_port),
        ]  # fmt: skip
        if trusted_entities is not None:
            args += ["--trusted-entities", str(trusted_entities)]
        if executor:
            secret = self._secret(i)
            args += ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]
        proc = self._spawn(f"supernode-{i}", args)
        if executor:
            self.start_executor(i, runtime_port, secret)
        return proc

    def _tree(self, name: str) -> list[psutil.Process]:
        """The process and every descendant (Flower detaches some helpers)."""
        try:
            p = psutil.Process(self.procs[name].pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, name: str) -> None:
        """Kill one process and its descendants hard (fault injection)."""
        for p in self._tree(name):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.procs[name].wait(10)

    def stop(self) -> None:
        tree = [p for name in reversed(list(self.procs)) for p in self._tree(name)]
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(tree, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        for sock in self.sockets:
            sock.unlink(missing_ok=True)

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, app_dir: Path, config: dict[str, Any], timeout: float = 900) -> str:
        """``flwr run APP CONNECTION --stream --run-config ...``; returns its output."""
        r = subprocess.run(
            flwr_run_args(app_dir, config),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out = r.stdout + r.stderr
        (self.root / "logs" / "flwr-run.log").write_text(out)
        return out


