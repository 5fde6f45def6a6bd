"""Fixtures for the services: an enrolled real dataset with planted canaries, keys, servers.

The canary site is built once per session (``dataspace connector init`` and
``dataspace connector enroll`` on a copy of the real SO-101 dataset whose
frames carry unique planted values) and copied for each test that changes it.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.cli import main as cli_main
from dataspace.site.folder import Site
from dataspace.site.identity import Identity, load_identity, load_private_key, new_identity
from tests.conftest import SO101

#: planted in the raw frames: observation.state[0] and action[3] of a few rows
CANARIES = (4321.98765, -8765.4321, 2718.28182)
CANARY_ROWS = (7, 400, 1100)
PYTHON = sys.executable


def canary_texts() -> list[bytes]:
    """Every encoding of the canaries we search responses for."""
    out: list[bytes] = []
    for v in CANARIES:
        f32 = float(np.float32(v))
        for x in (v, f32):
            out += [repr(x).encode(), f"{x:.4f}".encode(), f"{x:.3f}".encode()]
            out += [np.float64(x).tobytes(), np.float32(x).tobytes()]
            out.append(base64.b64encode(np.float32(x).tobytes()))
    return out


def plant_canaries(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    path = dst / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    cols = {}
    for name, pos in (("observation.state", 0), ("action", 3)):
        arr = table.column(name).combine_chunks()
        width = arr.type.list_size
        flat = arr.values.to_numpy(zero_copy_only=False).copy()
        for v, row in zip(CANARIES, CANARY_ROWS, strict=True):
            flat[row * width + pos] = v
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)
    for name, arr in cols.items():
        table = table.set_column(table.schema.get_field_index(name), name, arr)
    pq.write_table(table, path)


def run_cli(*args: str) -> None:
    rc = cli_main(list(args))
    assert rc == 0, f"dataspace {' '.join(args)} exited {rc}"


@pytest.fixture(scope="session")
def site_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template")
    raw = root / "raw"
    plant_canaries(SO101, raw)
    site = root / "site"
    run_cli("connector", "init", str(site), "--org", "Canary Robotics", "--name", "canary-site")
    run_cli("connector", "enroll", str(site), str(raw), "--name", "so101")
    return site


@pytest.fixture
def site(site_template: Path, tmp_path: Path) -> Site:
    dst = tmp_path / "site"
    shutil.copytree(site_template, dst)
    return Site.open(dst)


@dataclass
class Party:
    key: Ed25519PrivateKey
    key_path: Path
    key_id: str


def make_party(tmp: Path, name: str, role: str) -> Party:
    path = tmp / f"{name}.key"
    new_identity(path, name=name, role=role)
    return Party(load_private_key(path), path, load_identity(path).key_b64)


def hub_parties(keys: Path) -> tuple[dict[str, Party], list[Identity]]:
    """The in-process hub tests' cast: two holders and an auditor the hub trusts at start,
    two consumers (alice, bob) it does not."""
    keys.mkdir(parents=True, exist_ok=True)
    cast = [("holder", "site-a", "holder"), ("holder2", "site-b", "holder"),
            ("alice", "alice", "consumer"), ("bob", "bob", "consumer"),
            ("auditor", "auditor", "auditor")]  # fmt: skip
    parties = {k: make_party(keys, n, r) for k, n, r in cast}
    trust = [
        Identity(n, r, base64.b64decode(parties[k].key_id))
        for k, n, r in cast
        if r != "consumer"
    ]
    return parties, trust


@pytest.fixture
def parties(tmp_path: Path) -> dict[str, Party]:
    d = tmp_path / "keys"
    d.mkdir()
    return {
        "alice": make_party(d, "alice", "consumer"),
        "bob": make_party(d, "bob", "consumer"),
        "auditor": make_party(d, "auditor", "auditor"),
    }


def dataset_id(site: Site) -> str:
    from dataspace.site.store import list_datasets

    return list_datasets(site)[0].dataset_id


def set_policy(site: Site, *, consumers: list[str], manual: bool = False, epsilon: float = 8.0):
    from dataspace.policy.odrl import build_policy
    from dataspace.policy.policies import publish_policy
    from dataspace.site.store import list_datasets

    rec = list_datasets(site)[0]
    policy = build_policy(
        dataset_id=rec.dataset_id,
        fingerprint=rec.fingerprint,
        assigner=site.identity.key_b64,
        epsilon=epsilon,
        delta=1e-5,
        purposes=["research"],
        consumers=consumers,
        until=datetime.now(UTC) + timedelta(days=30),
        max_rounds=10,
        templates=["mlp"],
        manual_approval=manual,
    )
    return publish_policy(site, policy)


def until(days: int = 7) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- real processes ---------------------------------------------------------------


class Service:
    """A ``dataspace serve ...`` subprocess on 127.0.0.1, killed at the end."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "dataspace", "serve", *args, "--port", str(port)],
            stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 180.0, until=lambda h: True) -> dict:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.url} exited {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                r = httpx.get(self.url + "/healthz", timeout=2)
                if r.status_code == 200 and until(r.json()):
                    return r.json()
                last = r.text
            except httpx.TransportError as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"{self.url} not ready: {last}; log: {self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for s in started:
        s.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # starlette's TestClient (an httpx client over the ASGI app) warns about httpx2
    for item in items:
        if "tests/services" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))


def signed_contract(
    holder: Ed25519PrivateKey,
    consumer: Ed25519PrivateKey,
    dataset: str,
    fingerprint: str,
    *,
    contract_id: str | None = None,
    state: str = "agreed",
    days: int = 7,
    **terms: object,
) -> dict:
    """A contract as a holder's connector registers it at the hub (publisher.hub_record):
    terms signed by ``holder`` and ``consumer`` (``terms`` overrides epsilon, purpose...)."""
    import uuid

    from dataspace.policy import contracts as pc

    granted = {"purpose": "research", "epsilon": 1.0, "rounds": 3, "template": "mlp"}
    granted |= {"delta": 1e-5, **terms}
    t = pc.Terms(
        **granted,  # type: ignore[arg-type]
        until=(datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0),
        contract_id=contract_id or str(uuid.uuid4()),
        holder=base64.b64encode(holder.public_key().public_bytes_raw()).decode(),
        consumer=base64.b64encode(consumer.public_key().public_bytes_raw()).decode(),
        dataset_id=dataset,
        fingerprint=fingerprint,
        created=datetime.now(UTC).replace(microsecond=0),
    )
    agreement = pc.Agreement(t, state, pc.sign_terms(t, holder), pc.sign_terms(t, consumer))
    flat = t.to_json()
    return {
        "contract_id": t.contract_id,
        "dataset_id": dataset,
        "fingerprint": fingerprint,
        "consumer": t.consumer,
        "purpose": t.purpose,
        "template": t.template,
        "epsilon": t.epsilon,
        "delta": t.delta,
        "rounds": t.rounds,
        "until": flat["until"],
        "state": state,
        "connector_url": None,
        "agreement": agreement.to_json(),
    }
