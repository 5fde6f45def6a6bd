"""``dataspace audit ...`` end to end: folders, bundles, sites and a live HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from dataspace.audit import merkle
from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.cli import main

from .conftest import Scenario


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
    assert shown["epsilon_total"] == 1.0 and all(r["verifies"] for r in shown["rounds"])
    code, out, _ = run(capsysbinary, "audit", "show", str(bundle), "--dataset", "ds1")
    assert code == 0 and b"verifies" in out


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
    from dataspace.connectors.site import Site
    from dataspace.connectors.sitelog import record

    site = Site.init(tmp_path / "site", "acme")
    v = parse_vkey(site.vkey_path.read_text())
    assert v.name == site.name and v.public_key == site.identity.public_key
    i = record(site, "dataset.enrolled", dataset_id="d1", fingerprint="ab" * 32, episodes=2)
    j = record(site, "quality.reported", dataset_id="d1", fingerprint="ab" * 32, score=0.8)
    assert (i, j) == (0, 1) or (i, j) == (i, i + 1)
    code, out, err = run(
        capsysbinary,
        "audit",
        "verify",
        str(tmp_path / "site"),
        "--trusted-keys",
        str(site.vkey_path),
    )
    assert code == 0, err
    code, out, _ = run(capsysbinary, "audit", "entries", str(tmp_path / "site"))
    assert json.loads(out.splitlines()[-1])["kind"] == "quality.reported"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_hub_url_source(scenario: Scenario, tmp_path: Path, capsysbinary) -> None:
    import uvicorn
    from fastapi import FastAPI

    from dataspace.audit.api import log_router

    app = FastAPI()
    app.include_router(log_router(lambda: scenario.log), prefix="/log")
    port = _free_port()
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
