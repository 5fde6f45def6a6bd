"""The budget ledger: charge before work, refusals logged, idempotent, crash-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from dataspace.errors import RefusedError
from dataspace.policy.contracts import OfferRequest, approve, negotiate, revoke
from dataspace.policy.ledger import (
    BudgetExceededError,
    ContractError,
    budget_report,
    charge_round,
    record_round_finished,
)
from tests.conftest import REPO
from tests.policy.conftest import NOW, World

T1 = NOW + timedelta(minutes=5)


def contract(w: World, now=NOW, **kw):
    args = dict(
        dataset_id=w.dataset_id,
        purpose="research",
        epsilon=3.0,
        rounds=3,
        until=NOW + timedelta(days=7),
        consumer=w.alice,
        template="mlp",
    )
    args.update(kw)
    return negotiate(w.site, OfferRequest(**args), w.key(), now=now)


def ledger_rows(w: World) -> list[tuple]:
    with w.site.db() as con:
        return con.execute(
            "SELECT run_id, round_no, contract_id, epsilon FROM ledger ORDER BY run_id, round_no"
        ).fetchall()


def test_charge_is_written_and_logged_before_returning(world: World) -> None:
    world.publish()
    c = contract(world)
    assert ledger_rows(world) == []
    charge_round(
        world.site, c.contract_id, "run-1", 1, 1.0, purpose="research", template="mlp", now=T1
    )
    # a fresh connection (what another process would see) already has the charge
    assert ledger_rows(world) == [("run-1", 1, c.contract_id, 1.0)]
    (ev,) = world.events("round.started")
    assert ev.contract_id == c.contract_id and ev.dataset_id == world.dataset_id
    assert ev.fingerprint == world.fingerprint and ev.purpose == "research"
    assert (ev.fields["run_id"], ev.fields["round"], ev.fields["epsilon"]) == ("run-1", 1, 1)
    (row,) = budget_report(world.site, now=T1)
    assert (row.budget, row.reserved, row.spent, row.remaining) == (8.0, 2.0, 1.0, 5.0)
    assert row.rounds == 1 and row.live_contracts == 1


def test_same_round_is_charged_once(world: World) -> None:
    world.publish()
    c = contract(world)
    for _ in range(3):  # a retried message
        charge_round(world.site, c.contract_id, "run-1", 1, 1.0, now=T1)
    assert len(ledger_rows(world)) == 1
    assert len(world.events("round.started")) == 1
    with pytest.raises(ContractError, match="already charged epsilon 1"):
        charge_round(world.site, c.contract_id, "run-1", 1, 0.5, now=T1)
    charge_round(
        world.site, c.contract_id, "run-2", 1, 1.0, now=T1
    )  # another run is another charge
    assert len(ledger_rows(world)) == 2


REFUSALS = [
    # (what to do to the world first, charge arguments, error, words)
    ("share", {"epsilon": 3.5}, BudgetExceededError, "contract .* has 3 of its 3 left"),
    ("expired", {"now": NOW + timedelta(days=8)}, ContractError, "is expired, not agreed"),
    ("not yet valid", {"now": NOW - timedelta(hours=1)}, ContractError, "not yet valid"),
    ("purpose", {"purpose": "marketing"}, ContractError, "for purpose 'research', not 'marketing'"),
    ("template", {"template": "cnn"}, ContractError, "model template 'mlp', not 'cnn'"),
    ("round zero", {"round_no": 0}, ContractError, "outside contract .* rounds 1..3"),
    ("round too high", {"round_no": 4}, ContractError, "outside contract .* rounds 1..3"),
    ("epsilon zero", {"epsilon": 0.0}, ContractError, "must be a finite number > 0"),
    ("unknown contract", {"contract_id": "nope"}, ContractError, "does not exist"),
]


@pytest.mark.parametrize(("name", "kw", "error", "words"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_rounds_are_logged_and_not_charged(world: World, name, kw, error, words) -> None:
    world.publish()
    c = contract(world)
    args = {
        "contract_id": c.contract_id,
        "run_id": "run-1",
        "round_no": 1,
        "epsilon": 1.0,
        "now": T1,
    }
    args.update(kw)
    with pytest.raises(error, match=words) as e:
        charge_round(world.site, **args)
    assert isinstance(e.value, RefusedError)
    assert ledger_rows(world) == []
    (ev,) = world.events("access.refused")
    assert ev.fields["reason"] == str(e.value)
    assert ev.fields["run_id"] == "run-1" and ev.fields["round"] == args["round_no"]
    assert world.events("round.started") == []


def test_a_dataset_budget_keeps_its_privacy_unit(world: World) -> None:
    """A frame-level epsilon does not bound one episode: on a budget first charged per
    episode, a frame round is refused, logged and not charged; an episode-level epsilon
    bounds one frame too, so episode rounds may charge a budget counted per frame."""
    world.publish()
    c = contract(world, epsilon=3.0)
    charge_round(world.site, c.contract_id, "run-1", 1, 0.5, privacy_unit="episode", now=T1)
    (started,) = world.events("round.started")
    assert started.fields["privacy_unit"] == "episode"
    with pytest.raises(ContractError, match=r"per frame, but dataset .* counted per episode"):
        charge_round(world.site, c.contract_id, "run-2", 1, 0.5, now=T1)
    assert ledger_rows(world) == [("run-1", 1, c.contract_id, 0.5)]
    (ev,) = world.events("access.refused")
    assert ev.fields["privacy_unit"] == "frame" and ev.fields["run_id"] == "run-2"
    # a retried round in another unit is no replay: refused
    with pytest.raises(ContractError, match=r"already charged epsilon 0\.5 per episode"):
        charge_round(world.site, c.contract_id, "run-1", 1, 0.5, privacy_unit="frame", now=T1)
    with pytest.raises(ContractError, match="privacy unit must be"):
        charge_round(world.site, c.contract_id, "run-3", 1, 0.5, privacy_unit="user", now=T1)
    assert len(ledger_rows(world)) == 1


def test_episode_rounds_may_charge_a_frame_budget(world: World) -> None:
    world.publish()
    c = contract(world, epsilon=3.0)
    charge_round(world.site, c.contract_id, "run-1", 1, 0.5, now=T1)  # per frame (default)
    charge_round(world.site, c.contract_id, "run-2", 1, 0.5, privacy_unit="episode", now=T1)
    charge_round(world.site, c.contract_id, "run-3", 1, 0.5, now=T1)  # still a frame budget
    assert len(ledger_rows(world)) == 3
    units = [e.fields["privacy_unit"] for e in world.events("round.started")]
    assert units == ["frame", "episode", "frame"]


def test_pending_and_revoked_contracts_cannot_charge(world: World) -> None:
    world.publish(manual=True)
    c = contract(world)
    with pytest.raises(ContractError, match="is pending, not agreed"):
        charge_round(world.site, c.contract_id, "r", 1, 1.0, now=T1)
    approve(world.site, c.contract_id, now=NOW)
    charge_round(world.site, c.contract_id, "r", 1, 1.0, now=T1)
    revoke(world.site, c.contract_id, now=T1)
    with pytest.raises(ContractError, match="is revoked, not agreed"):
        charge_round(world.site, c.contract_id, "r", 2, 1.0, now=T1)
    (row,) = budget_report(world.site, now=T1)
    assert (row.spent, row.reserved) == (1.0, 0.0)  # the spent round stays charged


def test_rounds_are_counted_across_runs(world: World) -> None:
    world.publish()
    c = contract(world, rounds=2)
    charge_round(world.site, c.contract_id, "a", 1, 0.5, now=T1)
    charge_round(world.site, c.contract_id, "a", 2, 0.5, now=T1)
    with pytest.raises(ContractError, match="used all its 2 rounds"):
        charge_round(world.site, c.contract_id, "b", 1, 0.5, now=T1)


def test_contract_share_is_exact(world: World) -> None:
    world.publish()
    c = contract(world, epsilon=1.0, rounds=10)
    for r in range(1, 11):
        charge_round(world.site, c.contract_id, "run", r, 0.1, now=T1)  # ten times 0.1 == 1.0
    with pytest.raises(ContractError, match="used all"):
        charge_round(world.site, c.contract_id, "run2", 1, 0.1, now=T1)
    (row,) = budget_report(world.site, now=T1)
    assert row.spent == pytest.approx(1.0) and row.reserved == pytest.approx(0.0, abs=1e-12)


def test_dataset_budget_is_checked_besides_the_share(world: World) -> None:
    world.publish()
    a = contract(world, epsilon=4.0)
    b = contract(world, epsilon=4.0)
    charge_round(world.site, a.contract_id, "run-a", 1, 1.0, now=T1)
    # the round reports it spent more than charged (a trainer bug): the ledger counts the larger
    record_round_finished(world.site, a.contract_id, "run-a", 1, 6.0, "ab" * 32, now=T1, loss=0.5)
    (row,) = budget_report(world.site, now=T1)
    assert row.spent == 6.0
    with pytest.raises(BudgetExceededError, match="has 2 of its budget 8 left"):
        charge_round(world.site, b.contract_id, "run-b", 1, 3.0, now=T1)
    charge_round(world.site, b.contract_id, "run-b", 1, 2.0, now=T1)


def test_narrowed_policy_stops_running_contracts(world: World) -> None:
    world.publish()
    c = contract(world)
    charge_round(world.site, c.contract_id, "run", 1, 1.0, now=T1)
    world.publish(purposes=["benchmarking"], now=T1)  # research withdrawn
    with pytest.raises(ContractError, match="no longer permits"):
        charge_round(world.site, c.contract_id, "run", 2, 1.0, now=T1 + timedelta(seconds=1))


def test_changed_data_stops_the_contract(world: World) -> None:
    world.publish()
    c = contract(world)
    with world.site.db() as con:
        con.execute(
            "UPDATE datasets SET fingerprint = ? WHERE dataset_id = ?", ["f" * 64, world.dataset_id]
        )
    with pytest.raises(ContractError, match="now has fingerprint"):
        charge_round(world.site, c.contract_id, "run", 1, 1.0, now=T1)


def test_round_finished_is_logged(world: World) -> None:
    world.publish()
    c = contract(world)
    with pytest.raises(ContractError, match="never charged"):
        record_round_finished(world.site, c.contract_id, "run", 1, 0.9, "cd" * 32, now=T1)
    charge_round(world.site, c.contract_id, "run", 1, 1.0, now=T1)
    record_round_finished(world.site, c.contract_id, "run", 1, 0.9, "cd" * 32, now=T1, loss=0.25)
    (ev,) = world.events("round.finished")
    f = ev.fields
    assert (f["run_id"], f["round"], f["epsilon"], f["model_sha256"], f["loss"]) == (
        "run",
        1,
        0.9,
        "cd" * 32,
        0.25,
    )
    assert budget_report(world.site, now=T1)[0].spent == 1.0  # charged, not the smaller spent


_CRASH = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime
    from dataspace.connectors.site import Site
    from dataspace.policy.ledger import charge_round
    site = Site.open(sys.argv[1])
    charge_round(site, sys.argv[2], "crash-run", 1, 1.0, now=datetime.fromisoformat(sys.argv[3]))
    print("charged", flush=True)
    time.sleep(60)  # "the work": killed here
    """
)


@pytest.mark.slow
def test_round_killed_after_its_charge_stays_charged(world: World, tmp_path: Path) -> None:
    world.publish()
    c = contract(world)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH, str(world.site.root), c.contract_id, T1.isoformat()],
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
    assert ledger_rows(world) == [("crash-run", 1, c.contract_id, 1.0)]
    (row,) = budget_report(world.site, now=T1)
    assert row.spent == 1.0 and row.reserved == 2.0
    assert [e.fields["run_id"] for e in world.events("round.started")] == ["crash-run"]
    # the retried round is not charged twice
    charge_round(world.site, c.contract_id, "crash-run", 1, 1.0, now=T1)
    assert len(ledger_rows(world)) == 1


_RACE = textwrap.dedent(
    """
    import sys
    from datetime import datetime
    from dataspace.connectors.site import Site
    from dataspace.policy.ledger import charge_round
    from dataspace.errors import RefusedError
    site = Site.open(sys.argv[1])
    ok = 0
    when = datetime.fromisoformat(sys.argv[4])
    for r in range(1, 6):
        try:
            charge_round(site, sys.argv[2], sys.argv[3], r, 1.0, now=when)
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
            [sys.executable, "-c", _RACE, str(world.site.root), c.contract_id, run, T1.isoformat()],
            stdout=subprocess.PIPE,
            cwd=REPO,
            text=True,
        )
        for run in ("p1", "p2")
    ]
    oks = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert sum(oks) == 6  # 10 rounds asked, a share of 6 granted: exactly 6 charged
    assert len(ledger_rows(world)) == 6
    assert budget_report(world.site, now=T1)[0].spent == 6.0
