"""The empirical privacy audit: bound arithmetic, and a fast audit on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dataspace.assurance.mia import auc, epsilon_lower_bound, one_run_bound
from dataspace.assurance.privacy_audit import AuditConfig, AuditError, audit_site
from dataspace.cli import cli


def test_auc_known_values() -> None:
    member = np.array([1, 1, 0, 0], dtype=bool)
    assert auc(np.array([4.0, 3.0, 2.0, 1.0]), member) == 1.0
    assert auc(np.array([1.0, 2.0, 3.0, 4.0]), member) == 0.0
    assert auc(np.array([1.0, 1.0, 1.0, 1.0]), member) == 0.5


def test_bound_grows_with_correct_guesses_and_is_zero_for_chance() -> None:
    assert epsilon_lower_bound(100, 50, 0.05) == 0.0
    a, b = epsilon_lower_bound(100, 80, 0.05), epsilon_lower_bound(100, 95, 0.05)
    assert 0.0 < a < b
    # all correct over r guesses: P[Bin(r, p) = r] = p^r <= beta  =>  eps = logit(beta^(1/r))
    p = 0.05 ** (1 / 100)
    assert epsilon_lower_bound(100, 100, 0.05) == pytest.approx(np.log(p / (1 - p)), rel=1e-6)


def test_random_scores_give_no_leakage() -> None:
    rng = np.random.default_rng(1)
    member = rng.random(2000) < 0.5
    bound = one_run_bound(rng.normal(size=2000), member, 0.95)
    assert bound.epsilon < 0.3


def test_too_few_canaries_refused(so101_site) -> None:
    site, ds = so101_site
    with pytest.raises(AuditError, match="canaries"):
        audit_site(site, ds, AuditConfig(canaries=3))


@pytest.mark.slow
def test_dp_holds_and_no_dp_leaks_on_real_data(so101_site) -> None:
    """The fast version of bench/privacy_audit.py, through the CLI."""
    site, ds = so101_site
    runner = CliRunner()
    common = ["privacy-audit", str(site.root), ds, "--canaries", "200", "--json"]
    r = runner.invoke(cli, [*common, "--epsilon", "8", "--rounds", "2", "--epochs", "2"])
    assert r.exit_code == 0, r.output
    dp_res = json.loads(r.stdout.strip().splitlines()[-1])
    assert dp_res["dp"] and 7.0 < dp_res["accountant_epsilon"] <= 8.0
    assert dp_res["empirical_epsilon"] < dp_res["accountant_epsilon"]
    args = ["--no-dp", "--max-frames", "128", "--epochs", "15", "--rounds", "4"]
    r = runner.invoke(cli, [*common, *args, "--hidden", "256,256"])
    assert r.exit_code == 0, r.output
    nodp = json.loads(r.stdout.strip().splitlines()[-1])
    assert nodp["accountant_epsilon"] is None
    assert nodp["auc"] >= 0.6 and nodp["empirical_epsilon"] > 0.5
