from __future__ import annotations

import hashlib
import json

import pytest

from dataspace.cli import main

pytestmark = pytest.mark.slow


def test_train_simulate_writes_model_report_and_plot(federation, tmp_path, capsys):
    fed = federation(epsilon=2.0, rounds=1)
    out = tmp_path / "out"
    args = ["train", "--contract", ",".join(fed.contract_ids), "--template", "bc-mlp"]
    args += ["--rounds", "1", "--out", str(out), "--json"]
    for s in fed.sites:
        args += ["--simulate", str(s.root)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["status"] == "finished"
    model = out / "model.pt"
    assert report["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert set(report["epsilon"]) == set(fed.dataset_ids)
    assert all(0 < e <= 2.0 for e in report["epsilon"].values())
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    # every site logged its statistics (round 0) and the round in its ledger, both released
    for site in fed.sites:
        with site.db(read_only=True) as con:
            rows = con.execute(
                "SELECT round_no, release, finished_at FROM ledger ORDER BY round_no"
            ).fetchall()
        assert [r[:2] for r in rows] == [(0, "stats"), (1, "round")]
        assert all(r[2] is not None for r in rows)


def test_train_hub_usage_errors(tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    base = ["train", "--contract", "c1", "--rounds", "1"]
    assert main([*base, "--hub", "https://hub.example"]) == 2
    assert "--hub needs --key" in capsys.readouterr().err
    assert main([*base, "--hub", "https://hub.example", str(site)]) == 2
    assert "either --hub URL (a consumer) or SITE" in capsys.readouterr().err
    assert main([*base, "--min-sites", "2", str(site)]) == 2
    assert "need --hub" in capsys.readouterr().err


def test_train_hub_refuses_contracts_not_the_callers_or_not_agreed(tmp_path, capsys, monkeypatch):
    """Before anything starts: the hub's registry decides, one clear line names each."""
    from dataspace.auth.client import call, signed_client
    from dataspace.net import free_port
    from tests.services.conftest import Service, make_party, signed_contract

    keys = tmp_path / "keys"
    keys.mkdir()
    holder = make_party(keys, "holder", "holder")
    alice, bob = make_party(keys, "alice", "consumer"), make_party(keys, "bob", "consumer")
    hub = Service(
        ["hub", "--data", str(tmp_path / "hub"), "--trust", f"{holder.key_path}.pub"],
        free_port(),
        tmp_path / "hub.log",
    )
    try:
        hub.wait_ready()
        with signed_client(hub.url, holder.key) as c:
            records = {}
            for cid, who in [("c-ok", alice), ("c-rev", alice), ("c-bob", bob)]:
                entry = {"dataset_id": f"ds-{cid}", "fingerprint": "ab" * 32,
                         "dcat": {"@context": {}, "@type": "dcat:Dataset"}}  # fmt: skip
                call(c, "POST", "/v1/catalog", json=entry)
                records[cid] = signed_contract(holder.key, who.key, f"ds-{cid}", "ab" * 32,
                                               contract_id=cid, template="bc-mlp")  # fmt: skip
                call(c, "POST", "/v1/contracts", json=records[cid])
            # the holder revokes c-rev: the hub's registry follows
            call(c, "POST", "/v1/contracts", json=records["c-rev"] | {"state": "revoked"})
        base = ["train", "--hub", hub.url, "--key", str(alice.key_path), "--rounds", "1",
                "--out", str(tmp_path / "out")]  # fmt: skip
        assert main([*base, "--contract", "c-ok,c-rev,c-bob,c-none"]) == 3
        err = " ".join(capsys.readouterr().err.split())
        assert "c-rev is revoked, not agreed" in err, err
        assert "c-bob is not a contract of yours" in err and "c-none is not a contract" in err
        assert "c-ok" not in err.replace("c-ok,", "")  # the good one is not blamed
        assert main([*base, "--contract", "c-ok", "--template", "bc-chunk"]) == 3
        assert "allows template bc-mlp, not bc-chunk" in capsys.readouterr().err
        # the contracts are fine, but this hub was started without --superlink
        assert main([*base, "--contract", "c-ok"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "names no SuperLink" in err and "--superlink" in err, err
        assert main([*base, "--contract", "c-ok", "--min-sites", "2"]) != 0
        assert "--min-sites 2: give 1 to 1" in " ".join(capsys.readouterr().err.split())
        with signed_client(hub.url, alice.key) as c:  # nothing was registered
            assert call(c, "GET", "/v1/runs")["runs"] == []
    finally:
        hub.stop()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--hub", "http://127.0.0.1:9", "--key", str(alice.key_path),
                 "--contract", "c-ok"]) != 0  # fmt: skip
    assert "cannot reach" in capsys.readouterr().err
    assert main(["train", "--hub", "http://127.0.0.1:9", "--key", str(alice.key_path),
                 "--contract", "c-ok", "--run-id", "../x"]) != 0  # fmt: skip
    assert "not a valid run id" in capsys.readouterr().err
    # refused before anything starts: no run folder made (default runs/<run-id>)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
