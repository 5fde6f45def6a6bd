"""The adversarial suite: a hostile server against the connector's real ClientApp.

Each test plays one attack of docs/threat-model.md (a hostile hub or consumer
ServerApp choosing every field of every message) and asserts what the holder
was promised: the refusal is logged (``access.refused``) and charges nothing,
and what left the site stays within the contract's (epsilon, delta), counted
by Opacus's RDP accountant over the releases the harness actually received
(independent of the site's accountant), which the ledger equals when every
round's one evaluation left too (else the ledger is larger: it charged it).
Data: the sample bundled with the package (a bare clone runs this).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from dataspace.federated import packing
from dataspace.federated.guard import load_contract
from dataspace.policy.contracts import revoke
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


def delta_of(s: HostileServer) -> float:
    return load_contract(s.site, s.contracts[0]).terms.delta


def epsilon_of(s: HostileServer) -> float:
    return load_contract(s.site, s.contracts[0]).terms.epsilon


def weights(reply) -> np.ndarray:
    a = reply.content["arrays"]
    return np.concatenate([a[k].numpy().ravel() for k in a if k.startswith("net.")])


def refusal(reply) -> str:
    assert reply.has_error(), "the site answered"
    return reply.error.reason


def refusals(s: HostileServer) -> list[str]:
    return [e.fields.get("refusal", "") for e in events(s.site, "access.refused")]


def charged_in_log(s: HostileServer) -> float:
    """Opacus over every release the site's log says it charged (all round.started)."""
    rel = [r for e in events(s.site, "round.started") for r in e.fields["releases"]]
    return opacus_epsilon(rel, delta_of(s))


def assert_within_contract(s: HostileServer, all_evaluated: bool) -> None:
    """What left <= the contract; the ledger = the accountant over what it charged."""
    left = s.epsilon_of_what_left(delta_of(s))
    assert left <= epsilon_of(s) * (1 + 1e-9)
    assert spent(s.site) == pytest.approx(charged_in_log(s), rel=1e-6)
    if all_evaluated:
        assert spent(s.site) == pytest.approx(left, rel=1e-6)
    else:
        assert spent(s.site) >= left * (1 - 1e-9)


# ------------------------------------------------------------------ noise


def test_the_servers_seed_seeds_nothing_identical_messages_get_fresh_noise(hostile):
    """Attack 1: the noise was sha256(seed/dataset/round/purpose) with the server's seed.
    Now the same message (same seed, weights, round) in two runs gets independent noise."""
    s = hostile()
    assert not s.stats("r1", seed=1234).has_error()
    a = s.train("r1", 1, seed=1234)
    b = s.train("r2", 1, seed=1234)
    diff = weights(a) - weights(b)
    assert np.abs(diff).max() > 0
    # the two updates differ by noise around the same mean, not by a fixed offset
    assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(diff.size)
    started = events(s.site, "round.started")
    assert {e.fields["noise"] for e in started} == {"csprng"}
    assert_within_contract(s, all_evaluated=False)


def test_two_identical_statistics_queries_differ_by_noise_of_the_stated_scale(hostile):
    """The empirical check: two releases of the same statistics (two contracts on the
    same episodes, a fixed clip bound) differ by N(0, 2 (z B sqrt(D))^2) per coordinate of
    the sums; the same contract asked again gets its one answer again."""
    from scipy.stats import chi2

    s, other = hostile(), hostile()  # two holders of the same episodes, one contract each
    for site in (s.site, other.site):
        with open(site.config_path, "a") as f:
            f.write("\n[training]\nstats_bound = 4.0\n")
    a, b = s.stats("r1"), other.stats("r2")
    assert s.stats("r3").content["sums"]["sum"] == a.content["sums"]["sum"]  # same answer
    sa, sb = a.content["sums"], b.content["sums"]
    z, d = float(sa["noise"]), S_DIM + A_DIM
    bound = np.array(sa["bound"])  # one per coordinate: site.toml's 4.0 for each
    assert float(sb["noise"]) == z and sb["bound"] == sa["bound"] == [4.0] * d
    scaled = np.concatenate(
        [
            (np.array(sa["sum"]) - np.array(sb["sum"])) / (math.sqrt(2) * z * bound * math.sqrt(d)),
            (np.array(sa["sumsq"]) - np.array(sb["sumsq"]))
            / (math.sqrt(2) * z * bound**2 * math.sqrt(d)),
        ]
    )
    stat = float((scaled**2).sum())  # chi-square with 2D degrees of freedom if the scale holds
    lo, hi = chi2.ppf(1e-6, 2 * d), chi2.ppf(1 - 1e-6, 2 * d)
    assert lo < stat < hi, (stat, lo, hi)
    count_gap = abs(float(sa["count"]) - float(sb["count"])) / (math.sqrt(2) * z)
    assert count_gap < 5.5  # one more N(0, 1) draw, at 5.5 sigma


# ------------------------------------------------------------------ evaluation


def test_evaluation_is_one_release_per_trained_round(hostile):
    """Attack 2: after one charged round, evaluate answered any number of crafted models.
    Now a round's one evaluation is claimed once; every other request is refused, logged."""
    s = hostile()
    s.stats("r")
    assert not s.train("r", 1).has_error()
    first = s.evaluate("r", 1)
    assert math.isfinite(float(first.content["metrics"]["eval-mse"]))
    before = ledger(s.site)
    for k in range(5):  # crafted models: a gate on one frame, one coordinate at a time
        crafted = model(seed=k + 1)
        assert "ReplayError" in refusal(s.evaluate("r", 1, arrays=crafted))
    assert "was not trained" in refusal(s.evaluate("r", 2))  # a round never trained
    assert "was not trained" in refusal(s.evaluate("other-run", 1))
    assert ledger(s.site) == before  # no charge for any of them
    assert len(events(s.site, "round.evaluated")) == 1
    assert refusals(s).count("ReplayError") == 5 and refusals(s).count("ContractError") == 2
    assert_within_contract(s, all_evaluated=True)


def test_a_folded_evaluation_is_the_same_one_evaluation(hostile):
    s = hostile()
    s.stats("r")
    s.train("r", 1)
    s.evaluate("r", 1)  # round 1's evaluation, spent
    r2 = s.train("r", 2, **{"evaluate-round": 1})  # asks for it again, folded
    assert not r2.has_error() and "eval-mse" not in r2.content["metrics"]
    r3 = s.train("r", 3, **{"evaluate-round": 2})  # round 2's, not yet spent: answered
    assert "eval-mse" in r3.content["metrics"]
    r4 = s.train("r", 4, **{"evaluate-round": 2})  # not the round before: ignored
    assert "eval-mse" not in r4.content["metrics"]
    assert len(events(s.site, "round.evaluated")) == 2
    assert_within_contract(s, all_evaluated=False)


# ------------------------------------------------------------------ replay, revocation


def test_replays_and_anything_after_revocation_are_refused(hostile):
    """Attack 3: a (run, round) charged once was executed again, even after revocation."""
    s = hostile()
    s.stats("r")
    s.train("r", 1)
    s.evaluate("r", 1)
    before = ledger(s.site)
    for _ in range(5):
        assert "ReplayError" in refusal(s.train("r", 1))
    assert ledger(s.site) == before
    revoke(s.site, s.contracts[0])
    n_events = len(events(s.site))
    assert "revoked" in refusal(s.train("r", 2))
    assert "revoked" in refusal(s.train("r", 1))
    assert "revoked" in refusal(s.evaluate("r", 2))
    assert "revoked" in refusal(s.stats("r"))  # not even the released statistics again
    assert "revoked" in refusal(s.stats("new-run"))
    assert ledger(s.site) == before
    after = events(s.site)[n_events:]
    assert {e.kind for e in after} == {"access.refused"}
    assert len(events(s.site, "round.finished")) == 2  # statistics and round 1, once each
    assert_within_contract(s, all_evaluated=True)


# ------------------------------------------------------------------ the plan is the site's


def test_the_server_cannot_undercharge_by_choosing_the_plan(hostile):
    """Attack 4: round 10 of a one-round plan got one-round noise, charged as a 10th round.
    Now the noise is the contract's plan whatever num-rounds says, the charges are the
    filter's, and fresh run ids do not reset anything."""
    s = hostile(epsilon=8.0, rounds=10)
    s.stats("r0", **{"num-rounds": 1})
    noise = set()
    for k in range(12):
        reply = s.train(f"run-{k}", 10, **{"num-rounds": 1})
        if not reply.has_error():
            noise.add(float(reply.content["metrics"]["noise-multiplier"]))
            s.evaluate(f"run-{k}", 10, **{"num-rounds": 1})
    assert len(noise) == 1  # one mechanism, the contract's
    rounds = [r for r in ledger(s.site) if r[1] >= 1]
    assert len(rounds) == 10  # the contract's rounds, across all runs
    assert refusals(s).count("ContractError") == 2  # the 11th and 12th: rounds used up
    assert_within_contract(s, all_evaluated=True)
    assert spent(s.site) == pytest.approx(epsilon_of(s), rel=0.01)  # all of it, not more


BAD_CONFIGS = [
    ("more local epochs", {"local-epochs": 50}, "MechanismError"),
    ("fewer local epochs", {"local-epochs": 0.5}, "MechanismError"),
    ("bigger clip", {"clip-norm": 100.0}, "MechanismError"),
    ("smaller clip", {"clip-norm": 0.01}, "MechanismError"),
    ("rounds past the contract", {"num-rounds": 1000}, "MechanismError"),
    ("no rounds", {"num-rounds": 0}, "MechanismError"),
    ("rounds as text", {"num-rounds": "4"}, "MechanismError"),
    ("absurd learning rate", {"lr": 1e9}, "MessageRefusedError"),
    ("negative learning rate", {"lr": -1.0}, "MessageRefusedError"),
    ("NaN learning rate", {"lr": float("nan")}, "MessageRefusedError"),
    ("round as text", {"server-round": "1"}, "MessageRefusedError"),
    ("round zero", {"server-round": 0}, "MessageRefusedError"),
    ("round past the contract", {"server-round": 5}, "ContractError"),
    ("no run id", {"run-id": ""}, "MessageRefusedError"),
    ("a huge run id", {"run-id": "r" * 100_000}, "MessageRefusedError"),
    ("another template", {"template": "bc-chunk"}, "MessageRefusedError"),
    ("an unknown template", {"template": "leak-all"}, "MessageRefusedError"),
    ("a contract of no site", {"contracts": "nope"}, "MessageRefusedError"),
]


@pytest.mark.parametrize(("name", "over", "error"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_a_mechanism_or_message_not_the_sites_is_refused_logged_uncharged(
    hostile, name, over, error
):
    s = hostile()
    s.stats("r")
    before = ledger(s.site)
    assert error in refusal(s.send("train", s.config("r", 1) | over, model()))
    assert ledger(s.site) == before
    assert refusals(s)[-1] == error
    assert_within_contract(s, all_evaluated=False)


def test_a_message_without_config_or_arrays_is_refused(hostile):
    s = hostile()
    s.stats("r")
    assert "without config" in refusal(s.send("train", None, model()))
    assert "MessageRefusedError" in refusal(s.send("train", s.config("r", 1), None))
    assert [r[1] for r in ledger(s.site)] == [0]


def _crafted(kind: str) -> ArrayRecord:
    state = {k: v.clone() for k, v in model().to_torch_state_dict().items()}
    if kind == "missing key":
        del state["net.4.bias"]
    elif kind == "extra tensor":
        state["exfil"] = torch.zeros(1000)
    elif kind == "wrong shape":
        state["net.0.weight"] = torch.zeros(256, 27)
    elif kind == "float64":
        state["net.0.weight"] = state["net.0.weight"].double()
    elif kind == "NaN weight":
        state["net.2.weight"][0, 0] = float("nan")
    elif kind == "inf weight":
        state["net.2.bias"][3] = float("inf")
    if kind == "short packed vector":
        return ArrayRecord({packing.PACKED: Array(np.zeros(100, dtype=np.float32))})
    return ArrayRecord(state)


ARRAYS = [
    "missing key",
    "extra tensor",
    "wrong shape",
    "float64",
    "NaN weight",
    "inf weight",
    "short packed vector",
]


@pytest.mark.parametrize("kind", ARRAYS)
def test_arrays_that_are_not_the_templates_finite_weights_are_refused(hostile, kind):
    s = hostile()
    s.stats("r")
    assert "is not a bc-mlp model" in refusal(s.train("r", 1, arrays=_crafted(kind))) or (
        "are not a bc-mlp model" in s.refused[-1].error.reason
    )
    assert [r[1] for r in ledger(s.site)] == [0]
    assert refusals(s)[-1] == "MessageRefusedError"


def test_the_servers_buffers_are_never_used_and_overflow_never_leaks_nan(hostile, monkeypatch):
    """Normalisation is the site's own: crafted buffers change no bit of the update (the
    noise is seeded at the site for the comparison); weights that overflow for some
    frames make those frames contribute nothing instead of a NaN update."""
    monkeypatch.setenv("DATASPACE_NOISE_SEED", "buffers")
    a, b = hostile(), hostile()  # the same data: the same dataset id, the same noise labels
    for s in (a, b):
        s.stats("r")
    honest = a.train("r", 1)
    state = {k: v.clone() for k, v in model().to_torch_state_dict().items()}
    state["state_std"][:] = 1e-30  # would blow one coordinate up into a gate
    state["state_mean"][:] = 1e9
    state["action_std"][:] = 1e-30
    crafted = b.train("r", 1, arrays=ArrayRecord(state))
    assert np.array_equal(weights(honest), weights(crafted))
    # the reply's buffers are the server's own, echoed: nothing of the site's enters them
    assert np.array_equal(crafted.content["arrays"]["state_std"].numpy(), state["state_std"])
    monkeypatch.delenv("DATASPACE_NOISE_SEED")
    huge = {k: v.clone() for k, v in model().to_torch_state_dict().items()}
    for k in ("net.0.weight", "net.2.weight"):
        huge[k] = huge[k] * 1e18  # finite, but the forward pass overflows float32
    reply = a.train("r", 2, arrays=ArrayRecord(huge))
    assert not reply.has_error()
    out = reply.content["arrays"]
    assert all(np.isfinite(out[k].numpy()).all() for k in out)
    assert math.isfinite(float(reply.content["metrics"]["train-loss"]))


def _pooled(**change: list[float]) -> dict[str, list[float]]:
    """Config entries of pooled statistics (well formed for the sample's dimensions, as
    an honest server sends them after round 0), with ``change`` applied."""
    buffers = model().to_torch_state_dict()
    s_dim, a_dim = len(buffers["state_mean"]), len(buffers["action_mean"])
    lists = {
        "state_mean": [0.1] * s_dim,
        "state_std": [0.5] * s_dim,
        "action_mean": [0.0] * a_dim,
        "action_std": [0.3] * a_dim,
    } | change
    return {"stats": "dp"} | {f"stats-{k.replace('_', '-')}": v for k, v in lists.items()}


def test_pooled_statistics_are_checked_need_a_release_first_and_leak_nothing(hostile):
    """A DP-stats run's pooled statistics come from the server: before this site released
    its own they are refused (the plan charges the statistics with round 1), malformed
    ones are refused and logged with nothing charged, and a crafted gate (a scale of
    1e-30 on one coordinate, a mean of 1e9) still releases a finite update within the
    contract (normalisation comes before the per-unit clipping)."""
    s = hostile(epsilon=3.0)
    s.stats("p")
    good = _pooled()
    fresh = hostile(epsilon=3.0)
    assert "query.stats" in refusal(fresh.train("p", 1, **good))
    assert ledger(fresh.site) == [] and refusals(fresh) == ["MessageRefusedError"]
    before = ledger(s.site)
    width = len(good["stats-action-std"])
    for bad in ({"stats-action-std": [0.0] * width}, {"stats-state-mean": [math.nan] * 3}):
        assert "PublicStatsError" in refusal(s.train("p", 1, **{**good, **bad}))
    assert ledger(s.site) == before
    assert refusals(s)[-2:] == ["RefusedPublicStatsError"] * 2
    state_std = list(good["stats-state-std"])
    state_std[0] = 1e-30
    gate = {**good, "stats-state-std": state_std, "stats-state-mean": [1e9] * len(state_std)}
    reply = s.train("p", 1, **gate)
    assert not reply.has_error()
    assert reply.content["info"]["normalisation"] == "pooled"
    assert np.isfinite(weights(reply)).all()
    assert math.isfinite(float(reply.content["metrics"]["train-loss"]))
    assert_within_contract(s, all_evaluated=False)


@pytest.mark.parametrize(
    "mtype", ["query.frames", "query.sql", "train.raw", "reconnect", "evaluate.all", "query"]
)
def test_unknown_message_types_get_nothing(hostile, mtype):
    s = hostile()
    reply = s.send(mtype, s.config("r", 1), model())
    assert reply.has_error()
    assert ledger(s.site) == [] and s.left == []


def test_out_of_order_and_repeated_rounds(hostile):
    s = hostile(rounds=4)
    s.stats("r")
    for rnd in (3, 1, 4, 2):
        assert not s.train("r", rnd).has_error()
        assert not s.evaluate("r", rnd).has_error()
    for rnd in (1, 3):
        assert "ReplayError" in refusal(s.train("r", rnd))
    assert "used all its 4 rounds" in refusal(s.train("r2", 1))
    assert_within_contract(s, all_evaluated=True)


def test_two_runs_at_once_on_one_contract_cannot_overspend(hostile):
    """Two concurrent runs (threads, each its own node context) race on one contract."""
    s = hostile(epsilon=2.0, rounds=10)
    s.stats("a")
    other = HostileServer(s.site, s.contracts, node_id=2)

    def run(server: HostileServer, run_id: str) -> int:
        return sum(not server.train(run_id, r).has_error() for r in range(1, 11))

    with ThreadPoolExecutor(2) as pool:
        done = sum(pool.map(run, (s, other), ("a", "b")))
    assert 1 <= done <= 10
    assert spent(s.site) <= 2.0 * (1 + 1e-9)
    assert spent(s.site) == pytest.approx(charged_in_log(s), rel=1e-6)
    s.left += other.left
    assert s.epsilon_of_what_left(delta_of(s)) <= 2.0


def test_a_random_hostile_sequence_stays_within_the_contract(hostile):
    """Any order, any number, any kind: 80 messages drawn at random (fixed test seed)."""
    rng = np.random.default_rng(20261203)
    s = hostile(epsilon=4.0, rounds=6)
    runs = ["a", "b", "c"]
    for _ in range(80):
        kind = rng.choice(["query.stats", "train", "evaluate", "train", "evaluate"])
        run, rnd = str(rng.choice(runs)), int(rng.integers(0, 8))
        over = {"evaluate-round": int(rng.integers(0, 8))} if rng.random() < 0.3 else {}
        if kind == "query.stats":
            s.stats(run)
        else:
            s.send(str(kind), s.config(run, rnd, **over), model(seed=int(rng.integers(9))))
    assert s.left  # something was answered
    assert_within_contract(s, all_evaluated=False)
    # every refusal is in the log, and one round.finished per charged release
    finished = [(e.fields["run_id"], e.fields["round"]) for e in events(s.site, "round.finished")]
    assert len(finished) == len(set(finished)) == len(ledger(s.site))
    assert len(events(s.site, "access.refused")) >= len(s.refused) - 0  # logged, each
