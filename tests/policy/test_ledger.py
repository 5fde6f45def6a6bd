"""The budget ledger: charge before work, refusals logged, idempotent, crash-safe."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from dataspace import accountant
from dataspace.errors import RefusedError
from dataspace.policy.contracts import Contract, OfferRequest, approve, negotiate, revoke
from dataspace.policy.ledger import (
    BudgetExceededError,
    ContractError,
    ReplayError,
    budget_report,
    charge_round,
    check_live,
    claim_evaluation,
    record_round_finished,
    released_stats,
)
from dataspace.policy.terms import ContractTerms
from tests.conftest import REPO
from tests.policy.conftest import NOW, World

T1 = NOW + timedelta(minutes=5)


def contract(w: World, now=NOW, **kw) -> Contract:
    """Alice's contract on the world's dataset; ``kw`` changes its terms."""
    terms = ContractTerms(
        purpose="research", epsilon=3.0, rounds=3, until=NOW + timedelta(days=7), template="mlp"
    )
    request = OfferRequest(dataset_id=w.dataset_id, consumer=w.alice, terms=replace(terms, **kw))
    return negotiate(w.site, request, w.key(), now=now)


def ledger_rows(w: World) -> list[tuple]:
    with w.site.db() as con:
        return con.execute(
            "SELECT run_id, round_no, contract_id, epsilon FROM ledger ORDER BY run_id, round_no"
        ).fetchall()


#: one Gaussian release of noise multiplier 4 (no sampling): what the tests charge
GAUSS = [(4.0, 1.0, 1)]
#: a costlier one for the race (about 5 fit in a contract of epsilon 6)
RACE = [(2.0, 1.0, 1)]


def eps_of(releases, delta: float) -> float:
    """Opacus's RDP accountant, independent of ours (dataspace.accountant)."""
    acc = RDPAccountant()
    acc.history = [(float(n), float(q), int(k)) for n, q, k in releases]
    return acc.get_epsilon(delta, alphas=list(accountant.ORDERS))


def test_charge_is_written_and_logged_before_returning(world: World) -> None:
    world.publish()
    c = contract(world)
    assert ledger_rows(world) == []
    charged = charge_round(
        world.site,
        c.terms.contract_id,
        "run-1",
        1,
        GAUSS,
        purpose="research",
        template="mlp",
        mechanism={"noise_multiplier": 2.0},
        now=T1,
    )
    want = eps_of(GAUSS, c.terms.delta)
    assert charged.epsilon == pytest.approx(want, rel=1e-9)
    assert charged.contract_epsilon == pytest.approx(want, rel=1e-9)
    # a fresh connection (what another process would see) already has the charge
    ((run, rnd, cid, eps),) = ledger_rows(world)
    assert (run, rnd, cid) == ("run-1", 1, c.terms.contract_id) and eps == pytest.approx(want)
    (ev,) = world.events("round.started")
    assert ev.contract_id == c.terms.contract_id and ev.dataset_id == world.dataset_id
    assert ev.fingerprint == world.fingerprint and ev.purpose == "research"
    f = ev.fields
    assert (f["run_id"], f["round"], f["release"]) == ("run-1", 1, "round")
    assert f["releases"] == [[4.0, 1.0, 1]] and f["mechanism"] == {"noise_multiplier": 2.0}
    assert f["epsilon"] == pytest.approx(want) and f["contract_epsilon"] == pytest.approx(want)
    (row,) = budget_report(world.site, now=T1)
    assert (row.budget, row.spent) == (8.0, pytest.approx(want))
    assert row.reserved == pytest.approx(3.0 - want) and row.remaining == pytest.approx(5.0)
    assert row.rounds == 1 and row.live_contracts == 1


def test_a_round_executes_at_most_once(world: World) -> None:
    """A replayed (run, round) is refused and logged, never charged or answered again."""
    world.publish()
    c = contract(world)
    charge_round(world.site, c.terms.contract_id, "run-1", 1, GAUSS, now=T1)
    for _ in range(3):  # a replayed message
        with pytest.raises(ReplayError, match="at most once"):
            charge_round(world.site, c.terms.contract_id, "run-1", 1, GAUSS, now=T1)
    assert len(ledger_rows(world)) == 1
    assert len(world.events("round.started")) == 1
    refused = world.events("access.refused")
    assert [e.fields["refusal"] for e in refused] == ["ReplayError"] * 3
    charge_round(world.site, c.terms.contract_id, "run-2", 1, GAUSS, now=T1)  # another run
    assert len(ledger_rows(world)) == 2


REFUSALS = [
    # (what to do to the world first, charge arguments, error, words)
    ("share", {"releases": [(0.3, 1.0, 1)]}, BudgetExceededError, "it allows 3 .*3 left"),
    ("expired", {"now": NOW + timedelta(days=8)}, ContractError, "is expired, not agreed"),
    ("not yet valid", {"now": NOW - timedelta(hours=1)}, ContractError, "not yet valid"),
    ("purpose", {"purpose": "marketing"}, ContractError, "for purpose 'research', not 'marketing'"),
    ("template", {"template": "cnn"}, ContractError, "model template 'mlp', not 'cnn'"),
    ("round zero", {"round_no": 0}, ContractError, "outside contract .* rounds 1..3"),
    ("round too high", {"round_no": 4}, ContractError, "outside contract .* rounds 1..3"),
    ("stats not round 0", {"release": "stats"}, ContractError, "released as round 0"),
    ("no noise", {"releases": [(0.0, 1.0, 1)]}, ContractError, "need 0 < noise"),
    ("rate above 1", {"releases": [(1.0, 1.5, 1)]}, ContractError, "sample_rate <= 1"),
    ("unknown contract", {"contract_id": "nope"}, ContractError, "does not exist"),
]


@pytest.mark.parametrize(("name", "kw", "error", "words"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_rounds_are_logged_and_not_charged(world: World, name, kw, error, words) -> None:
    world.publish()
    c = contract(world)
    args = {
        "contract_id": c.terms.contract_id,
        "run_id": "run-1",
        "round_no": 1,
        "releases": GAUSS,
        "now": T1,
    }
    args.update(kw)
    with pytest.raises(error, match=words) as e:
        charge_round(world.site, **args)
    assert isinstance(e.value, RefusedError)
    assert ledger_rows(world) == []
    if name in ("no noise", "rate above 1"):
        return  # a malformed mechanism is the caller's bug, refused before the contract
    (ev,) = world.events("access.refused")
    assert ev.fields["reason"] == str(e.value)
    assert ev.fields["run_id"] == "run-1" and ev.fields["round"] == args["round_no"]
    assert world.events("round.started") == []


def test_the_filter_admits_what_rdp_composition_allows_across_runs(world: World) -> None:
    """A contract is a privacy filter: releases of any runs are admitted while the RDP
    composition of all of them stays within its (epsilon, delta); the crossing one is
    refused, logged, not charged; the charges add up to the accountant's epsilon.
    The count is Opacus's (an independent implementation), not ours."""
    world.publish(max_rounds=10)
    c = contract(world, epsilon=3.0, rounds=10)
    fits = max(k for k in range(1, 11) if eps_of(GAUSS * k, c.terms.delta) <= 3.0)
    assert 1 < fits < 10  # the test means something: some fit, not all
    admitted = 0
    for k in range(10):  # alternate runs: the filter is the contract's, not a run's
        try:
            charge_round(world.site, c.terms.contract_id, f"run-{k % 2}", k // 2 + 1, GAUSS, now=T1)
            admitted += 1
        except BudgetExceededError:
            break
    assert admitted == fits
    spent = sum(r[3] for r in ledger_rows(world))
    assert spent == pytest.approx(eps_of(GAUSS * fits, c.terms.delta), rel=1e-6)
    assert spent <= 3.0
    (ev,) = world.events("access.refused")
    assert ev.fields["refusal"] == "BudgetExceededError"
    (row,) = budget_report(world.site, now=T1)
    assert row.spent == pytest.approx(spent)


def test_statistics_are_round_zero_and_no_round_of_the_contract(world: World) -> None:
    world.publish()
    c = contract(world, rounds=1)
    charge_round(world.site, c.terms.contract_id, "run", 0, GAUSS, release="stats", now=T1)
    assert released_stats(world.site, c.terms.contract_id) is None  # charged, not yet released
    record_round_finished(
        world.site, c.terms.contract_id, "run", 0, 0.1, "ab" * 32, payload={"count": 3.0}, now=T1
    )
    assert released_stats(world.site, c.terms.contract_id) == {"count": 3.0}
    charge_round(world.site, c.terms.contract_id, "run", 1, GAUSS, now=T1)  # its one round
    (row,) = budget_report(world.site, now=T1)
    assert row.rounds == 1


def test_a_dataset_budget_keeps_its_privacy_unit(world: World) -> None:
    """A frame-level epsilon does not bound one episode: on a budget first charged per
    episode, a frame round is refused, logged and not charged; an episode-level epsilon
    bounds one frame too, so episode rounds may charge a budget counted per frame."""
    world.publish()
    c = contract(world, epsilon=3.0)
    charge_round(world.site, c.terms.contract_id, "run-1", 1, GAUSS, privacy_unit="episode", now=T1)
    (started,) = world.events("round.started")
    assert started.fields["privacy_unit"] == "episode"
    with pytest.raises(ContractError, match=r"per frame, but dataset .* counted per episode"):
        charge_round(world.site, c.terms.contract_id, "run-2", 1, GAUSS, now=T1)
    assert len(ledger_rows(world)) == 1
    (ev,) = world.events("access.refused")
    assert ev.fields["privacy_unit"] == "frame" and ev.fields["run_id"] == "run-2"
    with pytest.raises(ContractError, match="privacy unit must be"):
        charge_round(
            world.site, c.terms.contract_id, "run-3", 1, GAUSS, privacy_unit="user", now=T1
        )
    assert len(ledger_rows(world)) == 1


def test_episode_rounds_may_charge_a_frame_budget(world: World) -> None:
    world.publish()
    c = contract(world, epsilon=3.0)
    charge_round(world.site, c.terms.contract_id, "run-1", 1, GAUSS, now=T1)  # per frame (default)
    charge_round(world.site, c.terms.contract_id, "run-2", 1, GAUSS, privacy_unit="episode", now=T1)
    charge_round(world.site, c.terms.contract_id, "run-3", 1, GAUSS, now=T1)  # still a frame budget
    assert len(ledger_rows(world)) == 3
    units = [e.fields["privacy_unit"] for e in world.events("round.started")]
    assert units == ["frame", "episode", "frame"]


def test_pending_and_revoked_contracts_release_nothing(world: World) -> None:
    world.publish(manual=True)
    c = contract(world)
    with pytest.raises(ContractError, match="is pending, not agreed"):
        charge_round(world.site, c.terms.contract_id, "r", 1, GAUSS, now=T1)
    approve(world.site, c.terms.contract_id, now=NOW)
    charged = charge_round(world.site, c.terms.contract_id, "r", 1, GAUSS, now=T1)
    record_round_finished(
        world.site, c.terms.contract_id, "r", 1, charged.epsilon, "ab" * 32, now=T1
    )
    revoke(world.site, c.terms.contract_id, now=T1)
    (revocation,) = [e for e in world.events("access.refused") if e.fields.get("contract_state")]
    assert revocation.fields["contract_state"] == "revoked"
    with pytest.raises(ContractError, match="is revoked, not agreed"):
        charge_round(world.site, c.terms.contract_id, "r", 2, GAUSS, now=T1)
    # the round's evaluation and anything re-sent re-check the contract: nothing leaves
    with pytest.raises(ContractError, match="is revoked"):
        claim_evaluation(world.site, c.terms.contract_id, "r", 1, "cd" * 32, now=T1)
    with pytest.raises(ContractError, match="is revoked"):
        check_live(world.site, c.terms.contract_id, now=T1)
    assert world.events("round.evaluated") == []
    (row,) = budget_report(world.site, now=T1)
    assert (row.spent, row.reserved) == (pytest.approx(charged.epsilon), 0.0)


def test_a_round_is_evaluated_once_and_only_after_it_finished(world: World) -> None:
    world.publish()
    c = contract(world)
    charged = charge_round(world.site, c.terms.contract_id, "r", 1, GAUSS, now=T1)
    with pytest.raises(ContractError, match="was not trained"):
        claim_evaluation(world.site, c.terms.contract_id, "r", 1, "cd" * 32, now=T1)
    record_round_finished(
        world.site, c.terms.contract_id, "r", 1, charged.epsilon, "ab" * 32, now=T1
    )
    claim_evaluation(world.site, c.terms.contract_id, "r", 1, "cd" * 32, now=T1)
    with pytest.raises(ReplayError, match="already evaluated"):
        claim_evaluation(world.site, c.terms.contract_id, "r", 1, "ef" * 32, now=T1)
    with pytest.raises(ContractError, match="was not trained"):
        claim_evaluation(world.site, c.terms.contract_id, "r", 2, "cd" * 32, now=T1)
    (ev,) = world.events("round.evaluated")
    assert (ev.fields["run_id"], ev.fields["round"], ev.fields["model_sha256"]) == (
        "r",
        1,
        "cd" * 32,
    )
    assert len(ledger_rows(world)) == 1  # evaluations charge nothing more


def test_a_policy_requiring_secure_aggregation_refuses_plain_rounds(world: World) -> None:
    world.publish(secure_aggregation=True)
    c = contract(world)
    with pytest.raises(ContractError, match="requires secure aggregation"):
        charge_round(world.site, c.terms.contract_id, "r", 1, GAUSS, now=T1)
    assert ledger_rows(world) == []
    charge_round(world.site, c.terms.contract_id, "r", 1, GAUSS, secure_aggregation=True, now=T1)
    assert len(ledger_rows(world)) == 1


def test_rounds_are_counted_across_runs(world: World) -> None:
    world.publish()
    c = contract(world, rounds=2)
    charge_round(world.site, c.terms.contract_id, "a", 1, GAUSS, now=T1)
    charge_round(world.site, c.terms.contract_id, "a", 2, GAUSS, now=T1)
    with pytest.raises(ContractError, match="used all its 2 rounds"):
        charge_round(world.site, c.terms.contract_id, "b", 1, GAUSS, now=T1)


def test_dataset_budget_is_checked_besides_the_contract(world: World) -> None:
    world.publish()
    a = contract(world, epsilon=4.0)
    b = contract(world, epsilon=4.0)
    charge_round(world.site, a.terms.contract_id, "run-a", 1, GAUSS, now=T1)
    # the round reports it spent more than charged (a trainer bug): the ledger counts the larger
    record_round_finished(
        world.site, a.terms.contract_id, "run-a", 1, 6.0, "ab" * 32, now=T1, loss=0.5
    )
    (row,) = budget_report(world.site, now=T1)
    assert row.spent == 6.0
    big = [(1.5, 1.0, 1)]  # alone within b's 4, but more than the dataset's 2 left
    assert 2.0 < eps_of(big, b.terms.delta) < 4.0
    with pytest.raises(BudgetExceededError, match="has 2 of its budget 8 left"):
        charge_round(world.site, b.terms.contract_id, "run-b", 1, big, now=T1)
    charge_round(world.site, b.terms.contract_id, "run-b", 1, GAUSS, now=T1)


def test_narrowed_policy_stops_running_contracts(world: World) -> None:
    world.publish()
    c = contract(world)
    charge_round(world.site, c.terms.contract_id, "run", 1, GAUSS, now=T1)
    world.publish(purposes=["benchmarking"], now=T1)  # research withdrawn
    with pytest.raises(ContractError, match="no longer permits"):
        charge_round(
            world.site, c.terms.contract_id, "run", 2, GAUSS, now=T1 + timedelta(seconds=1)
        )


def test_changed_data_stops_the_contract(world: World) -> None:
    world.publish()
    c = contract(world)
    with world.site.db() as con:
        con.execute(
            "UPDATE datasets SET fingerprint = ? WHERE dataset_id = ?", ["f" * 64, world.dataset_id]
        )
    with pytest.raises(ContractError, match="now has fingerprint"):
        charge_round(world.site, c.terms.contract_id, "run", 1, GAUSS, now=T1)


def test_round_finished_is_logged_once(world: World) -> None:
    world.publish()
    c = contract(world)
    with pytest.raises(ContractError, match="never charged"):
        record_round_finished(world.site, c.terms.contract_id, "run", 1, 0.9, "cd" * 32, now=T1)
    charged = charge_round(world.site, c.terms.contract_id, "run", 1, GAUSS, now=T1)
    eps = charged.epsilon
    record_round_finished(
        world.site, c.terms.contract_id, "run", 1, eps, "cd" * 32, now=T1, loss=0.25
    )
    with pytest.raises(ReplayError, match="already released"):
        record_round_finished(world.site, c.terms.contract_id, "run", 1, eps, "ef" * 32, now=T1)
    (ev,) = world.events("round.finished")
    f = ev.fields
    assert (f["run_id"], f["round"], f["model_sha256"], f["loss"]) == ("run", 1, "cd" * 32, 0.25)
    assert f["epsilon"] == pytest.approx(eps)


_CRASH = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime
    from dataspace.site.folder import Site
    from dataspace.policy.ledger import charge_round
    site = Site.open(sys.argv[1])
    charge_round(
        site, sys.argv[2], "crash-run", 1, [(4.0, 1.0, 1)], now=datetime.fromisoformat(sys.argv[3])
    )
    print("charged", flush=True)
    time.sleep(60)  # "the work": killed here
    """
)


@pytest.mark.slow
def test_round_killed_after_its_charge_stays_charged(world: World, tmp_path: Path) -> None:
    world.publish()
    c = contract(world)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH, str(world.site.root), c.terms.contract_id, T1.isoformat()],
        stdout=subprocess.PIPE,
        cwd=REPO,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "charged"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    want = eps_of(GAUSS, c.terms.delta)
    ((run, rnd, cid, eps),) = ledger_rows(world)
    assert (run, rnd, cid, eps) == ("crash-run", 1, c.terms.contract_id, pytest.approx(want))
    (row,) = budget_report(world.site, now=T1)
    assert row.spent == pytest.approx(want) and row.reserved == pytest.approx(3.0 - want)
    assert [e.fields["run_id"] for e in world.events("round.started")] == ["crash-run"]
    # its process died before releasing anything: the retry runs under the same charge,
    # never charged twice, never logged twice, and never twice at once
    again = charge_round(world.site, c.terms.contract_id, "crash-run", 1, GAUSS, now=T1)
    assert again.epsilon == pytest.approx(want)
    assert len(ledger_rows(world)) == 1 and len(world.events("round.started")) == 1
    with pytest.raises(ReplayError, match="in flight"):  # this process is computing it
        charge_round(world.site, c.terms.contract_id, "crash-run", 1, GAUSS, now=T1)
    with pytest.raises(ReplayError, match="another mechanism"):
        with world.site.db() as con:  # as if its first process had died again
            con.execute("UPDATE ledger SET executor = ?", [f"{socket.gethostname()}:999999999:0"])
        charge_round(world.site, c.terms.contract_id, "crash-run", 1, [(5.0, 1.0, 1)], now=T1)


_RACE = textwrap.dedent(
    """
    import sys
    from datetime import datetime
    from dataspace.site.folder import Site
    from dataspace.policy.ledger import charge_round
    from dataspace.errors import RefusedError
    site = Site.open(sys.argv[1])
    ok = 0
    when = datetime.fromisoformat(sys.argv[4])
    for r in range(1, 6):
        try:
            charge_round(site, sys.argv[2], sys.argv[3], r, [(2.0, 1.0, 1)], now=when)
            ok += 1
        except RefusedError:
            pass
    print(ok)
    """
)


@pytest.mark.slow
def test_concurrent_processes_never_overspend(world: World) -> None:
    world.publish(max_rounds=10)
    c = contract(world, epsilon=6.0, rounds=10)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RACE,
                str(world.site.root),
                c.terms.contract_id,
                run,
                T1.isoformat(),
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
            text=True,
        )
        for run in ("p1", "p2")
    ]
    oks = [int(p.communicate(timeout=120)[0]) for p in procs]
    fits = max(k for k in range(1, 11) if eps_of(RACE * k, c.terms.delta) <= 6.0)
    assert 1 < fits < 10
    assert sum(oks) == fits  # 10 rounds asked, the filter admits exactly what fits
    assert len(ledger_rows(world)) == fits
    spent = budget_report(world.site, now=T1)[0].spent
    assert spent == pytest.approx(eps_of(RACE * fits, c.terms.delta), rel=1e-6) and spent <= 6.0
