"""The hub's state over ``DATA``: its key, its store, its log, kept consistent (see hub.app).

:class:`Hub` is opened once by ``create_app`` and reached by every route through
the :data:`HubDep` dependency (``app.state.hub``). Writes that touch both the
store and the log go through here, so that a registration is never half done:
:func:`log_contract` and, at start, :func:`recover_contracts`.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, Request

from dataspace.audit.events import make_event, parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import ALG_COSIGNATURE_V1, Verifier, raw_public, vkey_text
from dataspace.audit.witness import Witness
from dataspace.audit.witnessing import service_logs
from dataspace.audit.witnesskey import endorse, load_or_create_witness_key, log_origin
from dataspace.auth.service import Caller
from dataspace.errors import DataspaceError
from dataspace.federated.rundir import MAX_RUN_FILE
from dataspace.hub.read_cache import ReadCache
from dataspace.hub.store import GroupCommit, HubStore
from dataspace.site.identity import Identity, load_private_key, new_identity

logger = logging.getLogger("dataspace.hub")

DEFAULT_NAME = "dataspace-hub"
KEY = "hub.key"


def hub_key(data_dir: Path, name: str) -> Ed25519PrivateKey:
    """The hub's private key, made (role operator) on first start."""
    path = data_dir / KEY
    if not path.exists():
        new_identity(path, name=name, role="operator")
    return load_private_key(path)


class HubLog:
    """The hub's transparency log and the events it appends (dataspace.audit).

    ``name`` is the hub's name, the events' actor. A log made now has the origin
    ``dataspace.invalid/hub/HEX`` (:func:`dataspace.audit.witnesskey.log_origin`: HEX
    from SHA-256 of the hub key; stable, not secret, computable by every connector that
    knows the hub's key, unlike the hub's name or a URL); one made before keeps its
    origin, the hub's name.
    """

    def __init__(self, directory: Path, name: str, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.name = name
        self._lock = threading.Lock()
        if directory.exists() and any(directory.iterdir()):
            self.log = TransparencyLog.open(directory, key=key)
        else:
            self.log = TransparencyLog.create(directory, log_origin("hub", raw_public(key)), key)

    @property
    def origin(self) -> str:
        """The log's origin (its checkpoints' first line, its key name)."""
        return self.log.origin

    def record(self, kind: str, **fields: Any) -> int:
        entry = make_event(kind, self.key, self.name, **fields)
        with self._lock:
            return self.log.append(entry)

    def record_many(self, events: list[tuple[str, dict[str, Any]]]) -> list[int]:
        """Several events in one ``append_many`` (one commit, one signed checkpoint)."""
        entries = [make_event(kind, self.key, self.name, **f) for kind, f in events]
        with self._lock:
            return self.log.append_many(entries)

    def vkey(self) -> str:
        """The log's verifier key, C2SP vkey text (what witnesses and auditors trust)."""
        return vkey_text(self.origin, raw_public(self.key))


@dataclass(frozen=True)
class SuperLink:
    """Where consumers submit runs: the SuperLink's Control API and the CA of its TLS."""

    address: str
    root_certificates: str  # PEM


class Hub:
    """Everything a hub request needs: name, key, store, log, publication queue, read cache.

    Opening it makes ``data_dir`` (and the hub's key) if missing, registers the hub
    as operator and the ``trust`` identities with their roles, and finishes any
    contract registration a previous process died in (:func:`recover_contracts`).
    """

    def __init__(
        self,
        data_dir: Path,
        name: str,
        trust: Iterable[Identity] = (),
        *,
        runs_dir: Path | None = None,
        superlink: SuperLink | None = None,
        max_run_file: int = MAX_RUN_FILE,
    ) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        #: absolute: messages naming it are found and scrubbed (auth.service.public_detail)
        self.data_dir = data_dir.resolve()
        self.name = name
        #: the run directories the hub worker writes (``serve hub-worker --runs-dir``)
        self.runs_dir = (runs_dir or self.data_dir / "runs").resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.superlink = superlink
        self.max_run_file = max_run_file
        key = hub_key(self.data_dir, name)
        self.key_id = base64.b64encode(key.public_key().public_bytes_raw()).decode()
        self.store = HubStore(self.data_dir)
        register_participants(self.store, self.key_id, name, trust)
        self.log = HubLog(self.data_dir / "log", name, key)
        #: the key the hub cosigns site logs with, never its log key (DATA/witness.key,
        #: made on first start: dataspace.audit.witnesskey)
        self.witness_key = load_or_create_witness_key(self.data_dir, name)
        self._endorsement = endorse(
            key,
            Verifier(name, raw_public(self.witness_key), ALG_COSIGNATURE_V1),
            self.log.log.verifier,
        )
        recover_contracts(self.store, self.log)
        self.publications = GroupCommit(
            self._commit_publications, name="hub-publications", burst=self.store.burst
        )
        self.read_cache = ReadCache(self.store)

    def _commit_publications(
        self, batch: list[tuple[str, dict[str, Any], dict[str, Any]]]
    ) -> list[int]:
        # the catalog rows first, then their log entries: an acknowledged publication
        # is in both (a kill between the two loses only unacknowledged log entries)
        self.store.publish_many([(holder, entry) for holder, entry, _ in batch])
        return self.log.record_many([("catalog.published", event) for _, _, event in batch])

    def record_refusal(self, caller: Caller, e: DataspaceError, what: dict[str, Any]) -> None:
        """A signed caller's refusal, in the hub's log (auth.service.Refusals)."""
        self.log.record("access.refused", caller=caller.key_id, **what)

    def witness(self) -> Witness:
        """The hub's C2SP witness for the registered holders' site logs (DATA/witness)."""
        w = Witness(
            self.data_dir / "witness",
            self.name,
            self.witness_key,
            [],
            log_keys=[self.log.log.public_key],
        )
        # each holder's site log, under its old origin (its name) or its new one, as
        # endorsed or as cosigned before (dataspace.audit.witnessing.service_logs)
        for k, p in list(self.store.participants.items()):
            if p["role"] == "holder":
                for v in service_logs(w, p["name"], base64.b64decode(k), "site"):
                    w.trust(v)
        w.endorsement = self._endorsement
        return w


def register_participants(
    store: HubStore, hub_key_id: str, name: str, trust: Iterable[Identity]
) -> None:
    """Register the hub (operator, under its own name) and the ``trust`` identities.

    The hub's name is its own: a key that holds it in a store from before names were
    unique is forgotten (it could pass for the hub's log at witnesses). A ``trust``
    identity whose name is taken by another key is refused (ConflictError)."""
    other = store.holder_of_name(name)
    while other is not None and other != hub_key_id:
        logger.warning("participant %s held the hub's name %r: forgotten", other, name)
        store.forget(other)
        other = store.holder_of_name(name)
    for key_b64, who, role in [(hub_key_id, name, "operator")] + [
        (i.key_b64, i.name, i.role) for i in trust
    ]:
        if store.lookup(key_b64) != (who, role):
            store.register(key_b64, who, role)


async def hub_of(request: Request) -> Hub:
    """FastAPI dependency: the app's :class:`Hub` (async: read routes stay in the event loop)."""
    return request.app.state.hub


#: a route parameter: the hub's state
HubDep = Annotated[Hub, Depends(hub_of)]


def log_contract(store: HubStore, hub_log: HubLog, record: dict[str, Any]) -> int:
    """Append a stored contract's ``contract.registered`` event, then mark it logged."""
    idx = hub_log.record(
        "contract.registered",
        contract_id=record["contract_id"],
        dataset_id=record["dataset_id"],
        fingerprint=record["fingerprint"],
        purpose=record["purpose"],
        holder=record["holder"],
        consumer=record["consumer"],
        epsilon=record["epsilon"],
        state=record["state"],
    )
    store.mark_logged(record["contract_id"], idx)
    return idx


def recover_contracts(store: HubStore, hub_log: HubLog) -> None:
    """Finish registrations the hub died in (stored, not marked logged): no half contract.

    A registration is three writes: the row (log_index NULL), the log entry, the
    mark. After a kill between the first two, the entry is appended now; between
    the last two, it is found in the log and only the mark is written. Either
    way the contract is served only with its log entry (tests/assurance/test_hub_faults.py).
    """
    pending = store.unlogged_contracts()
    if not pending:
        return
    logged: dict[tuple[str, str], int] = {}
    log_ = hub_log.log
    for i, raw in enumerate(log_.entries(0, log_.size)):
        ev = parse_event(raw)
        if ev.kind == "contract.registered":
            logged[(ev.fields.get("contract_id"), ev.fields.get("state"))] = i
    for rec in pending:
        idx = logged.get((rec["contract_id"], rec["state"]))
        if idx is None:
            log_contract(store, hub_log, rec)
        else:
            store.mark_logged(rec["contract_id"], idx)
