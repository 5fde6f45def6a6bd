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


def test_train_hub_not_yet(capsys):
    code = main(["train", "--contract", "c1", "--rounds", "1", "--hub", "https://hub.example"])
    assert code != 0
    assert "not available yet" in capsys.readouterr().err
