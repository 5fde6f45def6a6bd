"""The training recipe (issue 17): DP-Adam, local steps, a cosine schedule, and its privacy.

The recipe changes how noisy gradients become weights (post-processing) and how many
DP steps a round takes (the accountant's business): the tests hold the steps actually
taken, the site's ledger and Opacus's own accountant to one another, and send the
real ClientApp recipes it must refuse.
"""

from __future__ import annotations

import itertools
import math
import tomllib

import pytest
import torch
from opacus.accountants import RDPAccountant

from dataspace.audit.trust import TrustedKeys
from dataspace.audit.verify import verify_source
from dataspace.federated import dp
from dataspace.federated.deploy import app_pyproject
from dataspace.federated.noise import NoiseSource
from dataspace.federated.spec import RECIPE_DEFAULTS, RunSpec
from dataspace.federated.templates import get_template
from tests.hostile import harness


def _data(n=1500, s=8, a=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, s, generator=g)
    return x, torch.tanh(2 * x[:, :a]) + 0.1 * torch.randn(n, a, generator=g)


def _train(mode: str, recipe: dp.Recipe, steps: int = 4, sigma: float = 0.0):
    x, y = _data()
    net = get_template("bc-mlp").build(8, 4, seed=1).net
    plan = dp.make_plan(8.0, 1e-5, 2, x.shape[0], dp.TrainingSettings(batch_size=300))
    res = dp.train_dp(net, x, y, plan, lr=recipe.lr, rng=NoiseSource.seeded(3), mode=mode,
                      noise_multiplier=sigma, steps=steps, recipe=recipe)  # fmt: skip
    return torch.cat([p.detach().flatten() for p in net.parameters()]), res


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_dp_adam_with_bookkeeping_clipping_is_opacus_dpoptimizer_around_adam(mode):
    """Same Poisson batches, no noise: our DP-Adam steps are Opacus's DPOptimizer(Adam)."""
    recipe = dp.Recipe("adam", 3e-3, "cosine", 0.25, total_steps=8, offset=0)
    ours, res = _train("bk", recipe)
    theirs, _ = _train(mode, recipe)
    assert res.steps == 4
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    sgd, _ = _train("bk", dp.Recipe("sgd", 3e-3))
    assert not torch.allclose(ours, sgd, atol=1e-4)  # Adam is not SGD


def test_cosine_schedule_warms_up_then_decays_across_the_runs_rounds():
    r1 = dp.Recipe("adam", 1e-3, "cosine", 0.1, total_steps=200, offset=0)
    r2 = dp.Recipe("adam", 1e-3, "cosine", 0.1, total_steps=200, offset=100)
    lrs = [r1.lr_at(i) for i in range(100)] + [r2.lr_at(i) for i in range(100)]
    assert lrs[0] == pytest.approx(5e-5) and lrs[19] == pytest.approx(1e-3)  # warm-up: 20 steps
    assert all(a <= b for a, b in itertools.pairwise(lrs[:20]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[19:]))  # round 2 goes on
    assert lrs[-1] == pytest.approx(1e-3 * dp.Recipe.FLOOR, rel=0.01)
    assert dp.Recipe("sgd", 0.5).lr_at(1234) == 0.5  # constant


def test_local_steps_are_what_the_accountant_counts_and_meet_the_contract():
    s = dp.TrainingSettings(local_steps=37, batch_size=256)
    plan = dp.make_plan(8.0, 1e-5, 5, 4000, s)
    assert plan.steps_per_round == 37 and plan.sample_rate == pytest.approx(1 / 16)
    assert dp.TrainingSettings().local_steps == dp.LOCAL_STEPS > 0  # the default is steps
    legacy = dp.make_plan(8.0, 1e-5, 5, 4000, dp.TrainingSettings(local_steps=0, max_epochs=2))
    assert legacy.steps_per_round == 32  # 16 batches, 2 epochs
    acc = RDPAccountant()
    acc.history = plan.history(5)
    opacus = acc.get_epsilon(1e-5, alphas=list(dp.ALPHAS))
    assert math.isclose(opacus, plan.epsilon_after(5), rel_tol=1e-9)
    assert 8.0 * 0.99 <= opacus <= 8.0
    with pytest.raises(dp.PrivacyPlanError):
        dp.TrainingSettings(local_steps=-1)


def test_a_run_of_many_rounds_takes_at_most_run_steps_and_its_noise_does_not_grow():
    """A contract of many short rounds (what non-IID sites need) is capped at
    ``run_steps`` in all, so its noise is that of a 20-round run, not five times it;
    the accountant counts the capped steps and the contract is still met."""
    s = dp.TrainingSettings()  # local_steps 100, run_steps 2000
    ten, hundred = dp.make_plan(8.0, 1e-5, 10, 3100, s), dp.make_plan(8.0, 1e-5, 100, 3100, s)
    assert ten.steps_per_round == dp.LOCAL_STEPS  # short runs keep local_steps
    assert hundred.steps_per_round == math.ceil(dp.RUN_STEPS / 100) == 20
    uncapped = dp.make_plan(8.0, 1e-5, 100, 3100, dp.TrainingSettings(run_steps=0))
    assert uncapped.steps_per_round == 100
    assert hundred.noise_multiplier < 0.6 * uncapped.noise_multiplier  # 2.41 against 5.14
    acc = RDPAccountant()
    acc.history = hundred.history(100)
    assert acc.get_epsilon(1e-5, alphas=list(dp.ALPHAS)) <= 8.0
    assert dp.make_plan(8.0, 1e-5, 7, 3100, dp.TrainingSettings(run_steps=30)).steps_per_round == 5
    with pytest.raises(dp.PrivacyPlanError):
        dp.TrainingSettings(run_steps=-1)


def test_spec_sends_the_recipe_and_reads_it_back():
    spec = RunSpec(contracts=["c"], out_dir="o").completed(1, False, False)
    assert (spec.optimizer, spec.lr, spec.lr_schedule) == ("adam", dp.DEFAULT_LR["adam"], "cosine")
    cfg = spec.run_config()
    # the recipe is always named, and every key is one the deployment app declares
    # (Flower refuses a run config with an undeclared key)
    assert set(RECIPE_DEFAULTS) <= set(cfg)
    assert set(cfg) <= set(tomllib.loads(app_pyproject())["tool"]["flwr"]["app"]["config"])
    back = RunSpec.from_config(cfg)
    assert (back.optimizer, back.lr, back.lr_schedule, back.warmup) == (
        "adam", spec.lr, "cosine", RECIPE_DEFAULTS["warmup"],
    )  # fmt: skip
    sgd = RunSpec(contracts=["c"], out_dir="o", optimizer="sgd", lr_schedule="constant", warmup=0)
    back = RunSpec.from_config(sgd.completed(1, False, False).run_config())
    assert (back.optimizer, back.lr, back.lr_schedule, back.warmup) == ("sgd", 0.5, "constant", 0)
    msg = dict(spec.config(1))
    assert (msg["optimizer"], msg["lr-schedule"], msg["warmup"]) == ("adam", "cosine", 0.05)
    with pytest.raises(dp.RecipeError):
        RunSpec(contracts=["c"], out_dir="o", optimizer="lbfgs")


RECIPE = {"optimizer": "adam", "lr": 1e-3, "lr-schedule": "cosine", "warmup": 0.05}


@pytest.mark.slow
def test_the_recipe_at_a_real_site_charges_what_opacus_counts_and_stops_at_the_contract(tmp_path):
    """Through the connector's real ClientApp: each round takes the site's local steps
    (the reply's ``steps`` is what the site logged and charged), the ledger's spent equals
    Opacus's RDP accountant over every release that left, within the contract's epsilon;
    once spent, no round of any run trains again."""
    fed = harness.federation(tmp_path, epsilon=8.0, rounds=3)
    site = fed.sites[0]
    server = harness.HostileServer(site, fed.contract_ids)
    assert not server.stats("r1", **{**RECIPE, "num-rounds": 3}).has_error()
    arrays = harness.model()
    for rnd in (1, 2, 3):  # each round's one evaluation folded into the next, as the server does
        cfg = {**RECIPE, "num-rounds": 3, "evaluate-round": rnd - 1 or None}
        reply = server.train("r1", rnd, arrays, **cfg)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        assert int(reply.content["metrics"]["steps"]) == dp.LOCAL_STEPS
        arrays = reply.content["arrays"]
    assert not server.evaluate("r1", 3, arrays, **{**RECIPE, "num-rounds": 3}).has_error()
    spent = harness.spent(site)
    assert spent == pytest.approx(server.epsilon_of_what_left(1e-5), rel=1e-9)
    assert 8.0 * 0.99 <= spent <= 8.0
    # the contract is spent: another run (or a replay) trains nothing and is charged nothing
    for run, rnd in (("r2", 1), ("r1", 3)):
        assert server.train(run, rnd, arrays, **{**RECIPE, "num-rounds": 3}).has_error()
    assert harness.spent(site) == spent
    # an auditor recomputes every charge from the mechanism the site logged (rule
    # round-mechanism) and finds the recipe's rounds in order
    report = verify_source(site.root, TrustedKeys(), allow_unanchored=True)
    rules = [v.rule for v in report.violations]
    assert not [r for r in rules if r.startswith("round")], rules
    assert report.round_count >= 3


@pytest.mark.parametrize(
    "over",
    [
        {"optimizer": "lbfgs"},
        {"optimizer": ["adam"]},
        {"lr-schedule": "exponential"},
        {"warmup": 1.5},
        {"warmup": float("nan")},
        {"warmup": "0.1"},
        {"lr": 1e9},
    ],
)
def test_a_recipe_the_site_does_not_know_is_refused_and_charged_nothing(tmp_path, over):
    fed = harness.federation(tmp_path, epsilon=8.0, rounds=3)
    server = harness.HostileServer(fed.sites[0], fed.contract_ids)
    reply = server.stats("r1", **{**RECIPE, **over, "num-rounds": 3})
    assert reply.has_error()
    assert harness.ledger(fed.sites[0]) == []
    refused = harness.events(fed.sites[0], "access.refused")
    assert refused and refused[-1].fields["refusal"] in ("RecipeError", "MessageRefusedError")
