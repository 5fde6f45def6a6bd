"""``dataspace demo`` end to end (simulation) on the bundled sample, reruns, bad input."""

from __future__ import annotations

import json
import re
import socket

import pytest

from dataspace.cli import main
from dataspace.demo import DemoOptions, run_demo
from dataspace.demo.sources import SAMPLE, find_source

pytestmark = pytest.mark.slow


def test_bundled_sample_is_small_and_complete():
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size < 2_000_000
    src = find_source(SAMPLE)
    assert src.bundled and src.episodes == 16
    info = json.loads((SAMPLE / "meta" / "info.json").read_text())
    assert info["total_episodes"] == len(list((SAMPLE / "data").rglob("*.parquet")))


def test_demo_end_to_end_then_rerun(tmp_path, capsys):
    wd = tmp_path / "demo"
    args = ["demo", "--workdir", str(wd), "--simulate", "--rounds", "2", "--data", str(SAMPLE)]
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads((wd / "summary.json").read_text())
    assert summary["engine"] == "simulation" and summary["verified"]
    assert len(summary["sites"]) == 3
    for s in summary["sites"]:
        assert s["episodes"] == 5 and s["log_verified"] and s["quality"] > 0
        assert 0 < s["epsilon_spent"] <= 8.0 + 1e-9
        # left = budget - spent - what live contracts still reserve
        assert 0 < s["epsilon_left"] <= s["epsilon_budget"] - s["epsilon_spent"] + 1e-9
        assert s["contribution"] is not None and s["site"] in out
    html = (wd / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 4
    assert "report: " + str(wd / "report.html") in out
    assert summary["validation_mse"]["final"] < summary["validation_mse"]["initial"]

    # rerun in the same workdir: same sites and datasets, a new run, more epsilon spent
    assert main([*args, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["run_id"] != summary["run_id"]
    assert [s["dataset_id"] for s in again["sites"]] == [s["dataset_id"] for s in summary["sites"]]
    for a, b in zip(again["sites"], summary["sites"], strict=True):
        assert a["epsilon_spent"] > b["epsilon_spent"]
        assert a["contract_id"] != b["contract_id"]
    assert len(list((wd / "runs").iterdir())) == 2


def test_the_default_demo_trains_through_the_hub(tmp_path, capsys):
    """No --engine: the consumer's path (issue 16). The hub's SuperLink and worker and the
    holders' SuperNodes run as processes; the consumer trains with the hub's URL, its key
    and the contract ids; the hub logs run.finished with the model the consumer got."""
    import hashlib

    from dataspace.audit.events import parse_event
    from dataspace.audit.log import TransparencyLog

    wd = tmp_path / "demo"
    args = ["demo", "--workdir", str(wd), "--rounds", "2", "--data", str(SAMPLE),
            "--episodes-per-site", "3", "--json"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"] == "hub" and summary["verified"], summary["audit"]
    assert summary["hub_url"] and len(summary["audit"]) == 4  # three sites and the hub
    out = wd / "runs" / summary["run_id"]
    # the consumer's copy came from the hub's runs folder, not from a site
    assert (wd / "hub" / "runs" / summary["run_id"] / "history.json").exists()
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    with TransparencyLog.open(wd / "hub" / "log") as log:
        events = [parse_event(e) for e in log.entries(0, log.size)]
    ((fin_index, fin),) = [(i, e) for i, e in enumerate(events) if e.kind == "run.finished"]
    assert fin.fields["run_id"] == summary["run_id"] and fin.fields["status"] == "finished"
    model = hashlib.sha256((out / "final.npz").read_bytes()).hexdigest()
    assert fin.fields["model_sha256"] == model
    assert sorted(fin.fields["contracts"]) == sorted(s["contract_id"] for s in summary["sites"])
    # each holder's connector recorded the run's end in its own log, with the same model,
    # and the auditor's cross-check of each site against the hub matched it
    for i, site in enumerate(summary["sites"]):
        with TransparencyLog.open(wd / "sites" / f"site-{i}" / "log") as log:
            own = [parse_event(e) for e in log.entries(0, log.size)]
        (mine,) = [e for e in own if e.kind == "run.finished"]
        assert mine.fields["model_sha256"] == model and mine.contract_id == site["contract_id"]
        assert mine.fields["rounds"][-2:] == [1, 2] and mine.fields["hub_log_index"] == fin_index
    assert all(a["cross_check"]["ok"] for a in summary["audit"][:3]), summary["audit"]
    # audit show on a site's log alone names the released model
    assert main(["audit", "show", str(wd / "sites" / "site-0"), "--contract",
                 summary["sites"][0]["contract_id"], "--json"]) == 0  # fmt: skip
    shown = json.loads(capsys.readouterr().out)
    assert {r["model_source"] for r in shown["rounds"]} == {"site run.finished"}
    assert {r["model"] for r in shown["rounds"]} == {model}
    # every SuperLink, SuperNode and worker process was stopped with the demo
    import psutil

    left = [p for p in psutil.process_iter(["cmdline"])
            if str(wd) in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    assert not left, [p.info["cmdline"] for p in left]


def test_contract_refused_when_the_budget_is_spent(tmp_path):
    from dataspace.errors import RefusedError

    opts = dict(
        workdir=tmp_path / "d", sites=1, rounds=1, source=SAMPLE, budget_runs=1, episodes_per_site=3
    )
    run_demo(DemoOptions(**opts))
    with pytest.raises(RefusedError, match="refused the contract"):
        run_demo(DemoOptions(**opts))


def _busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "/nonexistent/recording"], "no robot recording found"),
        (["--sites", "0"], "--sites must be between"),
        (["--hub", "http://127.0.0.1:9"], "cannot reach the hub at http://127.0.0.1:9"),
        (["--services", "--port", "PORT"], "cannot listen on 127.0.0.1"),
    ],
)
def test_bad_input_is_a_message_and_an_exit_code(tmp_path, capsys, extra, message):
    busy = _busy_port()
    try:
        extra = [str(busy.getsockname()[1]) if a == "PORT" else a for a in extra]
        args = ["demo", "--workdir", str(tmp_path / "d"), "--simulate", "--rounds", "1"]
        if "--data" not in extra:
            args += ["--data", str(SAMPLE), "--episodes-per-site", "2"]
        code = main([*args, *extra])
    finally:
        busy.close()
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert "Traceback" not in err
