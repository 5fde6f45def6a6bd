"""``dataspace audit show --hub``: a round's model is the model its run released.

The site's log names each round's update (``round.finished``); the hub's log names
the model file a run released (``run.finished``, its SHA-256). ``show`` ties the two
by run and contract, says which one each row shows, and falls back to the round's
update when the hub's log has no such run, does not list the contract, or does not
verify.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.cli import main
from tests.audit.conftest import ORIGIN, events

HUB = "hub.example/log"
MODEL = "5e" * 32


def _site(tmp: Path) -> Path:
    key, consumer = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp / "site-log", ORIGIN, key)
    log.append_many(events(key, consumer))
    return tmp / "site-log"


def _hub(tmp: Path, name: str = "hub-log", **finished) -> Path:
    key = Ed25519PrivateKey.generate()
    log = TransparencyLog.create(tmp / name, HUB, key)
    fields = {
        "run_id": "r1",
        "consumer": "robotco",
        "contracts": ["c1"],
        "status": "finished",
        "rounds": 2,
        "model_sha256": MODEL,
    } | finished
    log.append_many(
        [
            make_event("run.registered", key, HUB, run_id="r1", consumer="x", contracts=["c1"]),
            make_event("run.finished", key, HUB, **fields),
        ]
    )
    return tmp / name


def _show(capsys, *args: str) -> tuple[int, str]:
    code = main(["audit", "show", *args])
    return code, capsys.readouterr().out


def test_model_column_shows_the_released_model(tmp_path: Path, capsys) -> None:
    site, hub = _site(tmp_path), _hub(tmp_path)
    code, out = _show(capsys, str(site), "--contract", "c1", "--hub", str(hub), "--json")
    assert code == 0
    shown = json.loads(out)
    assert [r["model"] for r in shown["rounds"]] == [MODEL, MODEL]
    assert {r["model_source"] for r in shown["rounds"]} == {"run.finished"}
    assert [r["released_model_sha256"] for r in shown["rounds"]] == [MODEL, MODEL]
    # the round's own update stays where it always was
    assert [r["model_sha256"] for r in shown["rounds"]] == ["11" * 32, "22" * 32]
    assert shown["hub_log"]["verifies"] and shown["hub_log"]["runs_finished"] == 1
    code, out = _show(capsys, str(site), "--contract", "c1", "--hub", str(hub))
    assert code == 0 and "released model" in out and MODEL in out and "model of" in out
    assert "11" * 32 not in out  # the column shows one hash, and says which


def test_falls_back_to_the_round_update(tmp_path: Path, capsys) -> None:
    site = _site(tmp_path)
    code, out = _show(capsys, str(site), "--contract", "c1", "--json")
    shown = json.loads(out)
    assert code == 0 and [r["model"] for r in shown["rounds"]] == ["11" * 32, "22" * 32]
    assert {r["model_source"] for r in shown["rounds"]} == {"round.finished"}
    assert shown["hub_log"] is None
    out = _show(capsys, str(site), "--contract", "c1")[1]
    assert "round update" in out and "give --hub" in out
    # a run.finished of the run that does not list this contract releases nothing of it
    other = _hub(tmp_path, "other", contracts=["c9"])
    out = _show(capsys, str(site), "--contract", "c1", "--hub", str(other), "--json")[1]
    shown = json.loads(out)
    assert {r["model_source"] for r in shown["rounds"]} == {"round.finished"}
    # nor one without a model hash (a failed run), nor one of another run
    for name, over in (("nomodel", {"model_sha256": None}), ("otherrun", {"run_id": "r9"})):
        hub = _hub(tmp_path, name, **over)
        out = _show(capsys, str(site), "--contract", "c1", "--hub", str(hub), "--json")[1]
        assert {r["model_source"] for r in json.loads(out)["rounds"]} == {"round.finished"}


def test_a_hub_log_that_does_not_verify_shows_no_released_model(tmp_path: Path, capsys) -> None:
    site, hub = _site(tmp_path), _hub(tmp_path)
    # the hub's log as a bundle, its run.finished rewritten to name another model
    bundle = tmp_path / "hub-bundle"
    assert main(["audit", "export", str(hub), str(bundle)]) == 0
    lines = (bundle / "entries.jsonl").read_bytes().splitlines()
    lines[1] = lines[1].replace(MODEL.encode(), b"66" * 32)
    (bundle / "entries.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
    capsys.readouterr()
    code, out = _show(capsys, str(site), "--contract", "c1", "--hub", str(bundle), "--json")
    shown = json.loads(out)
    assert code == 0 and not shown["hub_log"]["verifies"]
    assert {r["model_source"] for r in shown["rounds"]} == {"round.finished"}
    assert "66" * 32 not in out
    code, out = _show(capsys, str(site), "--contract", "c1", "--hub", str(bundle))
    assert "does NOT verify" in out
