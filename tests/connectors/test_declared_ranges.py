"""A holder declares its robot's feature ranges at enrollment (``enroll --ranges FILE``):
the catalog entry carries them as ``robot:declaredRanges`` and the quality check narrows
its out-of-range limits to them; a declaration that cannot be applied refuses the
enrollment and leaves nothing behind; one that tries to widen the limits hides nothing.

The data is the SO-101 stand-in (4 episodes, real joint names) with a gripper value
planted in one episode: within the data's own robust fences (so only a declared range
catches it), or far beyond them (so a declaration of +-1e9 must not hide it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rdflib import Graph, Literal, URIRef
from rdflib.namespace import RDF, RDFS

from dataspace.audit.events import verify_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.storage import LogError
from dataspace.cli import main
from dataspace.connectors.catalog import ROBOT_NS
from dataspace.connectors.dcat import catalog_document
from dataspace.connectors.dsp.catalog import dcat_catalog
from dataspace.connectors.enroll import enroll
from dataspace.connectors.metadata import set_declared_ranges
from dataspace.connectors.publisher import publish_request
from dataspace.connectors.ranges import (
    DECLARED_RANGES_KEY,
    RangesError,
    check_ranges,
    load_ranges,
)
from dataspace.connectors.reader import EnrollError
from dataspace.errors import NotFoundError
from dataspace.hub.models import PublishRequest
from dataspace.hub.routes.catalog import _facts as hub_facts
from dataspace.quality import ranges as shared
from dataspace.quality import suite
from dataspace.quality.check import run_checks
from dataspace.quality.errors import QualityError
from dataspace.site import Site, store
from dataspace.site import log as sitelog
from dataspace.site.log import open_site_log
from tests.conftest import SO101, UNITREE
from tests.connectors.conftest import fresh_copy, site_holding_one, small_v21, snapshot

GRIPPER = "gripper.pos"  # observation.state column 5; clean values 0.8 .. 37.7
PLANTED_EPISODE = 2
#: what the holder declares: the gripper opens 0 .. 40 (every clean value is inside)
HONEST = {"observation.state": {GRIPPER: [0.0, 40.0]}}


def _planted(dst: Path, value: float, episode: int = PLANTED_EPISODE) -> Path:
    """A copy of the SO-101 stand-in whose gripper reads ``value`` for 10 frames of one
    episode (written back into the LeRobot data file; the metadata stays as it was)."""
    shutil.copytree(SO101, dst)
    f = dst / "data" / "chunk-000" / "file-000.parquet"
    t = pq.read_table(f)
    s = np.stack(t["observation.state"].to_numpy(zero_copy_only=False)).astype(np.float32)
    rows = np.flatnonzero(t["episode_index"].to_numpy() == episode)[100:110]
    s[rows, 5] = value
    i = t.schema.get_field_index("observation.state")
    col = pa.FixedSizeListArray.from_arrays(pa.array(s.reshape(-1)), s.shape[1])
    pq.write_table(t.set_column(i, t.schema.field(i), col), f)
    return dst


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site that already holds a dataset (so a refusal has something to disturb)."""
    tmp = tmp_path_factory.mktemp("tpl")
    return site_holding_one(tmp, small_v21(tmp / "g1", n=2))


@pytest.fixture
def busy_site(template: Path, tmp_path: Path) -> Site:
    return fresh_copy(template, tmp_path / "busy")


def _everything(site: Site) -> tuple[Any, int]:
    """What a refused enrollment must leave as it was: files, rows, and the site's log."""
    return snapshot(site), open_site_log(site).size


def _cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(list(args)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_the_key_is_the_one_the_quality_check_reads() -> None:
    assert DECLARED_RANGES_KEY == suite.DECLARED_RANGES_KEY


def test_declared_range_reaches_the_catalog_and_the_check(site, tmp_path, capsys) -> None:
    """Happy path, through the CLI: enroll --ranges -> catalog entry -> quality check.
    The planted 45 is inside the data's own fences: without the declaration the same data
    passes out_of_range, with it the planted episode (and only it) is flagged."""
    data = _planted(tmp_path / "so101", 45.0)
    ranges = _write(tmp_path / "ranges.json", '{"observation.state": {"gripper.pos": [0, 40]}}')
    root = str(site.root)
    out = _cli_json(
        capsys, "connector", "enroll", root, str(data), "--ranges", str(ranges), "--json"
    )
    assert out["created"] and "out_of_range" in out["quality_shortfalls"]
    cat = store.get_dataset(site, out["dataset_id"]).catalog
    assert cat[DECLARED_RANGES_KEY] == HONEST  # normalised to floats
    assert cat["@context"][DECLARED_RANGES_KEY] == {"@type": "@json"}

    check = _cli_json(capsys, "quality", "check", root, out["dataset_id"], "--json")
    assert "out_of_range" in [s["check"] for s in check["shortfalls"]]
    res = run_checks(site, out["dataset_id"], publish=False).suite
    assert res.flagged_by("out_of_range") == {PLANTED_EPISODE}
    assert res.thresholds["limits_source"] == "declared+robust"
    assert res.thresholds["limits"]["s_5"] == [0.0, 40.0]

    # the control: the same data, no declaration, nothing out of range
    other = tmp_path / "other"
    assert main(["connector", "init", str(other), "--org", "Other"]) == 0
    capsys.readouterr()
    plain = _cli_json(capsys, "connector", "enroll", str(other), str(data), "--json")
    assert plain["dataset_id"] == out["dataset_id"]  # the declaration is no part of the data
    assert "out_of_range" not in plain["quality_shortfalls"]
    other_entry = store.get_dataset(Site.open(other), plain["dataset_id"]).catalog
    assert DECLARED_RANGES_KEY not in other_entry


def test_a_declaration_that_widens_hides_nothing(site, tmp_path) -> None:
    """A holder declaring every joint within +-1e9 cannot hide a gross value: the
    declaration only narrows the data's own limits (suite.effective_limits). Ten episodes
    of the real Unitree G1 recording, the left shoulder at 50 rad in one of them."""
    data = small_v21(tmp_path / "g1", n=10)
    f = data / "data" / "chunk-000" / "episode_000004.parquet"
    t = pq.read_table(f)
    i = t.schema.get_field_index("observation.state")
    s = np.stack(t["observation.state"].to_numpy(zero_copy_only=False)).astype(np.float32)
    s[100:110, 0] = 50.0
    col = pa.array(list(s), type=t.schema.field(i).type)
    pq.write_table(t.set_column(i, t.schema.field(i), col), f)

    names = json.loads((UNITREE / "meta/info.json").read_text())["features"]["action"]["names"]
    names = names[0] if isinstance(names[0], list) else names
    lie = {feat: {n: [-1e9, 1e9] for n in names} for feat in ("observation.state", "action")}
    r = enroll(site, data, declared_ranges=lie)
    rec = store.get_dataset(site, r.dataset_id)
    assert rec.state_names == names and rec.catalog[DECLARED_RANGES_KEY] == lie
    res = run_checks(site, r.dataset_id, publish=False).suite
    assert res.flagged_by("out_of_range") == {4}
    assert res.thresholds["limits_source"] == "declared+robust"
    assert res.thresholds["limits"]["s_0"][1] < 1.0  # the data's own fence, not the claim


def test_a_declaration_that_misses_the_data_still_applies(site, tmp_path) -> None:
    """A declared range that no clean value fits (a lie the other way, or the wrong units)
    is not dropped: every episode leaves it, so every episode is flagged."""
    r = enroll(site, SO101, declared_ranges={"observation.state": {GRIPPER: [100.0, 200.0]}})
    res = run_checks(site, r.dataset_id, publish=False).suite
    assert res.flagged_by("out_of_range") == {0, 1, 2, 3}


BAD_DECLARATIONS = {
    "unknown joint": ({"observation.state": {"elbow": [0, 1]}}, "observation.state has no 'elbow'"),
    "action name as state": ({"action": {"state_0": [0, 1]}}, "action has no 'state_0'"),
    "lo > hi": ({"observation.state": {GRIPPER: [40, 0]}}, "needs lo < hi"),
    "lo == hi": ({"observation.state": {GRIPPER: [1, 1]}}, "needs lo < hi"),
    "NaN": ({"observation.state": {GRIPPER: [float("nan"), 1]}}, "finite"),
    "infinity": ({"observation.state": {GRIPPER: [0, float("inf")]}}, "finite"),
    "string bounds": ({"observation.state": {GRIPPER: "12"}}, "must be [lo, hi]"),
    "string numbers": ({"observation.state": {GRIPPER: ["0", "1"]}}, "is not a number"),
    "booleans": ({"observation.state": {GRIPPER: [False, True]}}, "is not a number"),
    "three numbers": ({"observation.state": {GRIPPER: [0, 1, 2]}}, "must be [lo, hi]"),
    "a mapping": ({"observation.state": {GRIPPER: {"lo": 0, "hi": 1}}}, "must be [lo, hi]"),
    "unknown feature": ({"observation.images": {GRIPPER: [0, 1]}}, "unknown feature"),
    "feature not a map": ({"action": [[0, 1]]}, "must map names"),
    "not an object": ([["gripper.pos", 0, 1]], "must be a JSON object"),
    "nothing declared": ({}, "no range declared"),
    "empty feature": ({"action": {}}, "no range declared"),
}


@pytest.mark.parametrize("case", sorted(BAD_DECLARATIONS))
def test_a_bad_declaration_refuses_and_leaves_nothing(busy_site, case) -> None:
    site = busy_site
    declared, why = BAD_DECLARATIONS[case]
    before = _everything(site)
    with pytest.raises(RangesError, match=why.replace("[", r"\[").replace("]", r"\]")):
        enroll(site, SO101, declared_ranges=declared)
    assert _everything(site) == before
    assert len(store.list_datasets(site)) == 1


BAD_FILES = {
    "not JSON": ("{'observation.state': {}}", "is not JSON"),
    "truncated": ('{"observation.state": {"gripper.pos": [0, ', "is not JSON"),
    "NaN literal": ('{"observation.state": {"gripper.pos": [NaN, 1]}}', "NaN is not a number"),
    "Infinity literal": (
        '{"observation.state": {"gripper.pos": [0, Infinity]}}',
        "Infinity is not a number",
    ),
    "overflow to infinity": ('{"observation.state": {"gripper.pos": [0, 1e999]}}', "finite"),
    # json would keep the second silently: which range did the holder mean?
    "a name twice": (
        '{"observation.state": {"gripper.pos": [0, 40], "gripper.pos": [-1e9, 1e9]}}',
        "names 'gripper.pos' twice",
    ),
    "not UTF-8": (b'{"action": {"\xff": [0, 1]}}', "not UTF-8"),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, "not JSON|must be a JSON object"),
    "unknown joint": ('{"action": {"wrist": [0, 1]}}', "action has no 'wrist'"),
    "yaml": ("observation.state:\n  gripper.pos: [0, 40]\n", "is not JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_ranges_file_is_a_clear_error_and_leaves_nothing(busy_site, tmp_path, capsys, case):
    site = busy_site
    text, why = BAD_FILES[case]
    f = _write(tmp_path / "ranges.json", text)
    before = _everything(site)
    rc = main(["connector", "enroll", str(site.root), str(SO101), "--ranges", str(f)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "error:" in err
    assert re.search(why, err), err
    assert _everything(site) == before
    assert len(store.list_datasets(site)) == 1


def test_a_missing_ranges_file_or_a_folder_is_refused(busy_site, tmp_path, capsys) -> None:
    site = busy_site
    before = _everything(site)
    for f in (tmp_path / "absent.json", tmp_path):
        rc = main(["connector", "enroll", str(site.root), str(SO101), "--ranges", str(f)])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
    assert _everything(site) == before


def test_a_name_two_columns_share_is_ambiguous() -> None:
    with pytest.raises(RangesError, match="ambiguous: the dataset has 2 columns"):
        check_ranges({"action": {"x": [0, 1]}}, ["x"], ["x", "y", "x"])
    assert check_ranges({"action": {"y": (0, 1)}}, ["x"], ["x", "y", "x"]) == {
        "action": {"y": [0.0, 1.0]}
    }


def test_a_huge_file_is_not_read_whole(tmp_path) -> None:
    f = _write(tmp_path / "big.json", " " * (2 << 20) + "{}")
    with pytest.raises(RangesError, match="larger than"):
        load_ranges(f)


def test_re_enrolling_with_another_declaration_is_refused(site) -> None:
    """The content is enrolled once; a second declaration is not silently dropped (the
    holder would believe the check applies it) nor silently replaces the first."""
    first = enroll(site, SO101, declared_ranges=HONEST)
    before = _everything(site)
    other = {"observation.state": {GRIPPER: [0.0, 50.0]}}
    with pytest.raises(RangesError, match=r"already enrolled .* with other declared ranges"):
        enroll(site, SO101, declared_ranges=other)
    assert _everything(site) == before
    # the same declaration (as ints), or none at all: the idempotent re-enrollment
    same = {"observation.state": {GRIPPER: [0, 40]}}
    assert not enroll(site, SO101, declared_ranges=same).created
    assert not enroll(site, SO101).created
    assert _everything(site) == before
    assert store.get_dataset(site, first.dataset_id).catalog[DECLARED_RANGES_KEY] == HONEST


def test_declaring_ranges_for_content_enrolled_without_is_refused(site) -> None:
    enroll(site, SO101)
    before = _everything(site)
    with pytest.raises(RangesError, match="without declared ranges"):
        enroll(site, SO101, declared_ranges=HONEST)
    assert _everything(site) == before


def test_the_entry_is_json_ld_with_a_json_literal_and_the_term_is_declared(site) -> None:
    """The declaration is one rdf:JSON literal (its names are not read as terms), and
    robot.ttl declares every robot: term the stored entry uses."""
    r = enroll(site, SO101, declared_ranges=HONEST)
    cat = store.get_dataset(site, r.dataset_id).catalog
    g = Graph().parse(data=json.dumps(cat), format="json-ld")
    term = URIRef(ROBOT_NS + "declaredRanges")
    (value,) = list(g.objects(None, term))
    assert isinstance(value, Literal) and value.datatype == RDF.JSON
    assert json.loads(str(value)) == HONEST
    vocab = Graph().parse(Path(__file__).parents[2] / "dataspace/connectors/robot.ttl")
    assert (term, RDFS.range, RDF.JSON) in vocab
    used = {k.split(":", 1)[1] for k in cat if k.startswith("robot:")}
    assert all((URIRef(ROBOT_NS + t), RDF.type, None) in vocab for t in used), used


# --- one format, one check: dataspace.quality.ranges ---------------------------------------


def test_the_format_module_loads_no_heavy_library() -> None:
    """Enrollment reads a declaration without Great Expectations (the quality suite's ~4 s);
    the shared format module loads none of GE, pandas, DuckDB or pyarrow."""
    heavy = ("great_expectations", "pandas", "duckdb", "pyarrow")
    for module, banned in (
        ("dataspace.connectors.ranges", heavy[:1]),
        ("dataspace.quality.ranges", heavy),
    ):
        code = f"import {module}, sys; print([m for m in {banned!r} if m in sys.modules])"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "[]", (module, out)


def test_one_check_one_error_both_callers_keep_their_types() -> None:
    """The connector's RangesError is the shared check's (a QualityError) and an
    EnrollError (exit code 2); the quality reader raises the shared one (exit code 1)."""
    assert issubclass(RangesError, shared.RangesError)
    assert issubclass(RangesError, suite.QualityError) and issubclass(RangesError, EnrollError)
    assert RangesError.exit_code == 2 and shared.RangesError.exit_code == 1
    assert suite.QualityError is QualityError
    bad = {"observation.state": {"x": [1, 0]}}
    with pytest.raises(shared.RangesError, match="needs lo < hi") as got:
        suite.declared_ranges(bad, ["x"], [])
    assert not isinstance(got.value, EnrollError)
    with pytest.raises(RangesError, match=r"^here\.json: declared ranges: .* needs lo < hi"):
        check_ranges(bad, ["x"], [], "here.json")
    # what the one check accepts, both callers accept, normalised the same
    ok = {"action": {"y": (0, 1)}, "observation.state": {"x": [np.float32(-1), np.int64(2)]}}
    want = {"observation.state": {"x": [-1.0, 2.0]}, "action": {"y": [0.0, 1.0]}}
    assert shared.check_declaration(ok, ["x"], ["x", "y"]) == want
    assert check_ranges(ok, ["x"], ["x", "y"]) == want
    assert suite.declared_ranges(ok, ["x"], ["x", "y"]) == {"s_0": (-1.0, 2.0), "a_1": (0.0, 1.0)}


@pytest.mark.parametrize("case", sorted(BAD_DECLARATIONS))
def test_the_quality_reader_refuses_what_enrollment_refuses(case) -> None:
    declared, why = BAD_DECLARATIONS[case]
    names = json.loads((SO101 / "meta/info.json").read_text())["features"]
    s_names = names["observation.state"]["names"]
    a_names = names["action"]["names"]
    with pytest.raises(shared.RangesError, match=re.escape(why)):
        suite.declared_ranges(declared, s_names, a_names)


# --- the DCAT-AP catalogs carry the declaration ----------------------------------------------


def _declared_in(doc: dict[str, Any]) -> dict[str, Any]:
    """dataset id -> its robot:declaredRanges (a JSON literal, parsed) in a DCAT document."""
    g = Graph().parse(data=json.dumps(doc), format="json-ld")
    out = {}
    for ds, value in g.subject_objects(URIRef(ROBOT_NS + "declaredRanges")):
        assert isinstance(value, Literal) and value.datatype == RDF.JSON
        out[str(ds).rsplit(":", 1)[1]] = json.loads(str(value))
    return out


def test_the_connector_dcat_catalog_carries_the_declaration(busy_site) -> None:
    site = busy_site
    (plain,) = store.list_datasets(site)
    r = enroll(site, SO101, declared_ranges={"observation.state": {GRIPPER: [0, 40]}})
    doc = dcat_catalog(site, "http://connector.example/")
    assert {n["dct:identifier"] for n in doc["dcat:dataset"]} == {r.dataset_id, plain.dataset_id}
    assert _declared_in(doc) == {r.dataset_id: HONEST}  # floats; none for the other dataset


def test_the_hub_dcat_catalog_carries_a_checked_declaration(busy_site) -> None:
    """The hub's catalog takes the declaration from the entry the holder published, and
    only one that passes the format's check (the hub has no state names: shape only)."""
    site = busy_site
    r = enroll(site, SO101, declared_ranges=HONEST)
    (plain,) = [d for d in store.list_datasets(site) if d.dataset_id != r.dataset_id]

    def hub_entry(rec: Any, declared: Any = None) -> dict[str, Any]:
        req = publish_request(site, rec, "http://connector.example/")
        if declared is not None:
            req["dcat"] = {**req["dcat"], DECLARED_RANGES_KEY: declared}
        e = PublishRequest(**req).model_dump(mode="json")  # what the hub stores
        return {**e, "holder": site.identity.key_b64, "holder_name": site.org}

    rec = store.get_dataset(site, r.dataset_id)
    doc = catalog_document(
        catalog_id="urn:test",
        title="t",
        description="d",
        publisher={"@id": "urn:test:hub"},
        datasets=[hub_facts(hub_entry(rec)), hub_facts(hub_entry(plain))],
    )
    assert _declared_in(doc) == {r.dataset_id: HONEST}
    for tampered in (
        {"observation.state": {GRIPPER: [40, 0]}},
        {"observation.state": {GRIPPER: ["0", "40"]}},
        {"observation.images": {GRIPPER: [0, 40]}},
        {},
        "0..40",
    ):
        assert hub_facts(hub_entry(rec, tampered)).declared_ranges is None, tampered


# --- declared, changed or cleared after enrollment: connector ranges --------------------------


def _log_kinds(site: Site) -> list[str]:
    return [json.loads(e)["kind"] for e in open_site_log(site).entries()]


def _ranges_entries(site: Site) -> list[dict[str, Any]]:
    """The site log's ``dataset.ranges`` entries, signature checked."""
    return [
        ev.fields
        for ev in map(verify_event, open_site_log(site).entries())
        if ev.kind == "dataset.ranges"
    ]


def _verify_log(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    """``dataspace audit verify`` of the site's log, trusting the site's own key."""
    trusted = _write(site.root.parent / "trusted", f"{site.vkey_path}\n")
    args = ["audit", "verify", str(site.root), "--trusted-keys", str(trusted)]
    assert main([*args, "--allow-unanchored"]) == 0, capsys.readouterr()
    capsys.readouterr()


def test_ranges_declared_after_enrollment_reach_catalog_check_and_log(site, tmp_path, capsys):
    """Enrolled without ranges, the planted 45 passes (inside the data's own fences);
    declared afterwards through the CLI, the catalog carries the declaration, the re-run
    quality check flags the planted episode, and the log records it before the check."""
    data = _planted(tmp_path / "so101", 45.0)
    r = enroll(site, data)
    assert run_checks(site, r.dataset_id, publish=False).suite.flagged_by("out_of_range") == set()
    ranges = _write(tmp_path / "ranges.json", '{"observation.state": {"gripper.pos": [0, 40]}}')
    n = open_site_log(site).size
    out = _cli_json(
        capsys, "connector", "ranges", str(site.root), r.dataset_id, "--ranges", str(ranges),
        "--json",
    )  # fmt: skip
    assert out["dataset_id"] == r.dataset_id and out["declared_ranges"] == HONEST
    assert out["changed"] and out["quality"] is not None
    assert "out_of_range" in out["quality_shortfalls"]
    cat = store.get_dataset(site, r.dataset_id).catalog
    assert cat[DECLARED_RANGES_KEY] == HONEST
    res = run_checks(site, r.dataset_id, publish=False).suite
    assert res.flagged_by("out_of_range") == {PLANTED_EPISODE}
    assert res.thresholds["limits_source"] == "declared+robust"
    # the log: the declaration first, then the quality report that applied it
    assert _log_kinds(site)[n:] == ["dataset.ranges", "quality.reported"]
    (entry,) = _ranges_entries(site)
    assert entry["dataset_id"] == r.dataset_id and entry["fingerprint"] == r.fingerprint
    assert entry["ranges"] == HONEST and entry["previous"] is None
    assert entry["actor"]["key"] == site.identity.key_b64
    _verify_log(site, capsys)


def test_ranges_changed_then_cleared(site, capsys) -> None:
    r = enroll(site, SO101, declared_ranges=HONEST)
    wider = {"observation.state": {GRIPPER: [-5, 50]}, "action": {GRIPPER: [0, 60]}}
    rec = set_declared_ranges(site, r.dataset_id, wider)
    want = {"observation.state": {GRIPPER: [-5.0, 50.0]}, "action": {GRIPPER: [0.0, 60.0]}}
    assert rec.catalog[DECLARED_RANGES_KEY] == want
    assert store.get_dataset(site, r.dataset_id).catalog[DECLARED_RANGES_KEY] == want
    res = run_checks(site, r.dataset_id, publish=False).suite
    assert res.thresholds["limits"]["s_5"][1] <= 50.0

    out = _cli_json(
        capsys, "connector", "ranges", str(site.root), r.dataset_id, "--clear", "--no-quality",
        "--json",
    )  # fmt: skip
    assert out == {"dataset_id": r.dataset_id, "declared_ranges": None, "changed": True,
                   "quality": None}  # fmt: skip
    cat = store.get_dataset(site, r.dataset_id).catalog
    assert DECLARED_RANGES_KEY not in cat
    assert cat["dct:identifier"] == r.dataset_id  # the rest of the entry as it was
    res = run_checks(site, r.dataset_id, publish=False).suite
    assert res.thresholds["limits_source"] != "declared+robust"
    assert [(e["previous"], e["ranges"]) for e in _ranges_entries(site)] == [
        (HONEST, want),
        (want, None),
    ]
    # clearing what is not declared changes nothing and logs nothing
    n = open_site_log(site).size
    assert set_declared_ranges(site, r.dataset_id, None).catalog == cat
    assert open_site_log(site).size == n
    _verify_log(site, capsys)


def test_the_same_declaration_again_logs_nothing(site, tmp_path, capsys) -> None:
    """The stored declaration (floats) given again (as ints, as a tuple): no write, no
    log entry, no quality re-run."""
    r = enroll(site, SO101, declared_ranges=HONEST)
    before = _everything(site)
    same = _write(tmp_path / "same.json", '{"observation.state": {"gripper.pos": [0, 40]}}')
    out = _cli_json(
        capsys, "connector", "ranges", str(site.root), r.dataset_id, "--ranges", str(same), "--json"
    )
    assert out["declared_ranges"] == HONEST and not out["changed"] and out["quality"] is None
    assert set_declared_ranges(site, r.dataset_id, {"observation.state": {GRIPPER: (0, 40)}})
    assert _everything(site) == before


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_ranges_file_declares_nothing(busy_site, tmp_path, capsys, case) -> None:
    site = busy_site
    (rec,) = store.list_datasets(site)
    text, why = BAD_FILES[case]
    f = _write(tmp_path / "ranges.json", text)
    before = _everything(site)
    rc = main(["connector", "ranges", str(site.root), rec.dataset_id, "--ranges", str(f)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and err.startswith("error:") and len(err.splitlines()) == 1
    assert re.search(why, err), err
    assert _everything(site) == before


@pytest.mark.parametrize("case", sorted(BAD_DECLARATIONS))
def test_a_bad_declaration_declares_nothing(busy_site, case) -> None:
    site = busy_site
    (rec,) = store.list_datasets(site)
    declared, why = BAD_DECLARATIONS[case]
    before = _everything(site)
    with pytest.raises(RangesError, match=re.escape(why)):
        set_declared_ranges(site, rec.dataset_id, declared)
    assert _everything(site) == before


def test_names_are_the_datasets_own(busy_site) -> None:
    """SO-101's gripper is no joint of the Unitree G1 dataset the site holds; its own
    names are, and only in their own feature."""
    site = busy_site
    (rec,) = store.list_datasets(site)
    before = _everything(site)
    with pytest.raises(RangesError, match=r"observation\.state has no 'gripper\.pos'"):
        set_declared_ranges(site, rec.dataset_id, HONEST)
    assert _everything(site) == before
    g1 = {"action": {rec.action_names[4]: [-2, 2]}}
    assert set_declared_ranges(site, rec.dataset_id, g1).catalog[DECLARED_RANGES_KEY] == {
        "action": {rec.action_names[4]: [-2.0, 2.0]}
    }


def test_a_declaration_the_log_cannot_record_is_not_applied(site, monkeypatch) -> None:
    """The log entry comes first: when it cannot be written (the record call fails, or
    the log's storage does: a full disk), the catalog entry is as it was."""
    r = enroll(site, SO101)
    before = _everything(site)

    def refuse(*args: Any, **kwargs: Any) -> int:
        raise LogError("the log cannot be written")

    with monkeypatch.context() as m:
        m.setattr(sitelog, "record", refuse)
        with pytest.raises(LogError):
            set_declared_ranges(site, r.dataset_id, HONEST)
    assert _everything(site) == before

    def disk_full(self: Any, *args: Any, **kwargs: Any) -> int:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(TransparencyLog, "append", disk_full)
        with pytest.raises(OSError, match="No space"):
            set_declared_ranges(site, r.dataset_id, HONEST)
    assert _everything(site) == before
    assert DECLARED_RANGES_KEY not in store.get_dataset(site, r.dataset_id).catalog
    # the log working again, the same declaration is applied (and logged once)
    set_declared_ranges(site, r.dataset_id, HONEST)
    assert len(_ranges_entries(site)) == 1


def test_an_unknown_dataset_or_no_choice_is_a_clear_error(busy_site, tmp_path, capsys) -> None:
    site = busy_site
    (rec,) = store.list_datasets(site)
    f = _write(tmp_path / "r.json", '{"action": {"kLeftElbow": [-2, 2]}}')
    before = _everything(site)
    for how in (["--ranges", str(f)], ["--clear"]):
        rc = main(["connector", "ranges", str(site.root), "no-such-dataset", *how])
        err = capsys.readouterr().err
        assert rc == NotFoundError.exit_code, err
        assert "'no-such-dataset' is not enrolled" in err and "Traceback" not in err
    for how in (["--ranges", str(f), "--clear"], []):
        rc = main(["connector", "ranges", str(site.root), rec.dataset_id, *how])
        err = capsys.readouterr().err
        assert rc == 2 and "give one of --ranges FILE or --clear" in err, err
    with pytest.raises(NotFoundError):
        set_declared_ranges(site, "no-such-dataset", None)
    assert _everything(site) == before


def test_an_entry_made_before_the_term_gets_it(site) -> None:
    """A catalog entry whose JSON-LD context does not name robot:declaredRanges (made
    before the term existed) gets the term with the declaration: still one JSON literal."""
    r = enroll(site, SO101)
    cat = store.get_dataset(site, r.dataset_id).catalog
    cat["@context"] = {k: v for k, v in cat["@context"].items() if k != DECLARED_RANGES_KEY}
    with site.db() as con:
        con.execute(
            "UPDATE datasets SET catalog = ? WHERE dataset_id = ?",
            [json.dumps(cat), r.dataset_id],
        )
    entry = set_declared_ranges(site, r.dataset_id, HONEST).catalog
    assert entry["@context"][DECLARED_RANGES_KEY] == {"@type": "@json"}
    g = Graph().parse(data=json.dumps(entry), format="json-ld")
    (value,) = list(g.objects(None, URIRef(ROBOT_NS + "declaredRanges")))
    assert isinstance(value, Literal) and value.datatype == RDF.JSON
    assert json.loads(str(value)) == HONEST
