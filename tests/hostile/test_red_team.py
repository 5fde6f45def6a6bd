"""Red team: new attacks of a hostile server on the connector's real ClientApp.

Each test plays one attack not in ``test_hostile_server.py`` through the same
harness (every field of every message is the server's) and asserts the defence.
Found by a red-team pass and closed since (each was an ``xfail(strict=True)``
documenting what leaked until it was fixed): a windowed template per frame (one
frame in 11 pairs: releases moved by up to 11 clips), replies charged and then
refused by the egress guard (``train.default``, packed vectors of another dtype
or shape, Arrays whose metadata lies), refusals too large or too odd to log, a
contract no plan can meet, thousands of contract ids per message, a contract
cache shared across sites, public statistics that vanish in float32. ``hole``
remains for the next one found.

The invariants played: a refused message is logged (``access.refused``) and
charges nothing (no ledger change, no ``round.*`` entry); one message adds a
bounded amount to the log; one privacy unit moves every release by at most the
clip its noise is calibrated for; the site answers its own contracts whatever
an earlier message listed.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from dataspace.errors import NotFoundError
from dataspace.federated import client_app, dp, guard, packing
from dataspace.federated import data as fdata
from dataspace.federated.guard import load_contract
from dataspace.federated.noise import NoiseSource
from dataspace.federated.templates import get_template
from dataspace.policy import ledger as policy_ledger
from dataspace.policy.contracts import OfferRequest, negotiate
from dataspace.policy.odrl import build_policy
from dataspace.policy.policies import publish_policy
from dataspace.policy.terms import ContractTerms
from dataspace.site.log import open_site_log
from tests.hostile.harness import (
    A_DIM,
    S_DIM,
    HostileServer,
    events,
    ledger,
    model,
    opacus_epsilon,
    spent,
)

pytestmark = pytest.mark.slow

# ------------------------------------------------------------------ helpers


def delta_of(s: HostileServer, cid: str | None = None) -> float:
    return load_contract(s.site, cid or s.contracts[0]).terms.delta


def epsilon_of(s: HostileServer, cid: str | None = None) -> float:
    return load_contract(s.site, cid or s.contracts[0]).terms.epsilon


def refusal(reply) -> str:
    assert reply.has_error(), "the site answered"
    return reply.error.reason


def charged_in_log(s: HostileServer, cid: str | None = None) -> float:
    """Opacus over every release the site's log says it charged (for one contract)."""
    started = events(s.site, "round.started")
    rel = [r for e in started if cid in (None, e.contract_id) for r in e.fields["releases"]]
    return opacus_epsilon(rel, delta_of(s, cid))


def assert_within_contract(s: HostileServer) -> None:
    left = s.epsilon_of_what_left(delta_of(s))
    assert left <= epsilon_of(s) * (1 + 1e-9)
    assert spent(s.site) == pytest.approx(charged_in_log(s), rel=1e-6)
    assert spent(s.site) >= left * (1 - 1e-9)


def entry_sizes(s: HostileServer) -> list[int]:
    with open_site_log(s.site, writable=False) as log:
        return [len(e) for e in log.entries(0, log.size)]


def kinds_since(s: HostileServer, n: int) -> list[str]:
    return [e.kind for e in events(s.site)[n:]]


def public(mean: float = 0.0, std: float = 1.0, action_std: float = 1.0) -> dict:
    """A message's public statistics (run config ``stats = "public"``)."""
    return {
        "stats": "public",
        "stats-state-mean": [mean] * S_DIM,
        "stats-state-std": [std] * S_DIM,
        "stats-action-mean": [0.0] * A_DIM,
        "stats-action-std": [action_std] * A_DIM,
    }


def weights_finite(reply) -> bool:
    a = reply.content["arrays"]
    return all(np.isfinite(a[k].numpy()).all() for k in a if not k.endswith(("_mean", "_std")))


def hole(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


# ------------------------------------------------ (e) refused after the charge


def _packed(kind: str) -> ArrayRecord:
    vec = packing.pack(model())[packing.PACKED].numpy()
    vec = vec.astype(np.float64) if kind == "float64" else vec.reshape(-1, 1)
    return ArrayRecord({packing.PACKED: Array(vec)})


def _lying_shape() -> ArrayRecord:
    """Tensors as the template's, but one Array's shape metadata says (1,)."""
    rec = model()
    a = rec["net.0.weight"]
    rec["net.0.weight"] = Array(dtype=a.dtype, shape=(1,), stype=a.stype, data=a.data)
    return rec


AFTER_CHARGE = [
    pytest.param(
        lambda s: s.send("train.default", s.config("r", 2), model()),
        id="train.default",
    ),
    pytest.param(
        lambda s: s.send("evaluate.default", s.config("r", 1), model()),
        id="evaluate.default",
    ),
    pytest.param(
        lambda s: s.train("r", 2, arrays=_packed("float64")),
        id="packed float64",
    ),
    pytest.param(
        lambda s: s.train("r", 2, arrays=_packed("column")),
        id="packed column",
    ),
    pytest.param(
        lambda s: s.train("r", 2, arrays=_lying_shape()),
        id="array shape that lies",
    ),
]


@pytest.mark.parametrize("attack", AFTER_CHARGE)
def test_a_reply_the_egress_guard_refuses_was_never_charged_and_is_logged(hostile, attack):
    s = hostile()
    s.stats("r")
    assert not s.train("r", 1).has_error()
    before, n = ledger(s.site), len(events(s.site))
    reply = attack(s)
    assert reply.has_error()
    new = kinds_since(s, n)
    assert "access.refused" in new
    assert not {"round.started", "round.finished", "round.evaluated"} & set(new), new
    assert ledger(s.site) == before  # no charge, no evaluation used


def test_a_statistics_query_with_a_text_round_is_answered_and_recorded(hostile):
    """The query never reads server-round; the egress guard once int()ed it after the
    statistics were charged and finished: ValueError, no refusal, no egress row."""
    s = hostile()
    reply = s.stats("r", **{"server-round": "x"})
    assert not reply.has_error()
    assert [r[1:3] for r in ledger(s.site)] == [(0, "stats")]
    assert [e.kind for e in events(s.site)][-2:] == ["round.started", "round.finished"]
    with s.site.db(read_only=True) as con:
        rows = con.execute("SELECT message_type, round_no, sent FROM egress").fetchall()
    assert rows == [("query.stats", 0, True)]


# ------------------------------------------------ (d) every refusal in the log, bounded


UNLOGGED = [
    pytest.param(
        {},
        {"template": "x" * (1 << 20)},
        id="template of 1 MiB",
    ),
    pytest.param(
        {},
        {"lr": "y" * (1 << 20)},
        id="lr text of 1 MiB",
    ),
    pytest.param(
        {},
        {"server-round": 2**60},
        id="server-round 2**60",
    ),
    pytest.param(
        {"delta": 0.0},
        {},
        id="a contract with delta 0",
    ),
    pytest.param(
        {"epsilon": 1e-3},
        {},
        id="a contract with epsilon 1e-3",
    ),
    pytest.param({}, {"server-round": True}, id="bool server-round"),
    pytest.param({}, {"server-round": -(2**60)}, id="server-round -2**60"),
    pytest.param({}, {"server-round": 1.0}, id="float server-round"),
    pytest.param({}, {"num-rounds": True}, id="bool num-rounds"),
    pytest.param({}, {"local-epochs": True}, id="bool local-epochs"),
    pytest.param({}, {"clip-norm": "1.0"}, id="text clip-norm"),
    pytest.param({}, {"lr": True}, id="bool lr"),
    pytest.param({}, {"lr": [0.5]}, id="list lr"),
    pytest.param({}, {"contracts": ["nope", "nope"]}, id="contracts as a list"),
    pytest.param({}, {"run-id": b"\x00" * 300}, id="bytes run-id of 300"),
    pytest.param({}, {"stats": "DP"}, id="unknown stats source"),
    pytest.param({}, public(std=0.0), id="zero public scale"),
]


@pytest.mark.parametrize(("terms", "over"), UNLOGGED)
def test_every_refusal_is_logged_once_and_charges_nothing(hostile, terms, over):
    s = hostile(**terms)
    n = len(events(s.site))
    reply = s.send("train", s.config("r", 1) | over, model())
    assert reply.has_error()
    new = events(s.site)[n:]
    assert [e.kind for e in new] == ["access.refused"], [e.kind for e in new]
    assert new[0].fields["refusal"] == refusal(reply).split(":")[0]
    assert ledger(s.site) == []


BLOAT = [
    pytest.param(
        {"template": "x" * 300_000},
        id="template",
    ),
    pytest.param(
        {"server-round": "9" * 300_000},
        id="server-round text",
    ),
    pytest.param(
        {"stats": "p" * 300_000},
        id="stats source",
    ),
    pytest.param({"run-id": "r" * 300_000}, id="run-id"),
    pytest.param({"contracts": "c" * 300_000}, id="contracts"),
]


@pytest.mark.parametrize("over", BLOAT)
def test_one_refused_message_adds_a_bounded_entry_to_the_log(hostile, over):
    s = hostile()
    n = len(entry_sizes(s))
    assert s.train("r", 1, **over).has_error()
    added = entry_sizes(s)[n:]
    assert added and sum(added) < 16_384, added


# ------------------------------------------------ (d) wedging a warm worker


def test_a_message_listing_many_contract_ids_costs_bounded_work(hostile, monkeypatch):
    """The ids a site has not seen yet are looked up one by one: a server sends fresh ones."""
    s = hostile()
    real, calls = guard.load_contract, []

    def counting(site, cid):
        calls.append(cid)
        if cid in s.contracts:
            return real(site, cid)
        raise NotFoundError(f"contract {cid} is not at this site")  # fast here: no DB

    monkeypatch.setattr(guard, "load_contract", counting)
    where = len(getattr(client_app, "_WHERE", {}))
    for k in range(2):  # the first message (site contract last), then fresh bogus ids only
        ids = [f"bogus-{uuid.uuid4().hex[:8]}-{i}" for i in range(1000)]
        ids += [s.contracts[0]] if k == 0 else []
        reply = s.stats(f"r{k}", contracts=",".join(ids))
        assert reply.has_error() == bool(k)
    assert len(calls) <= 64, f"{len(calls)} contract lookups for two messages"
    assert len(getattr(client_app, "_WHERE", {})) - where <= 64


def test_a_contract_probed_at_another_site_is_still_found_at_its_own(hostile):
    a, b = hostile(), hostile()
    probe = a.stats("r", contracts=f"{b.contracts[0]},{a.contracts[0]}")
    assert not probe.has_error()  # answered by a under a's contract
    assert not b.stats("r").has_error()


# ------------------------------------------------ (a) the privacy unit of a windowed template


@pytest.mark.parametrize(
    ("template", "unit"),
    [
        ("bc-mlp", "frame"),
        ("bc-chunk", "episode"),  # pairs never cross episodes: one episode moves each by <= 1
    ],
)
def test_one_privacy_unit_moves_each_release_by_at_most_its_clip(hostile, template, unit):
    s = hostile(template=template)
    with open(s.site.config_path, "a") as f:
        f.write(f'\n[training]\nprivacy_unit = "{unit}"\n')
    assert not s.stats("r", template=template).has_error()
    net0 = get_template(template).build(S_DIM, A_DIM)
    reply = s.train("r", 1, arrays=ArrayRecord(net0.state_dict()), template=template)
    assert not reply.has_error()  # the site releases it, charged per unit
    assert events(s.site, "round.started")[-1].fields["privacy_unit"] == unit
    settings = dp.TrainingSettings.from_config(s.site.config)
    ref = fdata.dataset_ref(s.site, s.fed.dataset_ids[0])
    split = fdata.split_episodes(s.site, ref.dataset_id, settings.heldout_fraction)
    fr = fdata.load_frames(s.site, ref, split.train)
    action, ep = fr.action.clone(), fr.episode
    j = int((ep == ep[0]).sum()) // 2  # mid first episode
    action[j] = 30.0  # the neighbouring dataset: one outlier frame (in its episode) more
    keep = torch.arange(len(ep)) != j if unit == "frame" else ep != ep[j]
    t, net = get_template(template), net0.net
    x, y = t.pairs(fr.state, action, ep)
    x2, y2 = t.pairs(fr.state[keep], action[keep], ep[keep])
    by_ep = unit == "episode"

    def loss_sum(xx, yy, e) -> float:  # the train/held-out loss release, noise 0
        rng = NoiseSource(bytes(32))
        return dp.noisy_mean_loss(
            net, xx, yy, 1, settings.eval_clip, 0.0, rng, e if by_ep else None
        )

    def grad_sum(xx, yy, e) -> torch.Tensor:  # DP-SGD's clipped sum, every unit in the batch
        if by_ep:  # each episode's frames, all of them, as one unit
            index = dp.EpisodeIndex.of(e)
            idx, w = dp.episode_batch(
                index, torch.arange(len(index)), 10**6, NoiseSource(bytes(32))
            )
            xb, yb = xx[idx], yy[idx]
        else:
            xb, yb, w = xx[:, None], yy[:, None], torch.ones(len(xx), 1)
        sums, _ = dp.episode_clipped_sums(net, xb, yb, w, settings.clip_norm)
        return torch.cat([torch.cat([w.ravel(), b.ravel()]) for w, b in sums]).double()

    loss_shift = abs(loss_sum(x, y, ep) - loss_sum(x2, y2, ep[keep])) / settings.eval_clip
    grad_shift = float((grad_sum(x, y, ep) - grad_sum(x2, y2, ep[keep])).norm())
    assert loss_shift <= 1 + 1e-6, loss_shift
    assert grad_shift / settings.clip_norm <= 1 + 1e-3, grad_shift


def test_a_windowed_template_is_refused_per_frame(hostile):
    """bc-chunk builds each pair from 11 frames: per frame, one frame would move each
    release by up to 11 clips (measured: 5.8 clips of loss, 2.5 C of gradient with a
    random model) while the noise counts one. The site refuses it, logged, uncharged."""
    s = hostile(template="bc-chunk")
    for reply in (
        s.stats("r", template="bc-chunk"),
        s.train("r", 1, template="bc-chunk", arrays=ArrayRecord(
            get_template("bc-chunk").build(S_DIM, A_DIM).state_dict()
        )),
    ):  # fmt: skip
        assert "MechanismError" in refusal(reply) and "privacy_unit 'episode'" in refusal(reply)
    assert ledger(s.site) == []
    assert [e.fields["refusal"] for e in events(s.site, "access.refused")] == ["MechanismError"] * 2


# ------------------------------------------------ public statistics


def test_public_statistics_that_vanish_or_overflow_in_float32_are_refused(hostile):
    s = hostile()
    assert "RefusedPublicStatsError" in refusal(s.train("p", 1, **public(std=1e-50)))
    assert "RefusedPublicStatsError" in refusal(s.train("q", 1, **public(mean=1e300)))
    assert ledger(s.site) == []


def test_extreme_public_statistics_leave_nothing_but_noise(hostile):
    """Scales that make every normalised input huge or non-finite: each frame is dropped
    by itself and counts as the clip in the loss, so the reply is finite and the loss is
    the clip plus noise, whatever the data."""
    s = hostile(rounds=4)
    for k, over in enumerate((public(std=1e-50), public(std=1e-30), public(action_std=1e-30))):
        reply = s.train(f"p{k}", k + 1, **over)
        if reply.has_error():  # refused (the fix of the test above): uncharged
            assert "RefusedPublicStatsError" in refusal(reply)
            continue
        assert weights_finite(reply)
        loss = float(reply.content["metrics"]["train-loss"])
        assert abs(loss - 1.0) < 0.2, loss  # clip 1.0; noise sd 26.7 / 1120 frames
    assert_within_contract(s)


def test_a_run_keeps_its_stats_source_and_public_values_change_nothing_charged(hostile):
    s = hostile(epsilon=8.0, rounds=4)
    assert not s.stats("d").has_error()
    assert not s.train("d", 1).has_error()
    # a DP run's evaluation with crafted public statistics: its round's one evaluation
    assert not s.evaluate("d", 1, **public(mean=0.3, std=1e-3)).has_error()
    assert "ReplayError" in refusal(s.evaluate("d", 1))
    assert not s.train("p", 1, **public()).has_error()
    assert not s.train("p", 2, **public(mean=0.5, std=2.0)).has_error()  # other values
    before = ledger(s.site)
    assert "StatsSourceError" in refusal(s.train("p", 3))  # now DP
    assert "StatsSourceError" in refusal(s.stats("p"))
    assert "StatsSourceError" in refusal(s.train("d", 2, **public()))
    assert ledger(s.site) == before
    assert_within_contract(s)


# ------------------------------------------------ config values of odd types, packed arrays


def test_evaluate_round_of_another_type_folds_nothing(hostile):
    s = hostile()
    s.stats("r")
    s.train("r", 1)
    for rnd, ev in ((2, True), (3, 2.0), (4, "3")):
        reply = s.train("r", rnd, **{"evaluate-round": ev})
        assert not reply.has_error() and "eval-mse" not in reply.content["metrics"]
    assert events(s.site, "round.evaluated") == []
    assert not s.evaluate("r", 1).has_error()  # its one evaluation is still there, once
    assert "ReplayError" in refusal(s.evaluate("r", 1))
    assert_within_contract(s)


def test_packed_vectors_with_nan_are_refused_or_echoed_only_in_the_servers_buffers(hostile):
    s = hostile()
    s.stats("r")
    vec = packing.pack(model())[packing.PACKED].numpy().copy()
    bad = vec.copy()
    bad[-1] = np.nan  # the last Linear's bias
    reply = s.train("r", 1, arrays=ArrayRecord({packing.PACKED: Array(bad)}))
    assert "weights that are not finite" in refusal(reply)
    assert [r[1] for r in ledger(s.site)] == [0]
    vec[0] = np.nan  # state_mean[0]: a buffer, never used by the site
    reply = s.train("r", 1, arrays=ArrayRecord({packing.PACKED: Array(vec)}))
    assert not reply.has_error()
    out = packing.unpack_state_dict(reply.content["arrays"], model().to_torch_state_dict())
    assert math.isnan(float(out["state_mean"][0]))  # the server's own NaN, echoed
    assert all(torch.isfinite(v).all() for k, v in out.items() if k.startswith("net."))
    assert_within_contract(s)


ODD = [True, False, 0, -1, 2**60, 1.5, float("nan"), float("inf"), "", "1", b"\x01",
       [1, 2], ["a"], [True], [], "bc-mlp,bc-chunk"]  # fmt: skip
KEYS = ["server-round", "num-rounds", "local-epochs", "clip-norm", "lr", "evaluate-round",
        "run-id", "contracts", "template", "stats", "stats-state-std"]  # fmt: skip


def test_random_odd_config_values_never_charge_a_refused_message(hostile):
    """60 messages, each with one or two config values of an odd type (fixed test seed)."""
    rng = np.random.default_rng(20260512)
    s = hostile(epsilon=4.0, rounds=4)
    s.stats("r")
    for _ in range(60):
        mtype = str(rng.choice(["train", "evaluate", "query.stats"]))
        cfg = s.config("r", int(rng.integers(1, 5)))
        for key in rng.choice(KEYS, size=int(rng.integers(1, 3)), replace=False):
            cfg[str(key)] = ODD[int(rng.integers(len(ODD)))]
        before = ledger(s.site)
        reply = s.send(mtype, cfg, model(seed=int(rng.integers(3))))
        if reply.has_error():
            assert ledger(s.site) == before, (mtype, cfg)
    assert_within_contract(s)
    finished = [(e.fields["run_id"], e.fields["round"]) for e in events(s.site, "round.finished")]
    assert len(finished) == len(set(finished)) == len(ledger(s.site))


# ------------------------------------------------ several contracts, crashes after the charge


def _second_contract(s: HostileServer, epsilon: float, rounds: int) -> str:
    """Another agreed contract of the same consumer on the same dataset at the same site."""
    site, did = s.site, s.fed.dataset_ids[0]
    with site.db(read_only=True) as con:
        (fp,) = con.execute(
            "SELECT fingerprint FROM datasets WHERE dataset_id = ?", [did]
        ).fetchone()
    until = datetime.now(UTC) + timedelta(days=30)
    publish_policy(
        site,
        build_policy(dataset_id=did, fingerprint=fp, assigner=site.identity.key_b64,
                     epsilon=100.0, delta=1e-3, until=until, max_rounds=10,
                     templates=["bc-mlp"]),
    )  # fmt: skip
    offer = OfferRequest(
        dataset_id=did, consumer=s.fed.consumer,
        terms=ContractTerms(purpose="robot-policy-training", epsilon=epsilon, rounds=rounds,
                            until=until - timedelta(days=1), template="bc-mlp", delta=1e-5),
    )  # fmt: skip
    return negotiate(site, offer, s.fed.consumer_key).terms.contract_id


def test_several_contracts_on_one_dataset_each_stay_within_their_own(hostile):
    s = hostile(epsilon=2.0, rounds=4)
    a, b = s.contracts[0], _second_contract(s, 2.0, 4)
    assert not s.stats("r", contracts=f"{a},{b}").has_error()
    assert "ReplayError" in refusal(s.stats("r", contracts=b))  # (dataset, run, round) once
    assert not s.stats("q", contracts=b).has_error()
    assert not s.train("q", 1, contracts=f"{b},{b},nope").has_error()
    assert "was not trained" in refusal(s.evaluate("q", 1, contracts=a))  # not under a
    assert "ReplayError" in refusal(s.train("q", 1, contracts=a))
    assert not s.evaluate("q", 1, contracts=f"nope,{b}").has_error()
    for rnd in range(1, 5):
        s.train(f"x{rnd}", rnd, contracts=f"{a},{b}")
        s.train(f"y{rnd}", rnd, contracts=b)
    for cid in (a, b):
        assert policy_ledger.contract_epsilon(s.site, cid) <= 2.0 * (1 + 1e-9)
        assert policy_ledger.contract_epsilon(s.site, cid) == pytest.approx(
            charged_in_log(s, cid), rel=1e-6
        )


def test_a_round_that_failed_after_its_charge_runs_again_only_as_charged(hostile, monkeypatch):
    """An exception after the charge: not re-run while its process lives (no second noisy
    draw of a release that may be in flight); once that process is gone, re-run under the
    same charge, not a new one; what left equals one release."""
    s = hostile()
    s.stats("r")

    def boom(*a, **k):
        raise RuntimeError("crash after the charge")

    with monkeypatch.context() as m:
        m.setattr(dp, "train_dp", boom)
        assert "crash after the charge" in refusal(s.train("r", 1))
    charged = ledger(s.site)
    assert [(r[1], r[4]) for r in charged] == [(0, True), (1, False)]
    assert "ReplayError" in refusal(s.train("r", 1))  # its process (this one) lives
    monkeypatch.setattr(policy_ledger, "_executor_alive", lambda executor: False)
    assert not s.train("r", 1).has_error()
    assert [r[3] for r in ledger(s.site)] == [r[3] for r in charged]  # the same charge
    assert len(events(s.site, "round.started")) == 2
    assert "ReplayError" in refusal(s.train("r", 1))  # finished now: never again
    assert_within_contract(s)
