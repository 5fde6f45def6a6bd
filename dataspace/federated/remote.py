"""Training from the consumer's own machine, through the hub: :class:`HubEngine`.

The consumer holds no site folder and reaches no site: it talks to the hub's
service (signed requests, :mod:`dataspace.auth.client`) and submits the run to the
hub's Flower SuperLink with Flower's own CLI (``flwr run``). The ServerApp runs in
the hub's worker (``dataspace serve hub-worker --runs-dir``), each ClientApp in its
holder's site worker; what the consumer gets back is what the run directory at the
hub holds (:mod:`.rundir`): the history, the global models, the sites' DP updates.

One run (:meth:`HubEngine.run`):

1. the hub's contract registry says each contract's holder and dataset; a contract
   that is not the caller's, or not agreed, is refused before anything starts;
2. the run is registered at the hub (``POST /v1/runs``; a resumed run is already);
3. ``flwr run APP dataspace --stream --run-config ...`` with ``FLWR_HOME`` under
   ``OUT/deploy`` naming the SuperLink (address and CA from ``GET /v1/hub``, or given);
4. while it runs, ``history.json`` is polled from the hub and each completed round
   reported (``on_round``);
5. the run's files are downloaded into ``OUT`` (``final.npz`` is the last round's
   global model), its rounds registered at the hub (aggregates only) and
   ``run.finished`` logged by the hub, whose model hash must be the downloaded one's;
6. a run that stopped raises :class:`RunStoppedError` naming the holders that took no
   part (offline or refused) and the refusals; ``min_sites`` lets a run go on with
   fewer sites than contracts.

``OUT/deploy`` keeps the Flower app, its ``FLWR_HOME`` and ``logs/flwr-run.log``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.auth.client import (
    ServiceError,
    ServiceNotFoundError,
    call,
    check,
    signed_client,
)
from dataspace.errors import DataspaceError, RefusedError
from dataspace.federated import rundir
from dataspace.federated.deploy import (
    BIN,
    CONNECTION,
    flwr_env,
    flwr_run_args,
    write_app,
    write_connection,
)
from dataspace.federated.spec import RunSpec

OnRound = Callable[[dict[str, Any]], None]


class HubTrainingError(DataspaceError):
    """Training through the hub could not start or did not produce a run."""


class NoSuperLinkError(HubTrainingError):
    """The hub names no SuperLink and none was given."""

    exit_code = 2


class ContractsRefusedError(RefusedError):
    """Contracts that are not the caller's, not agreed, or not for this template."""


class RunStoppedError(HubTrainingError):
    """The run could not go on: it names the holders that took no part, and why."""


class ModelMismatchError(HubTrainingError):
    """The hub logged a final model other than the one the consumer downloaded."""


@dataclass(frozen=True)
class ContractInfo:
    """What the hub's registry says of one contract (and the catalog of its holder)."""

    contract_id: str
    dataset_id: str
    holder: str
    holder_name: str

    def __str__(self) -> str:
        return f"{self.holder_name} (contract {self.contract_id}, dataset {self.dataset_id})"


# --- the hub's registry ------------------------------------------------------------


def check_contracts(
    hub: httpx.Client, ids: list[str], me: str, template: str | None
) -> list[ContractInfo]:
    """Each contract as the hub's registry has it, if it is ``me``'s and agreed."""
    found, bad = [], []
    for cid in ids:
        try:
            c = call(hub, "GET", f"/v1/contracts/{quote(cid, safe='')}")
        except ServiceNotFoundError:
            bad.append(f"{cid} is not a contract of yours at the hub")
            continue
        if c.get("consumer") != me:
            bad.append(f"{cid} is another consumer's contract")
        elif c.get("state") != "agreed":
            bad.append(f"{cid} is {c.get('state')}, not agreed")
        elif template and c.get("template") and c["template"] != template:
            bad.append(f"{cid} allows template {c['template']}, not {template}")
        else:
            found.append(c)
    if bad:
        raise ContractsRefusedError("cannot train: " + "; ".join(bad))
    names = _holder_names(hub)
    return [
        ContractInfo(
            c["contract_id"],
            c["dataset_id"],
            c["holder"],
            names.get((c["holder"], c["dataset_id"])) or f"holder {c['holder'][:8]}",
        )
        for c in found
    ]


def _holder_names(hub: httpx.Client) -> dict[tuple[str, str], str]:
    """(holder key, dataset id) -> the holder's name, from the catalog (best effort)."""
    try:
        page = call(hub, "GET", "/v1/catalog", params={"limit": 1000})
    except ServiceError:
        return {}
    return {
        (e["holder"], e["dataset_id"]): e.get("holder_name") or "" for e in page.get("entries", [])
    }


def superlink_of(hub: httpx.Client) -> tuple[str, str] | None:
    """(address, CA PEM) of the hub's SuperLink, as ``GET /v1/hub`` names it."""
    link = call(hub, "GET", "/v1/hub").get("superlink")
    if not link:
        return None
    return str(link["address"]), str(link["root_certificates"])


def register_run(hub: httpx.Client, spec: RunSpec, me: str) -> bool:
    """Register the run at the hub; False when it is already registered (a resume)."""
    body = {
        "run_id": spec.run_id,
        "contract_ids": spec.contracts,
        "template": spec.template,
        "meta": {"engine": "hub", "rounds": spec.rounds},
    }
    try:
        call(hub, "POST", "/v1/runs", json=body)
        return True
    except ServiceError as e:
        if e.status != 409:
            raise
    try:
        run = call(hub, "GET", f"/v1/runs/{quote(spec.run_id, safe='')}")
    except ServiceNotFoundError as e:
        raise HubTrainingError(f"run id {spec.run_id} is taken at the hub by another run") from e
    if run["consumer"] != me or sorted(run["contract_ids"]) != sorted(spec.contracts):
        raise HubTrainingError(
            f"run {spec.run_id} is registered at the hub with contracts "
            f"{run['contract_ids']}, not {spec.contracts}"
        )
    return False


# --- who took part --------------------------------------------------------------------


def took_part(history: dict[str, Any]) -> set[str]:
    """Dataset ids whose sites replied to the run's last step (the step that stopped it,
    else the last completed round, else the statistics)."""
    if "stopped" in history:
        sites = history["stopped"].get("replied", [])
    elif history.get("rounds"):
        sites = history["rounds"][-1].get("sites", [])
    else:
        sites = (history.get("stats") or {}).get("sites", [])
    return {str(s.get("dataset-id")) for s in sites}


def absent(history: dict[str, Any], contracts: list[ContractInfo]) -> list[ContractInfo]:
    """The contracts whose holder took no part in the run's last step (offline or refused).

    With public statistics and no round, no site was asked anything yet: none is absent.
    """
    nothing_asked = "stopped" not in history and not history.get("rounds")
    if nothing_asked and (history.get("stats") or {}).get("source") == "public":
        return []
    part = took_part(history)
    return [c for c in contracts if c.dataset_id not in part]


def failures(history: dict[str, Any]) -> list[str]:
    """The failures the last step recorded, as ``node N: reason`` (or the reason alone)."""
    if "stopped" in history:
        failed = history["stopped"].get("failed", [])
    elif history.get("rounds"):
        failed = history["rounds"][-1].get("failed", [])
    else:
        failed = (history.get("stats") or {}).get("failed", [])
    return [f"node {f['node']}: {f['reason']}" if "node" in f else str(f["reason"]) for f in failed]


def stopped_message(history: dict[str, Any], contracts: list[ContractInfo], n_min: int) -> str:
    """One line: why the run stopped, who took no part, what to do."""
    run_id = history.get("spec", {}).get("run_id", "?")
    missing = absent(history, contracts)
    parts = [f"run {run_id} stopped at the hub"]
    if missing:
        parts.append(f"no reply from {len(missing)} of {len(contracts)} sites (offline or "
                     f"refused): " + ", ".join(map(str, missing)))  # fmt: skip
    why = failures(history)
    if why:
        parts.append("refusals: " + "; ".join(why))
    if not missing and not why:
        parts.append(str(history.get("error") or "no reason given"))
    if missing and n_min >= len(contracts) and len(missing) < len(contracts):
        parts.append(f"--min-sites {len(contracts) - len(missing)} lets the run go on without them")
    return "; ".join(parts)


# --- the engine ------------------------------------------------------------------------


@dataclass
class HubEngine:
    """Train through the hub at ``hub_url`` with the consumer's ``key`` (module docstring).

    ``superlink`` / ``root_certificates``: the SuperLink's HOST:PORT and CA file, when
    not those the hub names; ``min_sites``: the fewest sites a round may have (default:
    every contract's); ``poll``: seconds between reads of the run's history.
    """

    hub_url: str
    key: Ed25519PrivateKey
    superlink: str | None = None
    root_certificates: Path | None = None
    min_sites: int | None = None
    poll: float = 1.0
    name = "hub"

    @property
    def me(self) -> str:
        return base64.b64encode(self.key.public_key().public_bytes_raw()).decode()

    def run(self, spec: RunSpec, sites: list[Path], on_round: OnRound | None) -> dict[str, Any]:
        if sites:
            raise HubTrainingError("a run through the hub takes no site folders")
        rundir.check_run_id(spec.run_id)  # the hub's worker runs no other id
        out = Path(spec.out_dir).resolve()  # made once the run is accepted, not before
        with signed_client(self.hub_url, self.key) as hub:
            contracts = check_contracts(hub, spec.contracts, self.me, spec.template)
            n = len(contracts)
            n_min = self.min_sites or n
            if not 1 <= n_min <= n:
                raise HubTrainingError(f"--min-sites {n_min}: give 1 to {n} (the contracts)")
            address, ca = self._superlink(hub, out)
            register_run(hub, spec, self.me)
            # the hub worker writes the run to its own runs folder whatever out-dir says:
            # the consumer's local path is none of the hub's business
            wire = replace(spec, min_nodes=n_min, expected_nodes=n, out_dir=spec.run_id)
            wire = wire.completed(n, fold_evaluate=True, pack_arrays=True)
            before = _fetch_history(hub, spec.run_id)  # a resumed run's, from last time
            flwr_log = self._submit(out, address, ca, wire, hub, on_round)
            history = _fetch_history(hub, spec.run_id)
            if history is None or history == before:
                # nothing new at the hub: did this submission run at all?
                why = _flower_outcome(flwr_log, out / "deploy" / "flwr-home")
                if history is None or "completed" not in why:
                    raise HubTrainingError(f"the hub ran no training for run {spec.run_id}: {why}")
            self._download(hub, spec.run_id, history, out)
            _register_rounds(hub, spec.run_id, history)
            self._finish(hub, spec.run_id, history, out)
        if history.get("status") != "finished":
            raise RunStoppedError(stopped_message(history, contracts, n_min))
        history["absent"] = [str(c) for c in absent(history, contracts)]
        return history

    def _superlink(self, hub: httpx.Client, out: Path) -> tuple[str, Path]:
        named = superlink_of(hub) if not (self.superlink and self.root_certificates) else None
        address = self.superlink or (named[0] if named else None)
        if self.root_certificates is not None:
            ca = self.root_certificates.resolve()
        elif named is not None:
            ca = out / "deploy" / "superlink-ca.crt"
            ca.parent.mkdir(parents=True, exist_ok=True)
            ca.write_text(named[1])
        else:
            ca = None
        if address is None or ca is None:
            raise NoSuperLinkError(
                f"the hub at {self.hub_url} names no SuperLink (started without --superlink): "
                "give --superlink HOST:PORT and --root-certificates CA_FILE"
            )
        return address, ca

    def _submit(
        self,
        out: Path,
        address: str,
        ca: Path,
        spec: RunSpec,
        hub: httpx.Client,
        on_round: OnRound | None,
    ) -> str:
        """``flwr run`` the spec on the SuperLink; report rounds until it ends; its output
        (``OUT/deploy/logs/flwr-run.log``)."""
        deploy = out / "deploy"
        home = write_connection(deploy / "flwr-home", address, ca)
        app_dir = write_app(deploy / "app")
        log = deploy / "logs" / "flwr-run.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        shown: set[int] = set()
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                flwr_run_args(app_dir, spec.run_config()),
                env=flwr_env(home),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
            try:
                while proc.poll() is None:
                    time.sleep(self.poll)
                    _report(_fetch_history(hub, spec.run_id), shown, on_round, final=False)
            finally:
                if proc.poll() is None:  # interrupted: the run goes on at the hub
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(10)
        _report(_fetch_history(hub, spec.run_id), shown, on_round, final=True)
        return log.read_text(errors="replace")

    def _download(self, hub: httpx.Client, run_id: str, history: dict, out: Path) -> None:
        """The run's files into ``out`` (names from the history, :func:`.rundir.run_files`)."""
        for name in rundir.run_files(history):
            data = _get_file(hub, run_id, name)
            if data is not None:
                _write(out / name, data)
        # the history as the simulation writes it, naming the consumer's own folder
        local = json.loads(json.dumps(history))
        local.setdefault("spec", {})["out_dir"] = str(out)
        _write(out / "history.json", json.dumps(local, indent=2, sort_keys=True).encode())
        last = rundir.last_round(history)
        final = out / "final.npz"
        final.unlink(missing_ok=True)
        if history.get("status") == "finished" and last is not None:
            shutil.copyfile(out / "rounds" / f"{last:03d}" / "global.npz", final)

    def _finish(self, hub: httpx.Client, run_id: str, history: dict, out: Path) -> None:
        """Have the hub log run.finished; its model hash must be what was downloaded."""
        ack = call(hub, "POST", f"/v1/runs/{quote(run_id, safe='')}/finished")
        last = rundir.last_round(history)
        if last is None:
            return
        got = hashlib.sha256((out / "rounds" / f"{last:03d}" / "global.npz").read_bytes())
        if ack.get("model_sha256") != got.hexdigest():
            raise ModelMismatchError(
                f"the hub logged model {ack.get('model_sha256')} for run {run_id}, but "
                f"rounds/{last:03d}/global.npz downloaded has {got.hexdigest()}"
            )
        history["finished"] = ack


def _fetch_history(hub: httpx.Client, run_id: str) -> dict[str, Any] | None:
    data = _get_file(hub, run_id, "history.json")
    if data is None:
        return None
    try:
        history = json.loads(data)
    except ValueError:  # never: the hub worker replaces it atomically
        return None
    return history if isinstance(history, dict) else None


def _get_file(hub: httpx.Client, run_id: str, name: str) -> bytes | None:
    """One run file from the hub; None when it is not there (yet)."""
    try:
        resp = hub.get(f"/v1/runs/{quote(run_id, safe='')}/files/{name}")
    except httpx.TransportError as e:
        raise HubTrainingError(f"cannot reach the hub at {hub.base_url}: {e}") from e
    if resp.status_code == 404:
        return None
    if not resp.is_success:
        check(resp)  # raises the error it describes, typed
    return resp.content


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _report(history: dict | None, shown: set[int], on_round: OnRound | None, final: bool) -> None:
    """Call ``on_round`` for each round completed since last time (with its evaluation:
    under fold-evaluate a round's held-out MSE arrives with the next round)."""
    if history is None or on_round is None:
        return
    running = history.get("status") == "running"
    for r in history.get("rounds", []):
        mse = r.get("eval_mse")
        ready = isinstance(mse, (int, float)) and math.isfinite(mse)
        if r["round"] not in shown and (ready or final or not running):
            shown.add(r["round"])
            on_round(r)


def _register_rounds(hub: httpx.Client, run_id: str, history: dict) -> None:
    """The rounds at the hub (aggregates: held-out loss, epsilon each round added), as the
    demo registers them; those already there (a resumed run) are kept."""
    run = call(hub, "GET", f"/v1/runs/{quote(run_id, safe='')}")
    known = {r["round"] for r in run.get("rounds", [])}
    before: dict[str, float] = {}
    for r in history.get("rounds", []):
        added = {d: e - before.get(d, 0.0) for d, e in r["epsilon"].items()}
        before.update(r["epsilon"])
        if r["round"] in known:
            continue
        loss = r.get("eval_mse")
        body = {
            "round": r["round"],
            "loss": loss if isinstance(loss, (int, float)) and math.isfinite(loss) else None,
            "epsilon": added,
        }
        call(hub, "POST", f"/v1/runs/{quote(run_id, safe='')}/rounds", json=body)


_STARTED = re.compile(r"Successfully started run (\d+)")


def _flower_outcome(text: str, home: Path) -> str:
    """What Flower says of the run: its status and details (``flwr ls``), else the
    last line ``flwr run`` printed."""
    m = _STARTED.search(text)
    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    if m is None:
        return f"flwr run did not start it: {last or 'no output'}"
    r = subprocess.run(
        [str(BIN / "flwr"), "ls", CONNECTION, "--run-id", m.group(1), "--format", "json"],
        env=flwr_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        run = json.loads(r.stdout[r.stdout.index("{") :])["runs"][0]
    except (ValueError, KeyError, IndexError):
        return f"Flower run {m.group(1)}: {last}"
    return f"Flower run {m.group(1)} {run.get('status')}: {run.get('status-details') or last}"
