"""The simulation engine's ``Grid``: the ServerApp's messages handed to ClientApps in
this process.

Each message goes to the ClientApp of the node it is addressed to, with that node's
persistent ``Context`` (node config ``site=...``), in node order. There is no Ray
and no thread pool, so a run is a pure function of its inputs and seed: same seed,
same model (:class:`dataspace.federated.engines.SimulationEngine`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity


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
