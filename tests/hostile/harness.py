"""A hostile server: crafted Flower messages to the connector's real ClientApp.

Every field of a message (config, arrays, message type, how often it is sent)
is the server's to choose, so the harness sends whatever a test says, straight
to :data:`dataspace.federated.client_app.app` (the object ``dataspace serve
site-worker`` runs, with its mods: SecAgg+ and the egress guard), with one
persistent Flower ``Context`` per site as a SuperNode keeps it. It records what
actually left the site (every reply without an error) so that a test can
account for it independently of the site's own ledger:
:meth:`HostileServer.epsilon_of_what_left` composes, with Opacus's
``RDPAccountant`` (not our accountant), the mechanism of every release that
left, taken from the ``round.started`` entry the site logged for it, after
checking that entry against what the reply itself says (noise multiplier, steps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.error import Error
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

import dataspace
from dataspace import accountant
from dataspace.audit.events import Event, parse_event
from dataspace.demo.federation import Federation, make_federation
from dataspace.federated.client_app import app as client_app
from dataspace.federated.templates import get_template
from dataspace.site.folder import Site
from dataspace.site.log import open_site_log

#: the sample the package ships (16 Unitree G1 episodes): the suite needs nothing beside it
SAMPLE = Path(dataspace.__file__).parent / "data" / "unitree-g1-sample"
S_DIM = A_DIM = 26


def federation(root: Path, n_sites: int = 1, **kw: Any) -> Federation:
    """Sites over the bundled sample: 6 episodes each (about 2,200 frames)."""
    ranges = [range(0, 6), range(6, 12)][:n_sites]
    kw.setdefault("epsilon", 8.0)
    kw.setdefault("rounds", 4)
    return make_federation(root, SAMPLE, n_sites, episodes_per_site=ranges, **kw)


def model(seed: int = 0) -> ArrayRecord:
    """An honest bc-mlp global model (its buffers: mean 0, std 1)."""
    return ArrayRecord(get_template("bc-mlp").build(S_DIM, A_DIM, seed=seed).state_dict())


def events(site: Site, kind: str | None = None) -> list[Event]:
    with open_site_log(site, writable=False) as log:
        evs = [parse_event(e) for e in log.entries(0, log.size)]
    return [e for e in evs if kind is None or e.kind == kind]


def ledger(site: Site) -> list[tuple]:
    """(run, round, release, epsilon, finished, evaluated) per charge, in charge order."""
    with site.db(read_only=True) as con:
        return con.execute(
            "SELECT run_id, round_no, release, epsilon, finished_at IS NOT NULL, "
            "evaluated_at IS NOT NULL FROM ledger ORDER BY charged_at"
        ).fetchall()


def spent(site: Site) -> float:
    return sum(r[3] for r in ledger(site))


def opacus_epsilon(releases: list, delta: float) -> float:
    acc = RDPAccountant()
    acc.history = [(float(n), float(q), int(k)) for n, q, k in releases]
    return acc.get_epsilon(delta, alphas=list(accountant.ORDERS))


@dataclass
class Left:
    """One release that left the site: its kind, run, round and the reply."""

    kind: str  # "stats", "round" (train: update and loss) or "eval"
    run_id: str
    round_no: int
    reply: Message


@dataclass
class HostileServer:
    """Sends crafted messages to one site's real ClientApp (module docstring)."""

    site: Site
    contracts: list[str]
    node_id: int = 1
    left: list[Left] = field(default_factory=list)
    refused: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
        self.context = Context(1, self.node_id, {"site": str(self.site.root)}, RecordDict(), {})

    def config(self, run_id: str, server_round: int, **over: Any) -> dict[str, Any]:
        """What an honest ServerApp's config says (RunSpec.config), then ``over``."""
        cfg: dict[str, Any] = {
            "run-id": run_id,
            "contracts": ",".join(self.contracts),
            "template": "bc-mlp",
            "num-rounds": 4,
            "server-round": server_round,
            "seed": 0,
            "lr": 0.5,
        }
        cfg.update(over)
        return {k: v for k, v in cfg.items() if v is not None}

    def send(
        self,
        message_type: str,
        config: dict[str, Any] | None,
        arrays: ArrayRecord | None = None,
        **records: Any,
    ) -> Message:
        """One message; an exception in the app comes back as an error reply, as in Flower."""
        content = RecordDict()
        if config is not None:
            content["config"] = ConfigRecord(config)
        if arrays is not None:
            content["arrays"] = arrays
        for name, rec in records.items():
            content[name] = rec
        msg = Message(content, dst_node_id=self.node_id, message_type=message_type)
        try:
            reply = client_app(msg, self.context)
        except Exception as e:  # Flower turns it into an error reply
            reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
        if reply.has_error():
            self.refused.append(reply)
            return reply
        run_id = str((config or {}).get("run-id", ""))
        rnd = (config or {}).get("server-round", 0)
        rnd = rnd if type(rnd) is int else 0  # a statistics query need not name a round
        if message_type == "query.stats":
            self.left.append(Left("stats", run_id, 0, reply))
        elif message_type == "train":
            self.left.append(Left("round", run_id, rnd, reply))
            if "eval-mse" in reply.content["metrics"]:
                ev = int((config or {}).get("evaluate-round", 0))
                self.left.append(Left("eval", run_id, ev, reply))
        elif message_type == "evaluate":
            self.left.append(Left("eval", run_id, rnd, reply))
        return reply

    def stats(self, run_id: str, **over: Any) -> Message:
        return self.send("query.stats", self.config(run_id, 0, **over))

    def train(self, run_id: str, rnd: int, arrays: ArrayRecord | None = None, **over) -> Message:
        return self.send("train", self.config(run_id, rnd, **over), arrays or model())

    def evaluate(self, run_id: str, rnd: int, arrays: ArrayRecord | None = None, **over):
        return self.send("evaluate", self.config(run_id, rnd, **over), arrays or model())

    def epsilon_of_what_left(self, delta: float) -> float:
        """Opacus's epsilon over every release that left (module docstring).

        A round's release is its DP-SGD steps and its train loss; its one held-out
        loss is counted when an evaluation of it left. Statistics sent again (the
        same noisy answer) count once. Each mechanism is read from the site's
        ``round.started`` and checked against what the reply states.
        """
        started = {
            (e.fields["run_id"], e.fields["round"]): e for e in events(self.site, "round.started")
        }
        releases: list = []
        stats_charges = [e for e in started.values() if e.fields["release"] == "stats"]
        seen_stats: list[str] = []
        for left in self.left:
            if left.kind == "stats":
                digest = json.dumps(dict(left.reply.content["sums"]), sort_keys=True, default=str)
                if digest in seen_stats:
                    continue  # the same answer again: post-processing, nothing new left
                ev = stats_charges[len(seen_stats)]  # the n-th new answer, the n-th charge
                seen_stats.append(digest)
                releases += [list(r) for r in ev.fields["releases"]]
                continue
            ev = started[(left.run_id, left.round_no)]
            sgd, loss = ev.fields["releases"]
            if left.kind == "round":
                met = left.reply.content["metrics"]
                assert float(met["noise-multiplier"]) == sgd[0]  # what the reply says it did
                assert int(met["steps"]) == sgd[2]
                releases += [sgd, [loss[0], loss[1], 1]]  # DP-SGD and the train loss
            else:
                releases.append([loss[0], loss[1], 1])  # the one held-out loss
        return opacus_epsilon(releases, delta)
