"""Canary test: no planted raw value, in any encoding, leaves a site in anything it sends.

Canaries planted in a copy of the real SO-101 recording: three single values
(rows), one episode whose joint 1 is a constant (an episode), and the exact
per-dimension means of every episode, shard and the whole dataset (exact
statistics). The site then goes through enrollment, a quality check, catalog
publication to a real hub process, a contract negotiation over HTTP with a real
connector process, and a 2-round federated DP training on the deployment engine
(``train(spec, sites, DeploymentEngine())``: a SuperLink and one SuperNode per site as processes on
127.0.0.1, TLS, node authentication, the sites' warm workers running the
connector's ClientApp). Captured: every byte through a recording TCP proxy
in front of the hub (what the connector process sends it) and in front of the
connector (what it answers); for the training, the wire bytes of every Flower
reply each site's worker process lets out, recorded in plaintext by the egress
guard (``DATASPACE_EGRESS_CAPTURE``), plus what the consumer ends up holding
(the SuperLink's database, the run's outputs and logs). None may contain a canary.

Why the egress guard and not the proxy for Flower's traffic: the deployment
always runs TLS between SuperNodes and the SuperLink (it is part of what is
under test, and the deployment engine has no plaintext mode), so a proxy there would
hold ciphertext, in which no needle can be searched. The guard sits at the last
point where a reply is plaintext: it serialises the reply's content exactly as
Flower does (``recorddict_to_proto``), and it is the only producer of content a
SuperNode forwards; what the SuperNode adds is Flower's own metadata (run, node
and message ids). The SuperLink's database, searched too, holds what arrived.
"""

from __future__ import annotations

import shutil
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataspace.assurance.canary import find, float_encodings, stat_encodings
from dataspace.assurance.proxy import RecordingProxy
from dataspace.audit.events import parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.connectors.client import request_via_connector
from dataspace.connectors.enroll import enroll
from dataspace.connectors.shards import shard_to_sites
from dataspace.demo.federation import grant
from dataspace.federated import DeploymentEngine, RunSpec, egress, train
from dataspace.federated.data import dataset_ref
from dataspace.net import free_port
from dataspace.policy.odrl import build_policy
from dataspace.policy.policies import publish_policy
from dataspace.quality.check import run_checks
from dataspace.site import create_site
from dataspace.site.identity import load_private_key, new_identity
from tests.conftest import SO101
from tests.services.conftest import Service

pytestmark = pytest.mark.slow

ROW_CANARIES = ((7, "observation.state", 0, 4321.98765), (400, "action", 3, -8765.4321),
                (1100, "observation.state", 5, 2718.28182))  # fmt: skip
EPISODE_CANARY = (2, "observation.state", 1, 777.7771)  # episode, column, joint, value
SHARDS = [range(0, 4), range(2, 4)]


def plant(src: Path, dst: Path) -> list[bytes]:
    """Plant the canaries in ``dst`` (a copy of ``src``); returns every needle."""
    shutil.copytree(src, dst)
    path = dst / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    ep = table.column("episode_index").to_numpy()
    cols = {}
    for name in ("observation.state", "action"):
        arr = table.column(name).combine_chunks()
        cols[name] = arr.values.to_numpy(zero_copy_only=False).reshape(len(arr), -1).copy()
    for row, name, j, v in ROW_CANARIES:
        cols[name][row, j] = v
    e, name, j, v = EPISODE_CANARY
    cols[name][ep == e, j] = v
    for name, a in cols.items():
        flat = pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1), pa.float32()), a.shape[1])
        table = table.set_column(table.schema.get_field_index(name), name, flat)
    pq.write_table(table, path)
    needles = [n for *_, v in ROW_CANARIES for n in float_encodings(v)]
    needles += float_encodings(EPISODE_CANARY[3])
    groups = [ep == e for e in np.unique(ep)] + [np.isin(ep, list(r)) for r in SHARDS]
    groups.append(np.ones_like(ep, dtype=bool))
    for mask in groups:
        for a in cols.values():
            for mean in a[mask].astype(np.float64).mean(axis=0):
                if mean != EPISODE_CANARY[3]:
                    needles += stat_encodings(float(mean))
    return sorted(set(needles))


def test_no_canary_leaves_the_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    needles = plant(SO101, raw)
    sites = [create_site(tmp_path / f"site-{i}", f"holder-{i}") for i in range(2)]
    # enrollment: the connector's reader for site 0 (its catalog entry is published to the
    # hub below), a shard of episodes 2-3 for site 1 (write_shard's catalog entries lack
    # @context, so only site 0 publishes)
    ids = [enroll(sites[0], raw).dataset_id, *shard_to_sites(raw, sites[1:], SHARDS[1:])]
    # the needles are real: the canonical store holds the planted bytes
    stored = b"".join(p.read_bytes() for p in sites[0].store_dir.rglob("*.parquet"))
    assert find(float_encodings(ROW_CANARIES[0][3]), {"store": stored})
    for site, ds in zip(sites, ids, strict=True):
        run_checks(site, ds)  # quality
    key_path = tmp_path / "robotco.key"
    consumer = new_identity(key_path, name="robotco", role="consumer")
    key = load_private_key(key_path)
    publish_policy(  # site 0's contract is negotiated over HTTP below
        sites[0],
        build_policy(
            dataset_id=ids[0], fingerprint=dataset_ref(sites[0], ids[0]).fingerprint,
            assigner=sites[0].identity.key_b64, epsilon=8.0, delta=1e-5,
            until=datetime.now(UTC) + timedelta(days=30), max_rounds=2, templates=["bc-mlp"],
        ),
    )  # fmt: skip
    contracts = [grant(sites[1], ids[1], consumer, key, epsilon=4.0, rounds=2, budget=8.0)]
    hub = conn = None
    proxies: list[RecordingProxy] = []
    try:
        # each proxy first: clients sign for the proxy's address, which each service is
        # told is one of its names (--authority), as behind any reverse proxy
        hub_port, conn_port = free_port(), free_port()
        to_hub, to_conn = RecordingProxy(hub_port), RecordingProxy(conn_port)
        proxies += [to_hub, to_conn]
        hub = Service(
            [
                "hub",
                "--data",
                str(tmp_path / "hub"),
                "--trust",
                str(sites[0].root / "site.key.pub"),
                "--authority",
                to_hub.url,
            ],
            hub_port,
            tmp_path / "hub.log",
        )
        hub.wait_ready()
        conn = Service(["connector", str(sites[0].root), "--hub", to_hub.url,
                        "--authority", to_conn.url], conn_port,
                       tmp_path / "conn.log")  # fmt: skip
        conn.wait_ready(240, until=lambda h: h["published"])  # catalog publication
        agreed = request_via_connector(  # contract negotiation over HTTP
            to_conn.url, key, dataset=ids[0], purpose="robot-policy-training", epsilon=4.0,
            rounds=2, until=datetime.now(UTC) + timedelta(days=2), template="bc-mlp",
        )  # fmt: skip
        contracts.insert(0, agreed["contract_id"])
    finally:
        for s in (conn, hub):
            if s is not None:
                s.stop()
        for p in proxies:
            p.close()
    capture = tmp_path / "flower.bin"
    monkeypatch.setenv("DATASPACE_EGRESS_CAPTURE", str(capture))
    run = tmp_path / "run"
    hist = train(
        RunSpec(contracts=contracts, template="bc-mlp", rounds=2, out_dir=run, seed=0, min_nodes=2),
        [s.root for s in sites],
        DeploymentEngine(timeout=600),
    )
    assert hist["status"] == "finished", hist.get("error")
    assert len(hist["rounds"]) == 2 and all(len(r["sites"]) == 2 for r in hist["rounds"])
    # the consumer's side: the SuperLink's state, the run's outputs and the server's logs
    # (the site-side processes' own logs stay at the sites and are not searched)
    site_side = ("supernode-", "worker-")
    received = {
        f"consumer:{f.relative_to(run)}": f.read_bytes()
        for f in sorted(run.rglob("*"))
        if f.is_file() and not f.name.startswith(site_side)
    }
    assert any("superlink.db" in k for k in received) and any(
        k.endswith("final.npz") for k in received
    )

    up_hub, down_hub = to_hub.capture.joined()
    up_conn, down_conn = to_conn.capture.joined()
    flower = capture.read_bytes()
    assert len(up_hub) > 1000 and len(down_conn) > 500 and len(flower) > 100_000
    haystacks = {
        "connector->hub": up_hub,
        "hub->connector": down_hub,
        "consumer->connector": up_conn,
        "connector->consumer": down_conn,
        "clientapp replies": flower,
        **received,
    }
    assert len(needles) > 200
    # The models and Flower's messages are little-endian float32 arrays of ~10^5 weights.
    # A canary's big-endian float32 bytes read little-endian are another number, often a
    # weight-sized one (777.7771 big-endian is -0.0147 little-endian): a weight equal to
    # it to the last bit turned up once (a full-suite run, session 8). So there the big-endian
    # 4-byte needles are not searched; the little-endian ones (a copied value) and every
    # longer encoding are, and the HTTP captures (JSON) are searched with all of them.
    values = [v for *_, v in ROW_CANARIES] + [EPISODE_CANARY[3]]
    big_endian_f32 = {struct.pack(">f", np.float32(v)) for v in values}
    binary = {"clientapp replies", *received}
    hits = find(needles, haystacks)
    assert [(w, n) for w, n in hits if not (w in binary and n in big_endian_f32)] == []

    # each connector recorded what it sent per round, and the log carries the totals
    for site in sites:
        rows = egress.totals(site)
        assert {(r["round_no"], r["message_type"]) for r in rows} >= {(1, "train"), (2, "train")}
        assert all(r["all_sent"] for r in rows)
        log = TransparencyLog.open(site.log_dir)
        finished = [
            e
            for e in map(parse_event, log.entries(0, log.size))
            if e.kind == "round.finished" and e.fields.get("release") == "round"
        ]
        assert len(finished) == 2
        assert all(e.fields["egress_update_bytes"] > 10_000 for e in finished)
