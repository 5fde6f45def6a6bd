"""A crash between the site's database and its log never loses or doubles an entry.

Each state change of the policy area (a policy published, a contract agreed or
ended, a round charged, released or evaluated) is staged in the outbox with the
change and appended to SITE/log after COMMIT (dataspace/policy/outbox.py). Here
a subprocess dies (``os._exit``, as ``kill -9``) right after COMMIT, or right
after the append but before it is marked, through the fault hook
``DATASPACE_FAULT``; then the next action (a retry) completes it: exactly one
entry, the database and the log agree, and ``audit verify`` passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from dataspace.errors import DataspaceError
from dataspace.policy import outbox, store
from dataspace.policy.contracts import Contract, OfferRequest, negotiate, revoke
from dataspace.policy.ledger import (
    charge_round,
    claim_evaluation,
    record_round_finished,
)
from dataspace.policy.terms import ContractTerms
from tests.conftest import REPO
from tests.policy.conftest import NOW, World

pytestmark = pytest.mark.slow

T1 = NOW + timedelta(minutes=5)
GAUSS = [(4.0, 1.0, 1)]

_ACT = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timedelta
    from dataspace.site.folder import Site
    from dataspace.policy.contracts import OfferRequest, negotiate, revoke
    from dataspace.policy.terms import ContractTerms
    from dataspace.site.identity import load_identity, load_private_key
    from dataspace.policy.ledger import charge_round, claim_evaluation, record_round_finished
    from dataspace.policy.odrl import build_policy
    from dataspace.policy.policies import publish_policy
    site, what, cid = Site.open(sys.argv[1]), sys.argv[2], sys.argv[3]
    now = datetime.fromisoformat(sys.argv[4])
    if what == "publish":
        from dataspace.policy.policies import current_policy
        p = current_policy(site, sys.argv[5])
        publish_policy(site, build_policy(
            dataset_id=p.dataset_id, fingerprint=p.fingerprint, assigner=p.assigner,
            epsilon=9.0, delta=1e-5, until=now + timedelta(days=30), purposes=["research"]))
    elif what == "agree":
        key = load_private_key(sys.argv[6])
        negotiate(site, OfferRequest(
            dataset_id=sys.argv[5], consumer=load_identity(sys.argv[6] + ".pub"),
            terms=ContractTerms(purpose="research", epsilon=1.0, rounds=2,
                                until=now + timedelta(days=7), template="mlp")), key, now=now)
    elif what == "revoke":
        revoke(site, cid, now=now)
    elif what == "charge":
        charge_round(site, cid, "run", 1, [(4.0, 1.0, 1)], now=now)
    elif what == "finish":
        record_round_finished(site, cid, "run", 1, 0.5, "ab" * 32, now=now)
    elif what == "evaluate":
        claim_evaluation(site, cid, "run", 1, "cd" * 32, now=now)
    print("done")
    """
)


def _die_during(w: World, what: str, kind: str, point: str, cid: str = "") -> None:
    env = dict(os.environ, DATASPACE_FAULT=f"outbox:{kind}:{point}")
    args = [str(w.site.root), what, cid, T1.isoformat(), w.dataset_id, str(w.alice_key)]
    r = subprocess.run(
        [sys.executable, "-c", _ACT, *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 137, (r.returncode, r.stderr[-2000:])


def _entries(w: World, kind: str) -> list:
    return [e for e in w.events(kind) if e.fields.get("outbox") is not None]


def _unmarked(w: World) -> int:
    with w.site.db() as con:
        (n,) = con.execute("SELECT count(*) FROM outbox WHERE log_index IS NULL").fetchone()
    return int(n)


def _verify(w: World) -> None:
    from click.testing import CliRunner

    from dataspace.cli import cli

    trusted = w.site.root.parent / "trusted"
    trusted.write_text(f"{w.site.vkey_path}\n")
    r = CliRunner().invoke(
        cli,
        ["audit", "verify", str(w.site.root), "--trusted-keys", str(trusted),
         "--allow-unanchored"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output


def _contract(w: World) -> Contract:
    terms = ContractTerms(
        purpose="research", epsilon=3.0, rounds=3, until=NOW + timedelta(days=7), template="mlp"
    )
    request = OfferRequest(dataset_id=w.dataset_id, consumer=w.alice, terms=terms)
    return negotiate(w.site, request, w.key(), now=NOW)


CASES = [
    # (action in the subprocess, its event, what the world needs first)
    ("publish", "policy.published", "nothing"),
    ("agree", "contract.agreed", "nothing"),
    ("revoke", "access.refused", "contract"),
    ("charge", "round.started", "contract"),
    ("finish", "round.finished", "charged"),
    ("evaluate", "round.evaluated", "finished"),
]


@pytest.mark.parametrize("point", ["committed", "appended"])
@pytest.mark.parametrize(("what", "kind", "first"), CASES, ids=[c[0] for c in CASES])
def test_a_crash_between_database_and_log_is_completed_once(
    world: World, what: str, kind: str, first: str, point: str
) -> None:
    world.publish()
    cid = ""
    if first != "nothing":
        cid = _contract(world).terms.contract_id
    if first in ("charged", "finished"):
        charged = charge_round(world.site, cid, "run", 1, GAUSS, now=T1)
    if first == "finished":
        record_round_finished(world.site, cid, "run", 1, charged.epsilon, "ab" * 32, now=T1)
    before = len(_entries(world, kind))
    _die_during(world, what, kind, point, cid)
    after_crash = len(_entries(world, kind))
    assert after_crash == before + (1 if point == "appended" else 0)
    assert _unmarked(world) == 1  # the change is in the database, its mark is not
    # the next action (here: a flush, as every policy action starts with) completes it
    assert outbox.flush(world.site) == 1
    assert _unmarked(world) == 0
    assert len(_entries(world, kind)) == before + 1  # exactly once
    assert outbox.flush(world.site) == 0
    _verify(world)


def test_a_retried_charge_after_a_crash_completes_the_entry_and_charges_once(
    world: World,
) -> None:
    world.publish()
    cid = _contract(world).terms.contract_id
    _die_during(world, "charge", "round.started", "committed", cid)
    assert world.events("round.started") == []  # charged in the database, not yet logged
    # the resumed round: its entry is appended, and it runs under the same charge
    again = charge_round(world.site, cid, "run", 1, GAUSS, now=T1)
    assert len(world.events("round.started")) == 1
    assert again.epsilon > 0
    with world.site.db() as con:
        assert con.execute("SELECT count(*) FROM ledger").fetchone() == (1,)
    _verify(world)


def test_an_entry_that_cannot_be_written_leaves_the_action_unacknowledged(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.publish()
    cid = _contract(world).terms.contract_id

    def broken(*a, **k):
        raise DataspaceError("the log's disk is full")

    monkeypatch.setattr("dataspace.site.log.record", broken)
    with pytest.raises(DataspaceError, match="disk is full"):
        charge_round(world.site, cid, "run", 1, GAUSS, now=T1)  # the caller computes nothing
    with pytest.raises(DataspaceError, match="disk is full"):
        revoke(world.site, cid, now=T1)  # nothing more happens while the log is broken
    monkeypatch.undo()
    assert _unmarked(world) == 1
    with world.site.db() as con:
        assert con.execute("SELECT state FROM contracts").fetchone() == ("agreed",)
    # the next action writes the pending entry before its own (here a refusal)
    with pytest.raises(DataspaceError, match="was not trained"):
        claim_evaluation(world.site, cid, "run", 1, "cd" * 32, now=T1)
    kinds = [e.kind for e in world.events()]
    assert kinds[-2:] == ["round.started", "access.refused"]
    assert _unmarked(world) == 0
    _verify(world)


def test_flush_finds_an_entry_far_back_in_a_long_log(world: World, tmp_path: Path) -> None:
    """The entry of a crash after the append is found, not appended twice, behind
    hundreds of later entries (flush reads back in batches of 512)."""
    from dataspace.site import log as events

    world.publish()
    cid = _contract(world).terms.contract_id
    _die_during(world, "charge", "round.started", "appended", cid)
    for i in range(700):
        events.refused(world.site, f"noise {i}", contract_id=cid)
    assert outbox.flush(world.site) == 1
    assert len(world.events("round.started")) == 1


def test_a_committed_row_published_by_its_owner_and_a_flush_at_once_is_logged_once(
    world: World,
) -> None:
    """Two runs charging one contract at once: each action's flush found the other's
    freshly committed row unmarked while its owner was publishing it, and both appended
    it (the log then said more was charged than the ledger). Publishers now take turns."""
    from concurrent.futures import ThreadPoolExecutor

    w = world
    oids = []
    for n in range(12):
        with w.site.db() as con:
            store.ensure_tables(con)
            oids.append(outbox.stage(con, "access.refused", reason=f"race {n}", refusal="Race"))
        with ThreadPoolExecutor(2) as pool:  # the owner publishes while another flushes
            list(pool.map(lambda f: f(), (lambda: outbox.publish(w.site, oids[-1]),
                                          lambda: outbox.flush(w.site))))  # fmt: skip
    logged = [e.fields["outbox"] for e in w.events("access.refused") if "outbox" in e.fields]
    assert sorted(logged) == sorted(oids), "an outbox row reached the log twice or never"
    assert _unmarked(w) == 0
    _verify(w)
