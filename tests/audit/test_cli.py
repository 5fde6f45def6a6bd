"""``dataspace audit ...`` end to end: folders, bundles, sites and a live HTTP server."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataspace.audit import merkle
from dataspace.audit.bundle import write_bundle
from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.witness import WitnessError, local_post, witness_log
from dataspace.cli import main
from dataspace.net import free_port

from .conftest import FP, ORIGIN, ROUND_1, ROUND_2, Scenario


def run(capsysbinary, *args: str) -> tuple[int, bytes, bytes]:
    code = main(list(args))
    out, err = capsysbinary.readouterr()
    return code, out, err


def test_verify_checkpoint_proof_entries_export(
    scenario: Scenario, tmp_path: Path, capsysbinary
) -> None:
    src = str(tmp_path / "log")
    tk = str(scenario.trusted)
    code, out, err = run(
        capsysbinary,
        "audit",
        "verify",
        src,
        "--trusted-keys",
        tk,
        "--witness-quorum",
        "2",
        "--json",
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["witnesses"] == ["w1.example", "w2.example"]
    assert report["anchored"] and report["verified"]
    code, out, _ = run(capsysbinary, "audit", "checkpoint", src)
    assert code == 0 and out == scenario.log.checkpoint()
    root = checkpoint_of_note(out).root
    code, out, _ = run(capsysbinary, "audit", "proof", src, "--index", "4")
    p = json.loads(out)
    assert set(p) == {"index", "size", "leaf_hash", "hashes"} and p["size"] == 7
    merkle.verify_inclusion(
        4, 7, bytes.fromhex(p["leaf_hash"]), [bytes.fromhex(h) for h in p["hashes"]], root
    )
    code, out, _ = run(capsysbinary, "audit", "proof", src, "--from", "3", "--size", "7")
    c = json.loads(out)
    assert set(c) == {"from", "size", "hashes"}
    merkle.verify_consistency(
        3, 7, [bytes.fromhex(h) for h in c["hashes"]], scenario.log.root(3), root
    )
    code, out, _ = run(capsysbinary, "audit", "entries", src, "--start", "2", "--end", "4")
    assert out == b"".join(e + b"\n" for e in scenario.entries[2:4])
    bundle = tmp_path / "bundle"
    assert run(capsysbinary, "audit", "export", src, str(bundle))[0] == 0
    assert (bundle / "entries.jsonl").read_bytes() == b"".join(e + b"\n" for e in scenario.entries)
    code, out, err = run(
        capsysbinary, "audit", "verify", str(bundle), "--trusted-keys", tk, "--witness-quorum", "2"
    )
    assert code == 0, err
    code, out, _ = run(
        capsysbinary,
        "audit",
        "show",
        str(bundle),
        "--contract",
        "c1",
        "--trusted-keys",
        tk,
        "--json",
    )
    shown = json.loads(out)
    assert shown["log_verifies"] and [r["model_sha256"] for r in shown["rounds"]] == [
        "11" * 32,
        "22" * 32,
    ]
    assert shown["epsilon_total"] == pytest.approx(ROUND_1["epsilon"] + ROUND_2["epsilon"])
    assert all(r["verifies"] for r in shown["rounds"]) and shown["anchored"]
    code, out, _ = run(capsysbinary, "audit", "show", str(bundle), "--dataset", "ds1")
    # no trusted keys: no witness to anchor it, so it is said to be self-consistent only
    assert code == 0 and b"log is self-consistent only" in out and b"verifies" not in out


def test_verify_fails_naming_the_violation(
    scenario: Scenario, tmp_path: Path, capsysbinary
) -> None:
    bundle = tmp_path / "bundle"
    run(capsysbinary, "audit", "export", str(tmp_path / "log"), str(bundle))
    lines = (bundle / "entries.jsonl").read_bytes().splitlines()
    lines[3] = lines[3].replace(b'"round":1', b'"round":7')
    (bundle / "entries.jsonl").write_bytes(b"".join(ln + b"\n" for ln in lines))
    code, out, err = run(
        capsysbinary, "audit", "verify", str(bundle), "--trusted-keys", str(scenario.trusted)
    )
    assert code == 4 and b"entry 3: entry-signature" in err
    code, out, err = run(
        capsysbinary,
        "audit",
        "verify",
        str(tmp_path / "log"),
        "--trusted-keys",
        str(scenario.trusted),
        "--witness-quorum",
        "3",
        "--json",
    )
    assert code == 4 and json.loads(out)["violations"][0]["rule"] == "witness-quorum"


def test_bad_inputs_are_clear_errors(scenario: Scenario, tmp_path: Path, capsysbinary) -> None:
    code, _, err = run(capsysbinary, "audit", "proof", str(tmp_path / "log"), "--index", "7")
    assert code == 1 and b"beyond" in err
    code, _, err = run(capsysbinary, "audit", "checkpoint", str(tmp_path / "nothing"))
    assert code == 1 and b"not a site folder" in err
    (tmp_path / "log" / "checkpoint").write_bytes(b"garbage\n")
    code, _, err = run(
        capsysbinary,
        "audit",
        "verify",
        str(tmp_path / "log"),
        "--trusted-keys",
        str(scenario.trusted),
    )
    assert code == 1 and b"error" in err


def test_site_folder_source(tmp_path: Path, capsysbinary) -> None:
    from dataspace.audit.note import parse_vkey
    from dataspace.site import create_site
    from dataspace.site.log import record

    site = create_site(tmp_path / "site", "acme")
    v = parse_vkey(site.vkey_path.read_text())
    # a new site log's origin is URL-style, derived from its key (not the site's name)
    from dataspace.audit.witnesskey import log_origin

    assert v.name == log_origin("site", v.public_key) and v.public_key == site.identity.public_key
    assert v.name.startswith("dataspace.invalid/site/")
    i = record(site, "dataset.enrolled", dataset_id="d1", fingerprint="ab" * 32, episodes=2)
    j = record(site, "quality.reported", dataset_id="d1", fingerprint="ab" * 32, score=0.8)
    assert (i, j) == (0, 1) or (i, j) == (i, i + 1)
    args = ["audit", "verify", str(tmp_path / "site"), "--trusted-keys", str(site.vkey_path)]
    code, out, err = run(capsysbinary, *args)  # no witness, nothing kept: not verified
    assert code == 4 and b"unanchored" in err, err
    code, out, err = run(capsysbinary, *args, "--allow-unanchored")
    assert code == 0 and b"self-consistent only" in err and b"UNANCHORED" in err, err
    code, out, _ = run(capsysbinary, "audit", "entries", str(tmp_path / "site"))
    assert json.loads(out.splitlines()[-1])["kind"] == "quality.reported"


def test_a_site_that_rebuilds_its_log_is_caught_only_when_anchored(
    scenario: Scenario, tmp_path: Path, capsysbinary
) -> None:
    """A site hostile to its auditors rebuilds its log without its two rounds and signs it
    again with its own key. The forgery is self-consistent: only --allow-unanchored takes
    it (and says so); the checkpoint an auditor kept, or a trusted witness, catches it."""
    kept = tmp_path / "kept.checkpoint"  # what the auditor kept from its last audit (size 7)
    kept.write_bytes(scenario.log.checkpoint())
    forged = TransparencyLog.create(tmp_path / "forged", ORIGIN, scenario.key)
    filler = [
        make_event(
            "quality.reported",
            scenario.key,
            ORIGIN,
            dataset_id="ds1",
            fingerprint=FP,
            time=f"2026-11-0{n}T12:00:00Z",
            score=0.9,
        )
        for n in range(3, 8)
    ]
    forged.append_many([*scenario.entries[:3], *filler])  # as long as before: no rollback
    # the witnesses saw the real history: they refuse to cosign the forged one
    for w in scenario.witnesses:
        with pytest.raises(WitnessError):
            witness_log(forged, local_post(w))
    bundle = tmp_path / "forged-bundle"
    write_bundle(bundle, forged.checkpoint(), forged.iter_entries())
    tk = str(scenario.trusted)
    verify = ["audit", "verify", str(bundle), "--trusted-keys", tk]
    # accepted only when the auditor explicitly settles for self-consistency, and said so
    code, out, err = run(capsysbinary, *verify, "--allow-unanchored", "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["round_count"] == 0, err
    assert not report["anchored"] and not report["verified"] and report["unanchored_allowed"]
    code, _, err = run(capsysbinary, *verify, "--allow-unanchored")
    assert code == 0 and b"self-consistent only" in err and b"verified" not in err, err
    # by default it is not verified: nothing anchors it
    code, out, err = run(capsysbinary, *verify, "--json")
    report = json.loads(out)
    assert code == 4 and [v["rule"] for v in report["violations"]] == ["unanchored"], err
    assert not report["anchored"] and "self-consistency" in report["first_violation"]
    # a kept checkpoint catches it, even with --allow-unanchored: the tree at 7 differs
    code, out, err = run(
        capsysbinary, *verify, "--allow-unanchored", "--previous-checkpoint", str(kept), "--json"
    )
    report = json.loads(out)
    assert code == 4 and report["violations"][0]["rule"] == "fork", err
    # so does a witness quorum: no trusted witness cosigned the forged checkpoint
    code, out, _ = run(
        capsysbinary, *verify, "--allow-unanchored", "--witness-quorum", "1", "--json"
    )
    report = json.loads(out)
    assert code == 4 and report["violations"][0]["rule"] == "witness-quorum"
    assert report["violations"][0]["values"]["missing"] == ["w1.example", "w2.example"]
    # while the real log, anchored by its witnesses, verifies without any opt-in
    code, out, err = run(
        capsysbinary, "audit", "verify", str(tmp_path / "log"), "--trusted-keys", tk
    )
    assert code == 0 and b"verified" in err and b"UNANCHORED" not in err, err


@pytest.mark.slow
def test_hub_url_source(scenario: Scenario, tmp_path: Path, capsysbinary) -> None:
    import uvicorn
    from fastapi import FastAPI

    from dataspace.auth.log_api import log_router

    app = FastAPI()
    app.include_router(log_router(lambda: scenario.log), prefix="/log")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/log"
    try:
        code, out, err = run(
            capsysbinary,
            "audit",
            "verify",
            url,
            "--trusted-keys",
            str(scenario.trusted),
            "--witness-quorum",
            "2",
        )
        assert code == 0, err
        code, out, _ = run(capsysbinary, "audit", "checkpoint", url)
        assert out == scenario.log.checkpoint()
        code, out, _ = run(capsysbinary, "audit", "proof", url, "--index", "1", "--size", "5")
        assert json.loads(out)["hashes"] == [h.hex() for h in scenario.log.inclusion_proof(1, 5)]
        code, out, _ = run(capsysbinary, "audit", "export", url, str(tmp_path / "b"))
        assert code == 0 and (tmp_path / "b" / "entries.jsonl").read_bytes().count(b"\n") == 7
    finally:
        server.should_exit = True
        t.join(timeout=5)


def test_demo_and_dashboard_say_what_anchors_a_log(scenario: Scenario, tmp_path: Path) -> None:
    """The demo's verify_log and the hub dashboard's check call a log "verified" only when
    a trusted witness cosigned it; a log that has no witnesses at all is self-consistent
    only, and says so; one whose witnesses the checker does not trust is not verified."""
    import base64
    from types import SimpleNamespace

    from dataspace.demo.auditor import verify_log
    from dataspace.hub.dashboard import Views

    a = verify_log(str(tmp_path / "log"), scenario.trusted)  # witnessed: strict, verified
    assert (a["ok"], a["anchored"], a["status"]) == (True, True, "verified"), a
    lone = TransparencyLog.create(tmp_path / "lone", ORIGIN, scenario.key)
    lone.append_many(scenario.entries)
    a = verify_log(str(tmp_path / "lone"), scenario.trusted)  # no witnesses at all
    assert (a["ok"], a["anchored"], a["status"]) == (True, False, "self-consistent only"), a
    a = verify_log(str(tmp_path / "lone"), scenario.trusted, allow_unanchored=False)
    assert a["status"] == "FAILED" and "unanchored" in a["first_violation"]

    def views(log: TransparencyLog, witnesses) -> Views:
        holders = {base64.b64encode(w.signer.public_key).decode(): w.name for w in witnesses}
        store = SimpleNamespace(
            catalog={f"d{i}": {"connector_url": "http://x", "holder": k} for i, k in
                     enumerate(holders)},
            participants={k: {"role": "holder", "name": n} for k, n in holders.items()},
        )  # fmt: skip
        return Views(store, SimpleNamespace(log=log, origin=ORIGIN, key=scenario.key))

    log = scenario.log
    log.append(make_event("quality.reported", scenario.key, ORIGIN, dataset_id="ds1", score=1))
    got = views(log, scenario.witnesses).verify(log.size, log.checkpoint())
    assert got["ok"] and got["anchored"] and got["entries"] == 7, got
    assert "cosigned by w1.example, w2.example; entries 7..7 await" in got["detail"]
    got = views(lone, []).verify(lone.size, lone.checkpoint())  # a hub with no holder yet
    assert got["ok"] and not got["anchored"] and "self-consistent only" in got["detail"]
    from dataspace.audit.witness import Witness

    stranger = Witness(tmp_path / "w9", "w9.example", Ed25519PrivateKey.generate(), [])
    got = views(log, [stranger]).verify(log.size, log.checkpoint())
    assert not got["ok"] and "unanchored" in got["detail"], got
