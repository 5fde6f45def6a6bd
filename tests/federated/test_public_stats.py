"""Public normalisation statistics (dataspace.federated.public_stats, `train --stats-from`).

The consumer gives the means and scales; the sites release no statistics (no
``query.stats`` message, no reply with sums), spend the whole epsilon on
training (the ledger equals the plan without statistics), normalise with
exactly the given numbers, and refuse malformed ones before charging anything.
A federation mixing frame and episode sites is weighed in frames.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from flwr.app import Message, RecordDict

from dataspace import accountant
from dataspace.connectors.detect import read_episodes
from dataspace.errors import DataspaceError, RefusedError
from dataspace.federated import DeploymentEngine, RunSpec, SimulationEngine, dp, public_stats, train
from dataspace.federated import data as fdata
from dataspace.federated.client_app import app as client_app
from dataspace.federated.local_grid import LocalGrid
from dataspace.federated.normalize import NoisySums, Stats, combine
from dataspace.federated.server_app import RunError
from dataspace.site.folder import Site
from tests.conftest import UNITREE

#: dims of the Unitree G1 recording
S_DIM = A_DIM = 26
#: two small sites of the G1 recording (other sessions than the consumer's episodes below)
TWO = [range(0, 4), range(40, 44)]


def _g1_stats(episodes=range(90, 93)) -> Stats:
    """The consumer's statistics: exact, from G1 episodes no site of these tests holds."""
    from dataspace.schema import Episode

    eps = []
    for e in episodes:
        t = pq.read_table(UNITREE / "data" / "chunk-000" / f"episode_{e:06d}.parquet")
        st = np.asarray(t.column("observation.state").to_pylist(), dtype=np.float32)
        ac = np.asarray(t.column("action").to_pylist(), dtype=np.float32)
        eps.append(Episode(np.arange(len(st), dtype=np.int64), st, ac))
    return public_stats.stats_from_episodes(eps)


def _ledger(site) -> list[tuple]:
    with site.db(read_only=True) as con:
        return con.execute(
            "SELECT run_id, round_no, epsilon FROM ledger ORDER BY run_id, round_no"
        ).fetchall()


def _charges(releases: list, rounds: int, delta: float = 1e-5) -> list[float]:
    """What the ledger's filter charges for ``rounds`` releases of ``releases`` each."""
    eps = [accountant.epsilon(releases * k, delta) for k in range(rounds + 1)]
    return [b - a for a, b in itertools.pairwise(eps)]


def _refusals(site) -> list:
    """The site log's ``access.refused`` events, oldest first."""
    from dataspace.audit.events import parse_event
    from dataspace.site.log import open_site_log

    with open_site_log(site, writable=False) as log:
        events = [parse_event(e) for e in log.entries(0, log.size)]
    return [e for e in events if e.kind == "access.refused"]


def _assert_refusal(ev, contract_id: str, dataset_id: str, run_id: str, round_no: int, why: str):
    assert ev.contract_id == contract_id and ev.dataset_id == dataset_id
    assert ev.details["run_id"] == run_id and ev.details["round"] == round_no
    assert why in ev.details["reason"], ev.details["reason"]


class SpyGrid(LocalGrid):
    """A LocalGrid that records every message type sent and every reply's records."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.sent: list[str] = []
        self.reply_records: list[set[str]] = []
        self.configs: list[tuple[str, dict]] = []
        self.sums: list[dict] = []  # the statistics replies' noisy sums

    def push_messages(self, messages):
        messages = list(messages)
        self.sent += [m.metadata.message_type for m in messages]
        for m in messages:
            cfg = m.content.get("config", {})
            self.configs.append((m.metadata.message_type, dict(cfg)))
        ids = super().push_messages(messages)
        for i in ids:
            r = self._replies[i]
            self.reply_records.append(set() if r.has_error() else set(r.content.keys()))
            if not r.has_error() and "sums" in r.content:
                self.sums.append(dict(r.content["sums"]))
        return ids


# ----------------------------------------------------------------- checks (fast)


def test_malformed_statistics_are_typed_errors():
    good = public_stats.to_lists(_g1_stats())
    assert public_stats.check_stats(good, S_DIM, A_DIM).state_std.dtype == np.float32
    cases = {
        "not finite": {**good, "state_mean": [math.nan, *good["state_mean"][1:]]},
        "action_std\\[3\\] = 0.0 is not > 0": {
            **good,
            "action_std": [*good["action_std"][:3], 0.0, *good["action_std"][4:]],
        },
        "state has 25 dimensions, the dataset 26": {
            **good,
            "state_mean": good["state_mean"][:-1],
            "state_std": good["state_std"][:-1],
        },
        "action_mean has 26 values, action_std 25": {
            **good,
            "action_std": good["action_std"][:-1],
        },
        "missing state_std": {k: v for k, v in good.items() if k != "state_std"},
        "inf": {**good, "action_mean": [math.inf] * A_DIM},
    }
    for match, values in cases.items():
        with pytest.raises(public_stats.PublicStatsError, match=match) as e:
            public_stats.check_stats(values, S_DIM, A_DIM)
        assert isinstance(e.value, DataspaceError)


def test_statistics_from_episodes_are_exact(tmp_path):
    stats = _g1_stats()
    frames = [
        pq.read_table(UNITREE / "data" / "chunk-000" / f"episode_{e:06d}.parquet")
        for e in range(90, 93)
    ]
    st = np.concatenate([np.asarray(t.column("observation.state").to_pylist()) for t in frames])
    ac = np.concatenate([np.asarray(t.column("action").to_pylist()) for t in frames])
    np.testing.assert_allclose(stats.state_mean, st.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        stats.action_std, np.maximum(ac.std(0, ddof=1), public_stats.MIN_STD), rtol=1e-4
    )
    # a JSON file round-trips exactly
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(public_stats.to_lists(stats)))
    loaded = public_stats.load_public_stats(path)
    for f in public_stats.FIELDS:
        assert np.array_equal(getattr(loaded, f), getattr(stats, f)), f
    path.write_text(json.dumps({**public_stats.to_lists(stats), "state_std": [0.0] * S_DIM}))
    with pytest.raises(public_stats.PublicStatsError, match=str(path)):
        public_stats.load_public_stats(path)


@pytest.mark.parametrize("unit,episodes", [("frame", None), ("episode", 23)])
def test_plan_without_statistics_spends_the_whole_budget_on_training(unit, episodes):
    s = dp.TrainingSettings(privacy_unit=unit)
    with_stats = dp.make_plan(8.0, 1e-5, 10, 9000, s, episodes=episodes)
    plan = public_stats.plan_without_stats(8.0, 1e-5, 10, 9000, s, episodes=episodes)
    assert plan.stats_releases == 0
    # the statistics entry has no steps: the history is DP-SGD and the losses only
    training_only = [h for h in plan.history(10) if h[2] > 0]
    assert dp.epsilon_of(training_only, 1e-5) == pytest.approx(plan.epsilon_after(10))
    assert 0.99 * 8.0 < plan.epsilon_after(10) <= 8.0
    assert plan.noise_multiplier < with_stats.noise_multiplier  # the 5 % goes to DP-SGD
    assert plan.eval_noise == with_stats.eval_noise
    assert plan.stats_release() == []  # nothing is charged for statistics
    assert sum(_charges(plan.round_release(), 10)) == pytest.approx(plan.epsilon_after(10))


def test_run_config_carries_public_stats_as_json():
    stats = public_stats.to_lists(_g1_stats())
    spec = RunSpec.from_config(
        {"run-id": "r", "contracts": "c", "out-dir": "/tmp/x", "public-stats": json.dumps(stats)}
    )
    assert spec.stats_source == "public"
    cfg = spec.config(1)
    assert cfg["stats"] == "public" and cfg["stats-action-std"] == stats["action_std"]
    assert public_stats.from_config(cfg, S_DIM, A_DIM).state_mean.tolist() == pytest.approx(
        stats["state_mean"]
    )
    plain = RunSpec.from_config({"run-id": "r", "contracts": "c", "out-dir": "/tmp/x"})
    assert plain.stats_source == "dp" and "stats" not in plain.config(1)
    with pytest.raises(public_stats.PublicStatsError):
        RunSpec.from_config(
            {"run-id": "r", "contracts": "c", "out-dir": "/x", "public-stats": "{not json"}
        )


# ----------------------------------------------------------------- runs (slow)


@pytest.mark.slow
def test_public_stats_run_releases_no_statistics_and_uses_them_exactly(federation, tmp_path):
    from dataspace.federated.report import write_report

    fed = federation(epsilon=3.0, rounds=2, n_sites=2, episodes_per_site=TWO)
    stats = _g1_stats()
    grid = SpyGrid(client_app, [s.root for s in fed.sites])
    out = tmp_path / "run"
    h = train(
        RunSpec(
            contracts=fed.contract_ids,
            template="bc-mlp",
            rounds=2,
            out_dir=out,
            seed=4,
            public_stats=stats,
        ),
        fed.sites,
        SimulationEngine(grid=grid),
    )
    assert h["status"] == "finished"
    assert h["stats"]["source"] == h["stats_source"] == "public"
    assert h["stats"]["epsilon"] == {} and h["stats"]["sites"] == []
    # no statistics message, no reply carrying sums
    assert "query.stats" not in grid.sent and set(grid.sent) <= {"train", "evaluate"}
    assert all("sums" not in r for r in grid.reply_records) and grid.reply_records
    assert all(s["stats"] == "public" for r in h["rounds"] for s in r["sites"])
    # the ledger charged exactly the plan without statistics, within the contract
    for site, dsid in zip(fed.sites, fed.dataset_ids, strict=True):
        settings = dp.TrainingSettings.from_config(site.config)
        split = fdata.split_episodes(site, dsid, settings.heldout_fraction)
        plan = public_stats.plan_without_stats(
            3.0, 1e-5, 2, split.train_frames, settings, episodes=len(split.train)
        )
        rows = _ledger(site)
        assert [r[1] for r in rows] == [1, 2]
        assert [r[2] for r in rows] == pytest.approx(_charges(plan.round_release(), 2))
        assert sum(r[2] for r in rows) == pytest.approx(plan.epsilon_after(2))
        assert sum(r[2] for r in rows) <= 3.0
        assert h["rounds"][-1]["epsilon"][dsid] == pytest.approx(plan.epsilon_after(2))
    # every global model (and the final one) normalises with exactly the given numbers
    for path in [out / "rounds" / "000" / "global.npz", out / "final.npz"]:
        with np.load(path) as z:
            for f in public_stats.FIELDS:
                assert np.array_equal(z[f], getattr(stats, f)), (path.name, f)
    report = write_report(out)
    assert report["stats_source"] == "public"


def test_pooled_statistics_are_read_only_from_a_dp_run_and_checked():
    good = public_stats.to_lists(_g1_stats())
    cfg = public_stats.to_config(public_stats.check_stats(good), source="dp")
    pooled = public_stats.pooled_from_config(cfg, S_DIM, A_DIM)
    assert pooled is not None and pooled.action_std.tolist() == pytest.approx(good["action_std"])
    # the statistics round (no lists), an older server, a public run: none
    assert public_stats.pooled_from_config({"stats": "dp"}, S_DIM, A_DIM) is None
    assert public_stats.pooled_from_config({}, S_DIM, A_DIM) is None
    assert public_stats.pooled_from_config({**cfg, "stats": "public"}, S_DIM, A_DIM) is None
    for key, value in (
        ("stats-action-std", [0.0] * A_DIM),  # a gate: division by zero
        ("stats-state-mean", [math.inf] * S_DIM),
        ("stats-state-std", good["state_std"][:-1]),
        ("stats-action-mean", "1,2,3"),
    ):
        with pytest.raises(public_stats.RefusedPublicStatsError):
            public_stats.pooled_from_config({**cfg, key: value}, S_DIM, A_DIM)
    # half the lists is malformed too, not "no pooled statistics"
    with pytest.raises(public_stats.RefusedPublicStatsError, match="missing"):
        public_stats.pooled_from_config(
            {"stats": "dp", "stats-state-mean": good["state_mean"]}, S_DIM, A_DIM
        )


@pytest.mark.slow
def test_a_dp_run_trains_every_site_with_the_pooled_statistics(federation, tmp_path):
    """Each site normalises with the pool of the sites' DP releases (the global model's
    coordinates), not its own: every later message carries them, every reply says so,
    and they are exactly the noisy sums' combination the run recorded in stats.json."""
    fed = federation(epsilon=3.0, rounds=2, n_sites=2, episodes_per_site=TWO)
    grid = SpyGrid(client_app, [s.root for s in fed.sites])
    out = tmp_path / "run"
    h = train(
        RunSpec(contracts=fed.contract_ids, template="bc-mlp", rounds=2, out_dir=out, seed=4),
        fed.sites,
        SimulationEngine(grid=grid),
    )
    assert h["status"] == "finished" and h["stats_source"] == "dp"
    pooled = json.loads((out / "stats.json").read_text())["pooled"]
    assert len(grid.sums) == 2
    parts = [NoisySums.from_lists(s, S_DIM + A_DIM) for s in grid.sums]
    again = public_stats.to_lists(combine(parts, S_DIM))
    for f in public_stats.FIELDS:
        assert pooled[f] == pytest.approx(again[f], rel=1e-6), f
    later = [(t, c) for t, c in grid.configs if t != "query.stats"]
    assert later and {t for t, _ in later} == {"train", "evaluate"}
    for _, cfg in later:
        assert cfg["stats"] == "dp"
        for f in public_stats.FIELDS:
            assert list(cfg[f"stats-{f.replace('_', '-')}"]) == pytest.approx(pooled[f])
    assert all("stats-state-mean" not in c for t, c in grid.configs if t == "query.stats")
    assert {s["normalisation"] for r in h["rounds"] for s in r["sites"]} == {"pooled"}
    with np.load(out / "final.npz") as z:  # the released model normalises the same way
        for f in public_stats.FIELDS:
            assert z[f].tolist() == pytest.approx(pooled[f], rel=1e-6), f


@pytest.mark.slow
def test_malformed_public_stats_are_refused_and_nothing_is_charged(federation, tmp_path):
    fed = federation(epsilon=3.0, rounds=1, n_sites=2, episodes_per_site=TWO)
    good = public_stats.to_lists(_g1_stats())
    # the consumer's own check: before any message
    grid = SpyGrid(client_app, [s.root for s in fed.sites])
    for bad in (
        {**good, "state_std": [0.0] * S_DIM},
        {**good, "action_mean": [math.nan] * A_DIM},
    ):
        with pytest.raises(public_stats.PublicStatsError):
            train(
                RunSpec(
                    contracts=fed.contract_ids,
                    template="bc-mlp",
                    rounds=1,
                    out_dir=tmp_path / "r0",
                    public_stats=bad,
                ),
                fed.sites,
                SimulationEngine(grid=grid),
            )
    assert grid.sent == []
    # well formed but the wrong width for the sites' dataset: every site refuses
    short = {k: v[:-2] for k, v in good.items()}
    with pytest.raises(RunError, match=r"PublicStatsError.*26"):
        train(
            RunSpec(
                contracts=fed.contract_ids,
                template="bc-mlp",
                rounds=1,
                out_dir=tmp_path / "r1",
                public_stats=short,
            ),
            fed.sites,
            "simulation",
        )
    assert json.loads((tmp_path / "r1" / "history.json").read_text())["status"] == "stopped"
    # a server that skips the check: the site itself refuses NaN, zero and short scales
    spec = RunSpec(
        run_id="r-bad", contracts=fed.contract_ids, template="bc-mlp", rounds=1,
        out_dir=str(tmp_path / "r2"), public_stats=good,
    )  # fmt: skip
    from dataspace.federated.templates import get_template

    arrays = get_template("bc-mlp").build(S_DIM, A_DIM).state_dict()
    from flwr.app import ArrayRecord

    for key, value in (
        ("stats-state-mean", [math.nan] * S_DIM),
        ("stats-action-std", [0.0] * A_DIM),
        ("stats-state-std", good["state_std"][:-1]),
    ):
        cfg = spec.config(1)
        cfg[key] = value
        msg = Message(
            RecordDict({"arrays": ArrayRecord(arrays), "config": cfg}),
            dst_node_id=1,
            message_type="train",
        )
        (reply,) = grid.pull_messages(grid.push_messages([msg]))
        assert reply.has_error() and "PublicStatsError" in reply.error.reason, key
    for site in fed.sites:
        assert _ledger(site) == []
    # every site-side refusal is in the site's log: r1's short statistics at both sites
    # (round 1, the train message), then r-bad's three at site 1 (node 1)
    assert issubclass(public_stats.RefusedPublicStatsError, RefusedError)
    assert issubclass(public_stats.RefusedPublicStatsError, public_stats.PublicStatsError)
    site0, site1 = (_refusals(s) for s in fed.sites)
    (r1,) = site1
    run1 = json.loads((tmp_path / "r1" / "history.json").read_text())["spec"]["run_id"]
    _assert_refusal(r1, fed.contract_ids[1], fed.dataset_ids[1], run1, 1, "the dataset 26")
    assert [e.details["run_id"] for e in site0] == [run1, "r-bad", "r-bad", "r-bad"]
    _assert_refusal(site0[0], fed.contract_ids[0], fed.dataset_ids[0], run1, 1, "the dataset 26")
    for ev, why in zip(site0[1:], ("is not finite", "is not > 0", "state_std 25"), strict=True):
        _assert_refusal(ev, fed.contract_ids[0], fed.dataset_ids[0], "r-bad", 1, why)
        assert ev.details["refusal"] == "RefusedPublicStatsError"


@pytest.mark.slow
def test_a_run_cannot_switch_between_dp_and_public_statistics(federation, tmp_path):
    fed = federation(epsilon=3.0, rounds=2, n_sites=2, episodes_per_site=TWO)
    grid = LocalGrid(client_app, [s.root for s in fed.sites])
    spec = RunSpec(
        run_id="r-sw", contracts=fed.contract_ids, template="bc-mlp", rounds=2,
        out_dir=str(tmp_path / "r"),
    )  # fmt: skip
    from flwr.app import ArrayRecord

    from dataspace.federated.templates import get_template

    arrays = ArrayRecord(get_template("bc-mlp").build(S_DIM, A_DIM).state_dict())

    def send(kind: str, cfg, node: int = 1) -> Message:
        content = {"config": cfg} if kind == "query.stats" else {"arrays": arrays, "config": cfg}
        msg = Message(RecordDict(content), node, kind)
        (reply,) = grid.pull_messages(grid.push_messages([msg]))  # errors become error replies
        return reply

    # a run with DP statistics: the statistics query (round 0), then round 1
    assert not send("query.stats", spec.config(0)).has_error()
    assert not send("train", spec.config(1)).has_error()
    charged = _ledger(fed.sites[0])
    assert [r[1] for r in charged] == [0, 1]
    # round 2 asking for public statistics: refused, nothing more charged
    public = RunSpec(**{**spec.__dict__, "public_stats": public_stats.to_lists(_g1_stats())})
    reply = send("train", public.config(2))
    assert reply.has_error() and "StatsSourceError" in reply.error.reason
    assert _ledger(fed.sites[0]) == charged
    (ev,) = _refusals(fed.sites[0])  # logged, with the round it asked for
    _assert_refusal(ev, fed.contract_ids[0], fed.dataset_ids[0], "r-sw", 2, "started with dp")
    assert ev.details["refusal"] == "StatsSourceError" and ev.details["stats"] == "public"
    assert issubclass(public_stats.StatsSourceError, RefusedError)
    # a public-statistics run never answers a statistics query (site 2: its own budget)
    other = RunSpec(**{**public.__dict__, "run_id": "r-pub"})
    reply = send("query.stats", other.config(0), node=2)
    assert reply.has_error() and "releases none" in reply.error.reason
    assert _ledger(fed.sites[1]) == []
    (ev,) = _refusals(fed.sites[1])  # the query is round 0
    _assert_refusal(ev, fed.contract_ids[1], fed.dataset_ids[1], "r-pub", 0, "releases none")
    assert not send("train", other.config(1), node=2).has_error()
    charged = _ledger(fed.sites[1])
    assert [r[:2] for r in charged] == [("r-pub", 1)]
    # nor, once it has started, a query asking for DP statistics after all
    dp_query = RunSpec(**{**spec.__dict__, "run_id": "r-pub"}).config(0)
    reply = send("query.stats", dp_query, node=2)
    assert reply.has_error() and "StatsSourceError" in reply.error.reason
    assert "started with public statistics" in reply.error.reason
    assert _ledger(fed.sites[1]) == charged
    ev = _refusals(fed.sites[1])[-1]
    _assert_refusal(ev, fed.contract_ids[1], fed.dataset_ids[1], "r-pub", 0, "started with public")
    assert ev.details["stats"] == "dp" and len(_refusals(fed.sites[1])) == 2


@pytest.mark.slow
def test_cli_stats_from_json_file_and_dataset_folder(federation, tmp_path, capsys):
    from dataspace.cli import main

    stats = _g1_stats()
    path = tmp_path / "robot-stats.json"
    path.write_text(json.dumps(public_stats.to_lists(stats)))
    # the LeRobot folder, all episodes, as `--stats-from FOLDER` reads it
    folder_stats = public_stats.stats_from_episodes(read_episodes(UNITREE))
    for i, (source, want) in enumerate(((path, stats), (UNITREE, folder_stats))):
        fed = federation(epsilon=2.0, rounds=1, n_sites=2, episodes_per_site=TWO)
        out = tmp_path / f"out{i}"
        args = ["train", "--contract", ",".join(fed.contract_ids), "--rounds", "1"]
        args += ["--out", str(out), "--stats-from", str(source), "--json"]
        for s in fed.sites:
            args += ["--simulate", str(s.root)]
        assert main(args) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["status"] == "finished" and report["stats_source"] == "public"
        assert all(0 < e <= 2.0 for e in report["epsilon"].values())
        with np.load(out / "final.npz") as z:
            for f in public_stats.FIELDS:
                assert np.array_equal(z[f], getattr(want, f)), (source, f)
    # a malformed file stops the CLI before anything is charged
    path.write_text(json.dumps({**public_stats.to_lists(stats), "state_std": [-1.0] * S_DIM}))
    args = ["train", "--contract", ",".join(fed.contract_ids), "--rounds", "1"]
    args += ["--out", str(tmp_path / "bad"), "--stats-from", str(path)]
    for s in fed.sites:
        args += ["--simulate", str(s.root)]
    assert main(args) != 0
    assert "state_std[0] = -1.0 is not > 0" in capsys.readouterr().err
    for site in fed.sites:
        assert len(_ledger(site)) == 1  # the good run's round 1 only


@pytest.mark.slow
@pytest.mark.parametrize("fold", [False, True], ids=["evaluate", "folded"])
def test_mixed_privacy_units_are_weighed_in_frames(federation, tmp_path, fold):
    # folded: round 1's held-out MSE comes in round 2's train replies (eval-frames there)
    rounds = 2 if fold else 1
    fed = federation(epsilon=3.0, rounds=rounds, n_sites=2, episodes_per_site=TWO)
    with open(fed.sites[1].config_path, "a") as f:
        f.write('\n[training]\nprivacy_unit = "episode"\nframes_per_episode = 16\n')
    out = tmp_path / "run"
    h = train(
        RunSpec(
            contracts=fed.contract_ids,
            template="bc-mlp",
            rounds=rounds,
            out_dir=out,
            seed=2,
            public_stats=_g1_stats(),
            fold_evaluate=fold,
        ),
        fed.sites,
        "simulation",
    )
    rec = h["rounds"][0]
    assert rec["weights"] == "frames"
    by = {s["dataset-id"]: s for s in rec["sites"]}
    frame_ds, ep_ds = fed.dataset_ids
    assert by[frame_ds]["privacy_unit"] == "frame" and by[ep_ds]["privacy_unit"] == "episode"
    # the episode site reports episodes; FedAvg weighs it by episodes x mean frames/episode
    ref = fdata.dataset_ref(fed.sites[1], ep_ds)
    split = fdata.split_episodes(fed.sites[1], ep_ds)
    assert by[ep_ds]["num_units"] == len(split.train)
    assert by[ep_ds]["num_examples"] == round(len(split.train) * ref.frames / ref.episodes, -1)
    assert by[ep_ds]["num_examples"] > 100 * by[ep_ds]["num_units"] / 2  # hundreds of frames each
    split0 = fdata.split_episodes(fed.sites[0], frame_ds)
    assert by[frame_ds]["num_examples"] == by[frame_ds]["num_units"]
    assert by[frame_ds]["num_examples"] == round(split0.train_frames, -1)
    # and the global model is that weighted mean of the two updates
    w = np.array([by[frame_ds]["num_examples"], by[ep_ds]["num_examples"]], dtype=np.float64)
    rdir = out / "rounds" / "001"
    with (
        np.load(rdir / "updates" / f"{frame_ds}.npz") as a,
        np.load(rdir / "updates" / f"{ep_ds}.npz") as b,
        np.load(rdir / "global.npz") as g,
    ):
        key = "net.0.weight"
        want = (w[0] * a[key].astype(np.float64) + w[1] * b[key]) / w.sum()
        np.testing.assert_allclose(g[key], want, rtol=1e-5, atol=1e-6)
    # the held-out MSE is weighed in frames too: held-out frames, and held-out episodes x
    # mean frames per episode (the episode site's own eval count is its held-out episodes)
    ew = {
        frame_ds: max(10, round(split0.heldout_frames, -1)),
        ep_ds: max(10, round(len(split.heldout) * ref.frames / ref.episodes, -1)),
    }
    assert rec["eval_weights"] == pytest.approx(ew)
    assert ew[ep_ds] > 50 * len(split.heldout)  # not episodes
    mse = rec["eval_mse_per_dataset"]
    assert set(mse) == {frame_ds, ep_ds} and all(math.isfinite(v) for v in mse.values())
    want_mse = (ew[frame_ds] * mse[frame_ds] + ew[ep_ds] * mse[ep_ds]) / (ew[frame_ds] + ew[ep_ds])
    assert rec["eval_mse"] == pytest.approx(want_mse, rel=1e-9)


@pytest.mark.slow
def test_public_stats_on_the_deployment_engine(federation, tmp_path):
    """The deployment engine with public_stats: the JSON travels in flwr's --run-config to
    the sites."""
    from dataspace.federated import RunSpec, train

    fed = federation(epsilon=3.0, rounds=1, n_sites=2, episodes_per_site=TWO)
    stats = _g1_stats()
    h = train(
        RunSpec(
            contracts=fed.contract_ids,
            template="bc-mlp",
            rounds=1,
            out_dir=tmp_path / "run",
            seed=1,
            public_stats=stats,
        ),
        [s.root for s in fed.sites],
        DeploymentEngine(timeout=480),
    )
    assert h["status"] == "finished", h.get("error")
    assert h["stats"]["source"] == "public" and h["stats"]["sites"] == []
    assert all(s["stats"] == "public" for s in h["rounds"][0]["sites"])
    with np.load(tmp_path / "run" / "final.npz") as z:
        for f in public_stats.FIELDS:
            assert np.array_equal(z[f], getattr(stats, f)), f
    for site, dsid in zip(fed.sites, fed.dataset_ids, strict=True):
        settings = dp.TrainingSettings.from_config(site.config)
        split = fdata.split_episodes(site, dsid, settings.heldout_fraction)
        plan = public_stats.plan_without_stats(
            3.0, 1e-5, 1, split.train_frames, settings, episodes=len(split.train)
        )
        assert [r[2] for r in _ledger(site)] == pytest.approx(_charges(plan.round_release(), 1))


@pytest.mark.slow
def test_mixed_privacy_units_under_secagg_are_refused_after_the_statistics_query(
    federation, tmp_path
):
    """Under SecAgg+ the server cannot reweigh the sites: a mixed federation stops.

    The server learns the sites' units from the statistics replies, so the run
    stops after the statistics query (which each site charges as round 0) and
    before any train message: that charge stays, nothing else is charged.
    """
    fed = federation(epsilon=3.0, rounds=2, n_sites=2, episodes_per_site=TWO)
    with open(fed.sites[1].config_path, "a") as f:
        f.write('\n[training]\nprivacy_unit = "episode"\n')
    grid = SpyGrid(client_app, [s.root for s in fed.sites])
    with pytest.raises(RunError, match=r"mix privacy units.*charged its statistics"):
        train(
            RunSpec(
                contracts=fed.contract_ids,
                template="bc-mlp",
                rounds=2,
                out_dir=tmp_path / "r",
                run_id="r-mix",
                secagg=True,
            ),
            fed.sites,
            SimulationEngine(grid=grid),
        )
    assert grid.sent == ["query.stats", "query.stats"]  # no train message, no SecAgg+ stage
    assert not (tmp_path / "r" / "rounds" / "001").exists()
    # each site holds exactly the statistics' charge of round 1 (its plan's), no round 2
    for site, dsid in zip(fed.sites, fed.dataset_ids, strict=True):
        site = Site.open(site.root)  # the config as the sites read it (site 2: per episode)
        settings = dp.TrainingSettings.from_config(site.config)
        assert settings.privacy_unit == ("episode" if site.root == fed.sites[1].root else "frame")
        split = fdata.split_episodes(site, dsid, settings.heldout_fraction)
        plan = dp.make_plan(3.0, 1e-5, 2, split.train_frames, settings, episodes=len(split.train))
        rows = _ledger(site)
        assert [r[:2] for r in rows] == [("r-mix", 0)]
        assert rows[0][2] == pytest.approx(accountant.epsilon(plan.stats_release(), 1e-5))
