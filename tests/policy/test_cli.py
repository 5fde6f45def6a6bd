"""The policy area's commands, run as the user runs them (subprocesses)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def sub(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``dataspace ARGS`` as a user does (a new process; slow: every area's imports)."""
    p = subprocess.run(
        [sys.executable, "-m", "dataspace", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    if ok:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def ds(capsys: pytest.CaptureFixture[str]):
    """Run ``dataspace ARGS`` in this process, through the same ``main`` (exit codes, messages)."""
    from dataspace.cli import main

    def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        p = subprocess.CompletedProcess(args, code, out, err)
        if ok:
            assert code == 0, err
        return p

    return run


def test_keys_new_makes_a_private_file_0600(tmp_path: Path, ds) -> None:
    key = tmp_path / "alice.key"
    p = sub("keys", "new", key, "--name", "alice", "--role", "consumer")
    out = json.loads(p.stdout)
    assert set(out) == {"name", "role", "public_key"} and out["role"] == "consumer"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert json.loads((tmp_path / "alice.key.pub").read_text()) == out
    assert "PRIVATE" not in p.stdout
    again = ds("keys", "new", key, "--name", "alice", "--role", "consumer", ok=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    bad = ds("keys", "new", tmp_path / "x.key", "--name", "x", "--role", "king", ok=False)
    assert bad.returncode == 2
    rot = json.loads(ds("keys", "rotate", key).stdout)
    assert rot["old_key"] == out["public_key"] and rot["new_key"] != out["public_key"]


def test_policy_contract_budget_flow(_enrolled_template: Path, tmp_path: Path, ds) -> None:
    site = tmp_path / "site"
    shutil.copytree(_enrolled_template, site)
    alice, bob = tmp_path / "alice.key", tmp_path / "bob.key"
    ds("keys", "new", alice, "--name", "alice", "--role", "consumer")
    ds("keys", "new", bob, "--name", "bob", "--role", "consumer")
    dataset = json.loads(ds("connector", "list", site, "--json").stdout)
    did = (dataset["datasets"] if isinstance(dataset, dict) else dataset)[0]["dataset_id"]

    pub = ds(
        "connector",
        "policy",
        site,
        did,
        "--purpose",
        "research,benchmarking",
        "--consumer",
        f"{alice}.pub",
        "--epsilon",
        "8",
        "--delta",
        "1e-5",
        "--until",
        "2099-01-01",
        "--max-rounds",
        "10",
        "--templates",
        "mlp",
        "--json",
    )
    published = json.loads(pub.stdout)
    assert published["epsilon"] == 8 and len(published["policy_sha256"]) == 64
    shown = json.loads(ds("connector", "policy", site, did, "--json").stdout)
    assert shown == published["policy"]

    base = [
        "contract",
        "request",
        "--site",
        site,
        "--dataset",
        did,
        "--purpose",
        "research",
        "--epsilon",
        "3",
        "--rounds",
        "3",
        "--template",
        "mlp",
        "--until",
        "2098-06-01",
    ]
    agreed = json.loads(sub(*base, "--key", alice, "--json").stdout)
    assert agreed["state"] == "agreed" and agreed["contract_id"]
    assert agreed["signatures"]["holder"] and agreed["signatures"]["consumer"]
    assert agreed["terms"]["epsilon"] == 3 and agreed["terms"]["consumer"] in (
        alice.with_suffix(".key.pub").read_text()
    )

    refused = sub(*base, "--key", bob, "--json", ok=False)
    assert refused.returncode == 3
    assert "not an assignee" in json.loads(refused.stdout)["reasons"][0]
    assert "not an assignee" in refused.stderr
    over = ds(*[a if a != "3" else "6" for a in base], "--key", alice, ok=False)
    assert over.returncode == 3 and "unreserved" in over.stderr

    budget = json.loads(sub("connector", "budget", site, "--json").stdout)
    (row,) = budget["datasets"]
    assert (row["budget"], row["reserved"], row["spent"], row["remaining"]) == (8, 3, 0, 5)
    assert json.loads(ds("connector", "budget", site, did, "--json").stdout) == budget
    table = ds("connector", "budget", site).stdout
    assert did in table and "remaining" in table

    listed = json.loads(ds("contract", "list", "--site", site, "--json").stdout)
    assert [c["contract_id"] for c in listed["contracts"]] == [agreed["contract_id"]]
    assert json.loads(
        ds("contract", "list", "--site", site, "--consumer", f"{bob}.pub", "--json").stdout
    ) == {"contracts": []}


def test_manual_approval_and_bad_policy_files(_enrolled_template: Path, tmp_path: Path, ds) -> None:
    site = tmp_path / "site"
    shutil.copytree(_enrolled_template, site)
    alice = tmp_path / "alice.key"
    ds("keys", "new", alice, "--name", "alice", "--role", "consumer")
    did = "so101-record-test-lerobot-v3"  # by name

    bad = tmp_path / "bad.jsonld"
    bad.write_text('{"@type": "Offer",')
    p = ds("connector", "policy", site, did, "--file", bad, ok=False)
    assert p.returncode == 1 and "not JSON" in p.stderr and "Traceback" not in p.stderr

    ds("connector", "policy", site, did, "--epsilon", "4", "--delta", "1e-6", "--manual-approval")
    doc = json.loads(ds("connector", "policy", site, did, "--json").stdout)
    doc["permission"][0]["constraint"].append(
        {"leftOperand": "spatial", "operator": "eq", "rightOperand": "EU"}
    )
    unknown = tmp_path / "unknown.jsonld"
    unknown.write_text(json.dumps(doc))
    p = ds("connector", "policy", site, did, "--file", unknown, ok=False)
    assert p.returncode == 1
    assert "$.permission[0].constraint[2].leftOperand: unknown left operand 'spatial'" in p.stderr

    req = [
        "contract",
        "request",
        "--site",
        site,
        "--dataset",
        did,
        "--key",
        alice,
        "--purpose",
        "research",
        "--epsilon",
        "1",
        "--rounds",
        "2",
        "--until",
        "2099-01-01",
        "--json",
    ]
    pending = json.loads(ds(*req).stdout)
    assert pending["state"] == "pending" and pending["signatures"]["holder"] is None
    cid = pending["contract_id"]
    approved = json.loads(ds("contract", "approve", "--site", site, cid, "--json").stdout)
    assert approved["state"] == "agreed" and approved["signatures"]["holder"]
    second = json.loads(ds(*req).stdout)
    rejected = json.loads(
        ds("contract", "reject", "--site", site, second["contract_id"], "--json").stdout
    )
    assert rejected["state"] == "rejected"
    (row,) = json.loads(ds("connector", "budget", site, "--json").stdout)["datasets"]
    assert row["reserved"] == 1


def test_keys_rotate_site_then_policy_still_publishes(
    _enrolled_template: Path, tmp_path: Path, ds
) -> None:
    site = tmp_path / "site"
    shutil.copytree(_enrolled_template, site)
    before = json.loads((site / "site.key.pub").read_text())["public_key"]
    rot = json.loads(ds("keys", "rotate", "--site", site).stdout)
    assert rot["old_key"] == before and rot["new_key"] != before
    assert json.loads(ds("keys", "show", site / "site.key").stdout)["public_key"] == rot["new_key"]
    pub = json.loads(
        ds(
            "connector",
            "policy",
            site,
            "so101-record-test-lerobot-v3",
            "--epsilon",
            "1",
            "--delta",
            "1e-6",
            "--json",
        ).stdout
    )
    assert pub["policy"]["assigner"].endswith(rot["new_key"])
    usage = ds("keys", "rotate", ok=False)
    assert usage.returncode == 2 and "give either FILE or --site SITE" in usage.stderr
