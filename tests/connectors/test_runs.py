"""The connector records the end of a run its site trained in (issue 16), from what the
hub answers: untrusted input. ``record_finished_runs`` appends ``run.finished`` to
SITE/log once per (run, contract), only for runs whose rounds the site's own log shows
under that contract, and only with a well-formed status, model hash and hub index."""

from __future__ import annotations

from dataspace.audit.events import parse_event
from dataspace.connectors.runs import read_site_runs, record_finished_runs
from dataspace.site import Site
from dataspace.site.log import open_site_log, record

MODEL = "ab" * 32


def _trained(site: Site, run_id: str, contract_id: str, *rounds: int) -> None:
    """The site's log as its ledger leaves it after training (round.finished entries)."""
    for r in rounds:
        record(site, "round.finished", run_id=run_id, contract_id=contract_id, round=r,
               dataset_id="ds1", epsilon=0.5, model_sha256="11" * 32)  # fmt: skip


def _run(**over) -> dict:
    return {"run_id": "r1", "contract_ids": ["c1"], "status": "finished",
            "model_sha256": MODEL, "finished_log_index": 7} | over  # fmt: skip


def _finished(site: Site) -> list[dict]:
    with open_site_log(site, writable=False) as log:
        evs = [parse_event(e) for e in log.entries(0, log.size)]
    return [e.fields | {"contract_id": e.contract_id} for e in evs if e.kind == "run.finished"]


def test_records_once_with_the_sites_own_rounds(site: Site) -> None:
    _trained(site, "r1", "c1", 0, 1, 2)
    assert len(record_finished_runs(site, [_run()], "aHVi")) == 1
    (f,) = _finished(site)
    assert f["run_id"] == "r1" and f["contract_id"] == "c1" and f["dataset_id"] == "ds1"
    assert f["rounds"] == [0, 1, 2] and f["model_sha256"] == MODEL and f["hub_log_index"] == 7
    assert f["hub"] == "aHVi" and f["status"] == "finished"
    # asked again (the next pass, a restarted connector): nothing more
    assert record_finished_runs(site, [_run(), _run()], "aHVi") == []
    assert ("r1", "c1") in read_site_runs(site).finished and len(_finished(site)) == 1


def test_hostile_hub_answers_record_nothing(site: Site) -> None:
    _trained(site, "r1", "c1", 1)
    _trained(site, "r2", "c2", 1)
    hostile = [
        _run(run_id="r9"),  # a run the site never trained in
        _run(contract_ids=["c9"]),  # the right run, a contract that is not the site's
        _run(contract_ids=["c2"]),  # the site's contract, but its rounds were in r2
        _run(status="running"),  # not ended
        _run(status="finished; rm -rf"),
        _run(model_sha256="../../etc/passwd"),
        _run(model_sha256="AB" * 32),  # not lower-case hex
        _run(model_sha256=None),  # no model released
        _run(finished_log_index=-1),
        _run(finished_log_index="7"),
        _run(finished_log_index=True) | {"finished_log_index": 7.0},
        _run(contract_ids="c1"),  # not a list
        _run(run_id=["r1"]),
        "r1",
        None,
        [],
    ]
    assert record_finished_runs(site, hostile, "aHVi") == []
    assert _finished(site) == []
    # the one honest answer among them is still recorded
    assert len(record_finished_runs(site, [*hostile, _run()], "aHVi")) == 1
