"""A site's own ``run.finished`` (issue 16): the released model its rounds went into.

The holder's connector records it once the hub logged the run's end
(:mod:`dataspace.connectors.runs`). The rules accept it only for a run whose rounds
the site's log trained under that contract; the cross-check finds it in the hub's log
with the same model and entry; ``audit show`` on the site's log alone names it.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit.crosscheck import cross_check
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.trust import TrustedKeys
from dataspace.audit.verify import verify_source
from dataspace.cli import main
from tests.audit.conftest import FP, ORIGIN, events

HUB = "hub.example/log"
MODEL = "5e" * 32


def _site_finished(key: Ed25519PrivateKey, **over) -> bytes:
    fields = {
        "run_id": "r1",
        "contract_id": "c1",
        "dataset_id": "ds1",
        "fingerprint": FP,
        "status": "finished",
        "rounds": [1, 2],
        "model_sha256": MODEL,
        "hub_log_index": 1,
        "hub": "aHVi",
        "time": "2026-11-03T11:00:00Z",
    } | over
    return make_event("run.finished", key, ORIGIN, **fields)


def _site(tmp: Path, *extra: dict) -> tuple[Path, list[bytes]]:
    key, consumer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp / "site-log", ORIGIN, key)
    entries = events(key, consumer) + [_site_finished(key, **x) for x in extra]
    log.append_many(entries)
    return tmp / "site-log", entries


def _hub(model: str = MODEL) -> list[bytes]:
    key = Ed25519PrivateKey.generate()
    return [
        make_event("run.registered", key, HUB, run_id="r1", consumer="x", contracts=["c1"]),
        make_event("run.finished", key, HUB, run_id="r1", consumer="x", contracts=["c1"],
                   status="finished", rounds=2, model_sha256=model),
    ]  # fmt: skip


def _runs(rep) -> list[str]:
    """The cross-check's run rules (the hand-built hub registers no rounds)."""
    return [m.rule for m in rep.mismatches if m.rule.startswith("run-")]


def _rules(folder: Path) -> list[str]:
    rep = verify_source(folder, TrustedKeys(), allow_unanchored=True)
    # no trusted key given: the checkpoint's signature is not what these tests look at
    return [v.rule for v in rep.violations if v.rule != "checkpoint-signature"]


def test_the_site_records_the_released_model_and_it_verifies(tmp_path: Path, capsys) -> None:
    folder, entries = _site(tmp_path, {})
    assert _rules(folder) == []
    assert _runs(cross_check(entries, _hub())) == []
    assert main(["audit", "show", str(folder), "--contract", "c1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in shown["rounds"]} == {MODEL}
    assert {r["model_source"] for r in shown["rounds"]} == {"site run.finished"}
    assert main(["audit", "show", str(folder), "--contract", "c1"]) == 0
    assert "released model (site's record)" in capsys.readouterr().out


def test_a_run_the_site_never_trained_is_flagged(tmp_path: Path) -> None:
    # another run, or the right run under a contract whose rounds it did not train
    for n, over in enumerate(({"run_id": "r9"}, {"contract_id": "c2"})):
        folder, _ = _site(tmp_path / str(n), over)
        assert _rules(folder) == ["run-unknown"], over
    folder, _ = _site(tmp_path / "bad", {"model_sha256": "../etc/passwd"})
    assert _rules(folder) == ["run-malformed"]


def test_the_cross_check_catches_a_model_the_hub_did_not_release(tmp_path: Path) -> None:
    _, entries = _site(tmp_path, {})
    assert _runs(cross_check(entries, _hub("77" * 32))) == ["run-model-mismatch"]
    # the right model but another entry of the hub's log
    _, entries = _site(tmp_path / "b", {"hub_log_index": 0})
    assert _runs(cross_check(entries, _hub())) == ["run-model-mismatch"]
    # the hub never logged the run's end
    _, entries = _site(tmp_path / "c", {})
    assert _runs(cross_check(entries, _hub()[:1])) == ["run-finished-not-in-hub"]
