"""The engines that run the apps: in one process (simulation) or on Flower's
deployment engine (SuperLink + one SuperNode per site, see :mod:`.deploy`).

Both run the same :mod:`.server_app` and :mod:`.client_app`. The simulation is
an in-process ``Grid``: each message is handed to the ClientApp of the node it
is addressed to, with that node's persistent ``Context`` (node config
``site=...``), in node order. There is no Ray and no thread pool, so a run is
a pure function of its inputs and seed: same seed, same model.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from dataspace.connectors.site import Site
from dataspace.federated.normalize import Stats
from dataspace.federated.public_stats import check_stats, to_lists
from dataspace.federated.server_app import RunSpec, run_training


@dataclass
class _Node:
    node_id: int
    context: Context


class LocalGrid(Grid):
    """A ``Grid`` whose nodes are ClientApps called in this process."""

    def __init__(self, client_app: Any, site_roots: Sequence[Path], run_id: int = 1) -> None:
        self._app = client_app
        self._run = Run.create_empty(run_id)
        # Flower stamps instruction messages with the task's identity; in one
        # process we are the ServerApp's task (node 0 is the SuperLink's side)
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 0
        self.nodes = {
            i + 1: _Node(
                i + 1, Context(run_id, i + 1, {"site": str(Path(r).resolve())}, RecordDict(), {})
            )
            for i, r in enumerate(site_roots)
        }
        self._replies: dict[str, Message] = {}
        #: node ids that stop answering (fault injection in tests)
        self.dead: set[int] = set()

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self.nodes if n not in self.dead]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            node = self.nodes[msg.metadata.dst_node_id]
            if node.node_id in self.dead:
                continue
            try:
                reply = self._app(msg, node.context)
            except Exception as e:  # a failing ClientApp is an error reply, as in Flower
                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages, *, timeout=None) -> Iterable[Message]:
        return list(self.pull_messages(list(self.push_messages(messages))))


def run_simulation(
    contracts: Sequence[str],
    sites: Sequence[Path | str | Site],
    template: str,
    rounds: int,
    out_dir: Path | str,
    seed: int = 0,
    run_id: str | None = None,
    lr: float = 0.5,
    local_epochs: int = 1,
    min_nodes: int | None = None,
    grid: LocalGrid | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    fold_evaluate: bool = False,
    secagg: bool = False,
    pack_arrays: bool = False,
    public_stats: Stats | Mapping[str, Sequence[float]] | None = None,
    secagg_max_weight: float = 0.0,
) -> dict[str, Any]:
    """Train in this process; writes the run directory (see :mod:`.server_app`).

    ``public_stats``: the consumer's normalisation statistics
    (:mod:`.public_stats`; :class:`Stats` or a mapping of the four lists):
    the sites then release no statistics and spend the whole epsilon on
    training. Checked here first (:class:`.public_stats.PublicStatsError`).
    """
    from dataspace.federated.client_app import app as client_app

    roots = [s.root if isinstance(s, Site) else Path(s) for s in sites]
    grid = grid or LocalGrid(client_app, roots)
    spec = RunSpec(
        run_id=run_id or f"run-{uuid.uuid4().hex[:12]}",
        contracts=list(contracts),
        template=template,
        rounds=rounds,
        out_dir=str(out_dir),
        seed=seed,
        lr=lr,
        local_epochs=local_epochs,
        min_nodes=min_nodes if min_nodes is not None else len(roots),
        expected_nodes=len(roots),
        connect_timeout=1.0,
        fold_evaluate=fold_evaluate,
        secagg=secagg,
        pack_arrays=pack_arrays,
        public_stats=public_lists(public_stats),
        secagg_max_weight=secagg_max_weight,
    )
    torch.manual_seed(seed)
    return run_training(grid, spec, on_round)


def public_lists(
    stats: Stats | Mapping[str, Sequence[float]] | None,
) -> dict[str, list[float]] | None:
    """Public statistics as the run spec holds them (checked lists), or None."""
    return None if stats is None else to_lists(check_stats(stats))
