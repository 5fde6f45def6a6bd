"""Enrollment runs the quality check automatically (issue 6), unless told not to."""

from __future__ import annotations

import json

from dataspace.audit.events import parse_event
from dataspace.cli import main
from dataspace.site import Site, create_site
from dataspace.site.log import open_site_log
from tests.conftest import SO101


def _kinds(site: Site) -> list[str]:
    log = open_site_log(site)
    return [parse_event(e).kind for e in log.entries(0, log.size)]


def test_enroll_runs_quality_and_logs_it(tmp_path, capsys) -> None:
    site = create_site(tmp_path / "s", org="ACME")
    assert main(["connector", "enroll", str(site.root), str(SO101), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["quality"] <= 100
    assert _kinds(site)[-2:] == ["dataset.enrolled", "quality.reported"]
    # enrolling the same content again changes nothing and checks nothing again
    assert main(["connector", "enroll", str(site.root), str(SO101), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["created"] is False and again["quality"] is None
    assert _kinds(site).count("quality.reported") == 1


def test_no_quality_skips_the_check(tmp_path, capsys) -> None:
    site = create_site(tmp_path / "s", org="ACME")
    assert main(["connector", "enroll", str(site.root), str(SO101), "--json", "--no-quality"]) == 0
    assert json.loads(capsys.readouterr().out)["quality"] is None
    assert "quality.reported" not in _kinds(site)
