"""A hostile server against the sites' SecAgg+ (dataspace/federated/secagg.py's guard).

The test is the server: it sends crafted SecAgg+ messages, and keeps every share
and masked vector it gets. Two kinds of nodes answer:

* stub nodes with a known update, behind Flower's ``secaggplus_mod`` alone or
  behind our ``secagg_mod``: each attack first *works* against Flower's mod (the
  server recovers the victim's update, so the attack is real), then is refused
  by ours;
* the connector's real ClientApp (``dataspace.federated.client_app.app``) over
  three sites of the bundled Unitree G1 sample, with a persistent Context per
  node: each refusal reaches the server as the typed error, is logged as
  ``access.refused`` in the site's log, and charges nothing beyond the honest
  rounds (the site's ``ledger`` table); the victim's update cannot be recovered
  from what the server holds.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    public_key_to_bytes,
)
from flwr.supercore.task_identity import TaskIdentity

import dataspace
from dataspace.cli import main
from dataspace.demo.federation import Federation, make_federation
from dataspace.federated import secagg
from dataspace.federated.client_app import app as client_app
from dataspace.federated.local_grid import LocalGrid
from dataspace.federated.secagg import (
    CLIPPING_RANGE,
    MODULUS_RANGE,
    QUANTIZATION_RANGE,
    SecAggKeysError,
    SecAggParameterError,
    SecAggSourcesError,
    SecAggStageError,
    SecAggUnmaskError,
)
from dataspace.federated.spec import RunSpec
from dataspace.federated.templates import get_template
from dataspace.policy.contracts import ContractError
from dataspace.policy.policies import current_policy
from dataspace.site.folder import Site

#: Flower's site-side SecAgg+ module (its package exports the mod function under this name)
flower_mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")

pytestmark = pytest.mark.slow

SAMPLE = Path(dataspace.__file__).parent / "data" / "unitree-g1-sample"
EPISODES = [range(0, 5), range(5, 10), range(10, 15)]
RUN = "run-attacked"
MAX_WEIGHT = 10_000.0

Deliver = Callable[[int, RecordDict], Message]


def setup_config(n: int, **over: Any) -> dict[str, Any]:
    """An honest setup for ``n`` sites (the server's train_round's), with ``over`` changed."""
    cfg = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: n,
        Key.THRESHOLD: max(2, round(2 * n / 3)),
        Key.CLIPPING_RANGE: CLIPPING_RANGE,
        Key.TARGET_RANGE: QUANTIZATION_RANGE,
        Key.MOD_RANGE: MODULUS_RANGE,
        Key.MAX_WEIGHT: MAX_WEIGHT,
    }
    return cfg | over


@dataclass
class Server:
    """A SecAgg+ server that may lie at every stage; keeps all it receives."""

    deliver: Deliver
    nodes: list[int]
    setup: dict[str, Any] = field(default_factory=dict)
    public_keys: dict[int, list[bytes]] = field(default_factory=dict)
    #: destination -> source -> ciphertext (the shares it forwards at collect)
    forward: dict[int, dict[int, bytes]] = field(default_factory=dict)
    #: what it forwarded to each node at collect (the node's pairwise masks)
    sources: dict[int, list[int]] = field(default_factory=dict)
    masked: dict[int, list[np.ndarray]] = field(default_factory=dict)
    seed_shares: dict[int, list[bytes]] = field(default_factory=dict)
    key_shares: dict[int, list[bytes]] = field(default_factory=dict)
    refused: dict[int, Exception] = field(default_factory=dict)

    def _send(self, nid: int, cfg: dict[str, Any], content: RecordDict | None = None) -> Any:
        rd = RecordDict(dict(content.items())) if content is not None else RecordDict()
        rd[RECORD_KEY_CONFIGS] = ConfigRecord(cfg)
        try:
            reply = self.deliver(nid, rd)
        except Exception as e:  # a refusal reaches the server as the site's typed error
            self.refused[nid] = e
            return None
        assert not reply.has_error(), reply.error
        return reply.content.config_records[RECORD_KEY_CONFIGS]

    def run_setup(self, **over: Any) -> None:
        self.setup = setup_config(len(self.nodes), **over)
        for nid in self.nodes:
            if (cfg := self._send(nid, dict(self.setup))) is not None:
                self.public_keys[nid] = [cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]]

    def share_keys(self, keys_for: Callable[[int], dict[str, Any]] | None = None) -> None:
        honest = {str(j): list(k) for j, k in self.public_keys.items()}
        for nid in list(self.public_keys):
            cfg = (keys_for or (lambda _: honest))(nid) | {Key.STAGE: Stage.SHARE_KEYS}
            if (res := self._send(nid, cfg)) is None:
                continue
            for dst, ct in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST], strict=True):
                self.forward.setdefault(dst, {})[nid] = ct

    def collect(
        self,
        content: RecordDict,
        sources_for: Callable[[int], list[int]] | None = None,
        nodes: list[int] | None = None,
    ) -> None:
        for nid in nodes or list(self.forward):
            srcs = sources_for(nid) if sources_for else sorted(self.forward[nid])
            cfg = {
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.SOURCE_LIST: srcs,
                # a source that sent this node nothing (itself, say): an empty share
                Key.CIPHERTEXT_LIST: [self.forward[nid].get(s, b"") for s in srcs],
            }
            if (res := self._send(nid, cfg, content)) is not None:
                self.sources[nid] = srcs
                self.masked[nid] = [bytes_to_ndarray(b) for b in res[Key.MASKED_PARAMETERS]]

    def unmask(self, lists_for: Callable[[int], tuple[list[int], list[int]]]) -> None:
        for nid in list(self.masked):
            active, dead = lists_for(nid)
            cfg = {
                Key.STAGE: Stage.UNMASK,
                Key.ACTIVE_NODE_ID_LIST: active,
                Key.DEAD_NODE_ID_LIST: dead,
            }
            if (res := self._send(nid, cfg)) is None:
                continue
            owners, shares = res[Key.NODE_ID_LIST], res[Key.SHARE_LIST]
            for i, (owner, share) in enumerate(zip(owners, shares, strict=True)):
                # Flower answers the active list's seed shares, then the dead list's keys
                kind = self.seed_shares if i < len(active) else self.key_shares
                kind.setdefault(owner, []).append(share)

    def honest_lists(self, nid: int) -> tuple[list[int], list[int]]:
        return sorted(self.masked), []

    # -- what the server can do with what it holds

    def key_recovered(self, owner: int) -> bool:
        """Did the server get ``owner``'s mask key (checked against its public key)?"""
        shares = self.key_shares.get(owner, [])
        if len(shares) < self.setup[Key.THRESHOLD]:
            return False
        try:
            key = bytes_to_private_key(combine_shares(shares))
        except Exception:
            return False
        return public_key_to_bytes(key.public_key()) == self.public_keys[owner][0]

    def exposed(self, victim: int) -> list[np.ndarray] | None:
        """The victim's update (times its weight ratio) from its masked vector alone, when
        the server holds its mask seed and, per source, its key or the source's."""
        t = self.setup[Key.THRESHOLD]
        seeds = self.seed_shares.get(victim, [])
        srcs = self.sources.get(victim)
        if victim not in self.masked or srcs is None or len(seeds) < t:
            return None
        if not all(self.key_recovered(victim) or self.key_recovered(j) for j in srcs):
            return None
        mod, shape = self.setup[Key.MOD_RANGE], [a.shape for a in self.masked[victim]]
        # the generator the sites' mod masks with (ours once a site ran: dataspace's mask_stream)
        seed_mask = flower_mod.pseudo_rand_gen(combine_shares(seeds), mod, shape)
        vec = [v - m for v, m in zip(self.masked[victim], seed_mask, strict=True)]
        for j in srcs:
            mine, theirs = (victim, j) if self.key_recovered(victim) else (j, victim)
            sk = bytes_to_private_key(combine_shares(self.key_shares[mine]))
            pk = bytes_to_public_key(self.public_keys[theirs][0])
            mask = flower_mod.pseudo_rand_gen(generate_shared_key(sk, pk), mod, shape)
            sign = -1 if victim > j else 1  # the victim added the mask when its id was larger
            vec = [v + sign * m for v, m in zip(vec, mask, strict=True)]
        q_ratio, quantised = factor_extract([np.mod(v, mod) for v in vec])
        values = dequantize(quantised, self.setup[Key.CLIPPING_RANGE], self.setup[Key.TARGET_RANGE])
        return [v * self.setup[Key.TARGET_RANGE] / q_ratio for v in values]


# ------------------------------------------------------------------ stub nodes (protocol only)


@pytest.fixture(autouse=True)
def task_identity() -> None:
    """Messages are stamped with the task's identity (as LocalGrid does: the ServerApp's)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


class Stubs:
    """Nodes with a known update, behind Flower's mod (``guarded=False``) or ours."""

    def __init__(self, n: int, guarded: bool) -> None:
        rng = np.random.default_rng(7)
        self.updates = {i: rng.normal(0, 0.1, (3, 4)) for i in range(1, n + 1)}
        self.contexts = {i: Context(1, i, {}, RecordDict(), {}) for i in self.updates}
        self.guarded = guarded
        self.trained: list[int] = []

    def deliver(self, nid: int, content: RecordDict) -> Message:
        msg = Message(content, dst_node_id=nid, message_type="train", group_id="1")
        if self.guarded:
            return secagg.secagg_mod(msg, self.contexts[nid], self._train)
        return secaggplus_mod(msg, self.contexts[nid], self._fitres)

    def _train(self, msg: Message, ctxt: Context) -> Message:
        """What the connector's train handler answers: the trained weights."""
        self.trained.append(ctxt.node_id)
        sent = msg.content["arrays"]["w"].numpy()
        upd = self.updates[ctxt.node_id]
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(sent + upd)}),
                "metrics": MetricRecord({"num-examples": 100}),
                "info": ConfigRecord({}),
            }
        )
        return Message(content, reply_to=msg)

    def _fitres(self, msg: Message, ctxt: Context) -> Message:
        """What Flower's mod expects from a legacy client: the update as fit results."""
        self.trained.append(ctxt.node_id)
        content = RecordDict(
            {
                "fitres.parameters": ArrayRecord({"w": Array(self.updates[ctxt.node_id])}),
                "fitres.num_examples": MetricRecord({"num_examples": 100}),
                "fitres.metrics": ConfigRecord({}),
                "fitres.status": ConfigRecord({"code": 0, "message": ""}),
            }
        )
        return Message(content, reply_to=msg)


STUB_MODEL = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros((3, 4)))})})


def overlap(victim: int, others: list[int]) -> Callable[[int], tuple[list[int], list[int]]]:
    """The victim listed both active and dead to the others; honest lists to the victim."""
    everyone = sorted([victim, *others])
    return lambda nid: (everyone, [] if nid == victim else [victim])


def split_t1(victim: int, told: int, everyone: list[int]):
    """Threshold 1: one site is told the victim is dead, the rest that it is active
    (every list locally consistent, no overlap)."""
    return lambda nid: (
        ([n for n in everyone if n != victim], [victim]) if nid == told else (everyone, [])
    )


def withholding() -> tuple[Callable[[int], list[int]], Callable[[int], tuple[list, list]]]:
    """k = 5, t = 3, victim 1: it gets the shares of 2 and 3 only (Flower needs t - 1);
    2 and 3 are then listed dead to the three others, 1 active to 4 and 5. Every list is
    disjoint, holds its own node active, has t active: locally plausible everywhere."""
    lists = {
        1: ([1, 2, 3], []),
        2: ([2, 4, 5], [3]),
        3: ([3, 4, 5], [2]),
        4: ([1, 4, 5], [2, 3]),
        5: ([1, 4, 5], [2, 3]),
    }
    return (lambda nid: [2, 3] if nid == 1 else [j for j in range(1, 6) if j != nid]), lists.get


def assert_update(got: list[np.ndarray] | None, want: np.ndarray) -> None:
    assert got is not None
    step = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
    np.testing.assert_allclose(got[0], want, atol=2 * step * MAX_WEIGHT / 100)


def test_flower_alone_gives_up_a_site_listed_active_and_dead_and_ours_refuses() -> None:
    flower_stubs = Stubs(3, guarded=False)
    flower = Server(flower_stubs.deliver, [1, 2, 3])
    flower.run_setup()
    flower.share_keys()
    flower.collect(STUB_MODEL)
    flower.unmask(overlap(3, [1, 2]))
    assert flower.key_recovered(3)  # both secrets of site 3 came back
    assert_update(flower.exposed(3), flower_stubs.updates[3])

    stubs = Stubs(3, guarded=True)
    ours = Server(stubs.deliver, [1, 2, 3])
    ours.run_setup()
    ours.share_keys()
    ours.collect(STUB_MODEL)
    ours.unmask(overlap(3, [1, 2]))
    assert {n: type(e) for n, e in ours.refused.items()} == {
        1: SecAggUnmaskError,
        2: SecAggUnmaskError,
    }
    assert not ours.key_recovered(3) and ours.exposed(3) is None


def test_flower_alone_accepts_threshold_1_and_gives_up_a_site_ours_refuses_the_setup() -> None:
    flower_stubs = Stubs(3, guarded=False)
    flower = Server(flower_stubs.deliver, [1, 2, 3])
    flower.run_setup(**{Key.THRESHOLD: 1})
    flower.share_keys()
    flower.collect(STUB_MODEL)
    flower.unmask(split_t1(3, told=1, everyone=[1, 2, 3]))
    assert not flower.refused  # every list was locally consistent
    assert_update(flower.exposed(3), flower_stubs.updates[3])

    stubs = Stubs(3, guarded=True)
    ours = Server(stubs.deliver, [1, 2, 3])
    ours.run_setup(**{Key.THRESHOLD: 1})
    assert all(type(ours.refused[n]) is SecAggParameterError for n in (1, 2, 3))
    assert not ours.public_keys and not stubs.trained


def test_flower_alone_masks_with_withheld_sources_and_gives_up_a_site_ours_refuses() -> None:
    """Found while writing the guard: t > k/2 is not enough when the server may withhold
    shares at collect (Flower masks with any t - 1 sources): k = 5, t = 3."""
    sources_for, lists_for = withholding()
    flower_stubs = Stubs(5, guarded=False)
    flower = Server(flower_stubs.deliver, [1, 2, 3, 4, 5])
    flower.run_setup()
    assert flower.setup[Key.THRESHOLD] == 3
    flower.share_keys()
    flower.collect(STUB_MODEL, sources_for)
    flower.unmask(lists_for)
    assert not flower.refused
    assert not flower.key_recovered(1)  # not the victim's key: its two sources' keys
    assert_update(flower.exposed(1), flower_stubs.updates[1])

    stubs = Stubs(5, guarded=True)
    ours = Server(stubs.deliver, [1, 2, 3, 4, 5])
    ours.run_setup()
    ours.share_keys()
    ours.collect(STUB_MODEL, sources_for)
    assert type(ours.refused[1]) is SecAggSourcesError
    assert 1 not in stubs.trained  # refused before training: nothing masked, nothing sent
    ours.unmask(lists_for)
    assert ours.exposed(1) is None


# ------------------------------------------------------------------ the connector's ClientApp


class Sites:
    """Three sites behind the connector's real ClientApp, each node with its persistent
    Context (LocalGrid's); the test is the server."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.grid = LocalGrid(client_app, [s.root for s in fed.sites])
        self.nodes = sorted(self.grid.nodes)
        self.spec = RunSpec(run_id=RUN, contracts=fed.contract_ids, rounds=3, out_dir="unused")
        state = get_template("bc-mlp").build(26, 26).state_dict()  # the sample: 26 + 26
        self.model = ArrayRecord(state)

    def site(self, nid: int) -> Site:
        return self.fed.sites[nid - 1]

    def deliver(self, nid: int, content: RecordDict, mtype: str = "train") -> Message:
        group = str(content["config"]["server-round"]) if "config" in content else "1"
        msg = Message(content, dst_node_id=nid, message_type=mtype, group_id=group)
        return client_app(msg, self.grid.nodes[nid].context)

    def train_content(self, rnd: int) -> RecordDict:
        return RecordDict({"arrays": self.model, "config": self.spec.config(rnd)})

    def release_stats(self) -> None:
        """Round 0: each site releases its DP statistics (it trains only after that)."""
        for nid in self.nodes:
            self.deliver(nid, RecordDict({"config": self.spec.config(0)}), "query.stats")

    def server(self) -> Server:
        return Server(self.deliver, self.nodes)

    def honest_round(self, rnd: int) -> None:
        """The real server side (secagg.train_round) through the grid."""
        _, replies, failures = secagg.train_round(
            self.grid.send_and_receive, self.nodes, self.train_content(rnd), rnd, MAX_WEIGHT
        )
        assert len(replies) == 3 and not failures, failures

    def charges(self, nid: int) -> list[tuple[str, int, str]]:
        with self.site(nid).db(read_only=True) as con:
            rows = con.execute("SELECT run_id, round_no, release FROM ledger").fetchall()
        return sorted(rows)

    def events(self, nid: int, kind: str) -> list[dict[str, Any]]:
        from dataspace.audit.events import parse_event
        from dataspace.site.log import open_site_log

        with open_site_log(self.site(nid), writable=False) as log:
            events = [parse_event(e) for e in log.entries(0, log.size)]
        return [e.fields for e in events if e.kind == kind]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Federation]:
    """Three sites that released their statistics, and a copy of them as they were then.

    Built once: each test gets the copy back at the same path (the ClientApp remembers
    where it found a contract, so the sites must not move)."""
    base = tmp_path_factory.mktemp("secagg-attacks")
    fed = make_federation(
        base / "fed", SAMPLE, 3, epsilon=4.0, rounds=3, episodes_per_site=EPISODES
    )
    Sites(fed).release_stats()
    return base / "fed", Path(shutil.copytree(base / "fed", base / "pristine")), fed


@pytest.fixture
def sites(pristine: tuple[Path, Path, Federation]) -> Sites:
    live, kept, fed = pristine
    shutil.rmtree(live)
    shutil.copytree(kept, live)
    return Sites(fed)


def assert_refused(sites: Sites, server: Server, want: dict[int, type], stage: str) -> None:
    """Each node in ``want`` refused with that type, logged it as access.refused with the
    refusal's type and the stage; the others did not refuse."""
    assert {n: type(e) for n, e in server.refused.items()} == want
    for nid, err in want.items():
        logged = sites.events(nid, "access.refused")[-1]
        assert logged["refusal"] == err.__name__ and logged["stage"] == stage, logged
        assert logged["node"] == nid


STATS = [(RUN, 0, "stats")]
ROUND_1 = [(RUN, 0, "stats"), (RUN, 1, "round")]


def test_honest_round_through_the_guard_is_charged_once_per_site(sites: Sites) -> None:
    sites.honest_round(1)
    for nid in sites.nodes:
        assert sites.charges(nid) == ROUND_1
        started = sites.events(nid, "round.started")[-1]
        assert started["round"] == 1 and started["secure_aggregation"] is True
        assert not sites.events(nid, "access.refused")


def test_overlap_attack_is_refused_at_unmask_and_the_secrets_are_forgotten(sites: Sites) -> None:
    server = sites.server()
    server.run_setup()
    server.share_keys()
    server.collect(sites.train_content(1))
    assert sorted(server.masked) == [1, 2, 3]  # the round ran and was charged: honest so far
    server.unmask(overlap(3, [1, 2]))
    assert_refused(sites, server, {1: SecAggUnmaskError, 2: SecAggUnmaskError}, "unmask")
    assert sites.events(1, "access.refused")[-1]["run_id"] == RUN
    assert not server.key_recovered(3) and server.exposed(3) is None
    assert server.key_shares == {} and len(server.seed_shares[3]) == 1  # its own seed share
    # a refused site forgot the session: the same stage again, honest or not, gets nothing
    server.refused.clear()
    server.unmask(server.honest_lists)
    assert type(server.refused[1]) is SecAggStageError
    for nid in sites.nodes:
        assert sites.charges(nid) == ROUND_1
    sites.honest_round(2)  # and the sites still take part in the next honest round
    assert sites.charges(1)[-1] == (RUN, 2, "round")


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({Key.THRESHOLD: 1}, "threshold 1"),
        ({Key.THRESHOLD: 4}, "threshold above the share number"),
        ({Key.SAMPLE_NUMBER: 4, Key.SHARE_NUMBER: 4, Key.THRESHOLD: 2}, "2t <= k"),
        ({Key.SAMPLE_NUMBER: 6, Key.SHARE_NUMBER: 6, Key.THRESHOLD: 3}, "2t <= k, larger"),
        ({Key.SHARE_NUMBER: 2, Key.THRESHOLD: 2}, "share number != sample number"),
        ({Key.SAMPLE_NUMBER: 1, Key.SHARE_NUMBER: 1, Key.THRESHOLD: 1}, "one site"),
        ({Key.CLIPPING_RANGE: 0.001}, "clipping range"),
        ({Key.CLIPPING_RANGE: 1e9}, "clipping range, large"),
        ({Key.TARGET_RANGE: 2**8}, "quantisation range"),
        ({Key.MOD_RANGE: 2**16}, "modulus range"),
        ({Key.MAX_WEIGHT: 0.5}, "max weight below 1"),
        ({Key.MAX_WEIGHT: 1e12}, "max weight absurd"),
        ({Key.MAX_WEIGHT: float("nan")}, "max weight nan"),
        ({Key.MAX_WEIGHT: float("inf")}, "max weight inf"),
        ({Key.THRESHOLD: True}, "a bool for an int"),
        ({Key.CLIPPING_RANGE: 8}, "an int for a float"),
        ({"extra-knob": 1}, "an unknown parameter"),
    ],
)
def test_setup_parameters_not_the_sites_are_refused(sites: Sites, over: dict, why: str) -> None:
    server = sites.server()
    server.run_setup(**over)
    assert_refused(sites, server, dict.fromkeys(sites.nodes, SecAggParameterError), "setup")
    assert not server.public_keys, why
    for nid in sites.nodes:
        assert sites.charges(nid) == STATS
    server.share_keys()  # nothing to go on from: every later stage is refused too
    assert not server.forward


def test_site_minimum_from_site_toml(tmp_path: Path) -> None:
    fed = make_federation(
        tmp_path / "fed", SAMPLE, 3, epsilon=4.0, rounds=3, episodes_per_site=EPISODES
    )
    toml = fed.sites[0].config_path
    toml.write_text(toml.read_text() + "\n[training]\nsecagg_min_sites = 4\n")
    sites = Sites(fed)
    sites.release_stats()
    server = sites.server()
    server.run_setup()
    assert_refused(sites, server, {1: SecAggParameterError}, "setup")


def test_share_keys_that_are_not_the_samples_are_refused(sites: Sites) -> None:
    attacks: list[Callable[[dict[str, Any], int], dict[str, Any]]] = [
        lambda keys, nid: {k: v for k, v in keys.items() if k != "2"},  # one missing
        lambda keys, nid: {k: v for k, v in keys.items() if k != str(nid)},  # not this node
        lambda keys, nid: keys | {"4": keys["2"]},  # a Sybil with another node's keys
        lambda keys, nid: {("0" + k if k == "2" else k): v for k, v in keys.items()},  # alias
        lambda keys, nid: keys | {"2": [keys["2"][0], keys["1"][1]]},  # a key reused
    ]
    for attack in attacks:
        server = sites.server()
        server.run_setup()
        honest = {str(j): list(k) for j, k in server.public_keys.items()}
        server.share_keys(lambda nid, a=attack, h=honest: a(h, nid))
        assert type(server.refused[1]) is SecAggKeysError
        assert sites.events(1, "access.refused")[-1]["stage"] == "share_keys"
    for nid in sites.nodes:
        assert sites.charges(nid) == STATS


def test_withheld_sources_are_refused_before_training(sites: Sites) -> None:
    server = sites.server()
    server.run_setup()
    server.share_keys()
    others = {3: [1], 2: [1, 3, 3], 1: [2, 3, 1]}  # one withheld, a duplicate, itself
    server.collect(sites.train_content(1), lambda nid: others[nid])
    want = {1: SecAggSourcesError, 2: SecAggSourcesError, 3: SecAggSourcesError}
    assert_refused(sites, server, want, "collect_masked_vectors")
    assert sites.events(3, "access.refused")[-1]["run_id"] == RUN
    assert not server.masked
    for nid in sites.nodes:  # refused before the train handler: nothing charged
        assert sites.charges(nid) == STATS
        assert not [e for e in sites.events(nid, "round.started") if e["round"] == 1]


def test_forged_share_is_refused_before_training(sites: Sites) -> None:
    server = sites.server()
    server.run_setup()
    server.share_keys()
    server.forward[3][1] = server.forward[2][1]  # node 1's share for node 2, sent to 3
    server.collect(sites.train_content(1), nodes=[3])
    assert_refused(sites, server, {3: SecAggSourcesError}, "collect_masked_vectors")
    assert sites.charges(3) == STATS


@pytest.mark.parametrize(
    ("lists", "why"),
    [
        (lambda nid: ([1, 2], [3]) if nid == 3 else ([1, 2, 3], []), "itself dead"),
        (lambda nid: ([j for j in (1, 2, 3) if j != nid], []), "itself not active"),
        (lambda nid: ([1, 2, 3, 99], []), "an unknown node"),
        (lambda nid: ([1, 2, 3], [99]), "an unknown dead node"),
        (lambda nid: ([1, 2, 3, 3], []), "a duplicate"),
        (lambda nid: ([nid], [j for j in (1, 2, 3) if j != nid]), "fewer active than t"),
    ],
)
def test_unmask_lists_the_site_cannot_answer_are_refused(sites: Sites, lists, why: str) -> None:
    server = sites.server()
    server.run_setup()
    server.share_keys()
    server.collect(sites.train_content(1))
    server.unmask(lists)
    assert server.refused, why
    assert_refused(sites, server, dict.fromkeys(server.refused, SecAggUnmaskError), "unmask")
    for victim in sites.nodes:
        assert not server.key_recovered(victim) and server.exposed(victim) is None
    for nid in sites.nodes:
        assert sites.charges(nid) == ROUND_1


@pytest.mark.parametrize("mtype", ["train", "train.default", "evaluate", "query.stats"])
def test_a_message_alone_never_makes_a_secure_round(sites: Sites, mtype: str) -> None:
    """A plain train (or another type) carrying SecAgg+ configs at the collect stage,
    without a setup and share keys this site accepted: refused before any handler."""
    content = sites.train_content(1)
    content[RECORD_KEY_CONFIGS] = ConfigRecord(
        {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.SOURCE_LIST: [], Key.CIPHERTEXT_LIST: []}
    )
    with pytest.raises(SecAggStageError):
        sites.deliver(1, content, mtype)
    logged = sites.events(1, "access.refused")[-1]
    assert logged["refusal"] == "SecAggStageError" and logged["run_id"] == RUN
    assert sites.charges(1) == STATS
    assert not [e for e in sites.events(1, "round.started") if e["round"] == 1]
    # nor after a setup only (share keys skipped)
    server = sites.server()
    server.run_setup()
    server.collect(sites.train_content(1), lambda nid: [], nodes=[1])
    assert type(server.refused[1]) is SecAggStageError
    assert sites.charges(1) == STATS


def require_secagg(site: Site, dataset_id: str) -> None:
    """The holder narrows its policy (``dataspace connector policy --require-secagg``):
    every training round must run under SecAgg+; the contract's terms stay permitted."""
    until = (datetime.now(UTC) + timedelta(days=31)).date().isoformat()
    args = ["connector", "policy", str(site.root), dataset_id, "--epsilon", "4",
            "--delta", "1e-5", "--until", until, "--max-rounds", "3",
            "--templates", "bc-mlp", "--require-secagg", "--json"]  # fmt: skip
    assert main(args) == 0
    rules = current_policy(site, dataset_id).to_jsonld()["permission"]
    assert {"leftOperand": "aggregation", "operator": "eq", "rightOperand": "secure"} in [
        c for r in rules for c in r["constraint"]
    ]


def test_policy_requiring_secagg_refuses_a_plain_round_and_admits_a_secure_one(
    sites: Sites,
) -> None:
    for site, ds in zip(sites.fed.sites, sites.fed.dataset_ids, strict=True):
        require_secagg(site, ds)
    with pytest.raises(ContractError):
        sites.deliver(1, sites.train_content(1))  # a plain round
    logged = sites.events(1, "access.refused")[-1]
    assert logged["refusal"] == "ContractError" and "secure" in logged["reason"]
    assert sites.charges(1) == STATS
    sites.honest_round(1)  # the same round under SecAgg+
    for nid in sites.nodes:
        assert sites.charges(nid) == ROUND_1
        assert sites.events(nid, "round.started")[-1]["secure_aggregation"] is True


def test_policy_requiring_secagg_from_the_start_still_releases_statistics(
    tmp_path: Path,
) -> None:
    fed = make_federation(
        tmp_path / "fed", SAMPLE, 3, epsilon=4.0, rounds=3, episodes_per_site=EPISODES
    )
    require_secagg(fed.sites[0], fed.dataset_ids[0])
    sites = Sites(fed)
    sites.deliver(1, RecordDict({"config": sites.spec.config(0)}), "query.stats")


def test_a_mask_depends_on_its_whole_seed() -> None:
    """Flower's generator folds a 256-bit seed to 32 bits (two seeds, one mask); the sites
    and the server here mask with ChaCha20 keyed by the whole seed."""
    seed = bytes(range(32))
    other = bytes([seed[0] ^ 1]) + seed[1:4] + bytes([seed[4] ^ 1]) + seed[5:]  # same fold
    weak = [pseudo_rand_gen(s, MODULUS_RANGE, [(8,)])[0] for s in (seed, other)]
    assert np.array_equal(*weak)  # the weakness this replaces
    strong = [secagg.mask_stream(s, MODULUS_RANGE, [(8,), ()]) for s in (seed, other)]
    assert not np.array_equal(strong[0][0], strong[1][0])
    assert strong[0][0].dtype == np.int64 and strong[0][1].shape == ()
    assert all(0 <= v < MODULUS_RANGE for v in strong[0][0])
