"""The logs witness each other, with real processes (DESIGN.md, "Audit log").

A hub and two connectors (``dataspace serve``) on 127.0.0.1, each site with
the real SO-101 dataset enrolled. Appends happen; the services' witnessing
threads push checkpoints; ``dataspace audit verify --witness-quorum 2`` then
holds for the hub (cosigned by both connectors) and each site (cosigned by the
hub and the other connector). A forked copy of a site's log is refused by the
hub's witness (HTTP 422) and fails verification, naming the witnesses that did
not cosign.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.log import TransparencyLog
from dataspace.site.identity import load_private_key
from dataspace.site.log import log_key, record
from tests.audit.space import SITES, cli, running_space, wait_for, witnesses_of

pytestmark = pytest.mark.slow


_witnesses = witnesses_of
_wait = wait_for
_cli = cli


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory):
    with running_space(tmp_path_factory.mktemp("witness-e2e")) as s:
        yield s


def _hub_witnessed(space) -> bytes:
    r = httpx.get(space["hub"].url + "/v1/log/checkpoint", params={"witnessed": "true"})
    r.raise_for_status()
    return r.content


def _hub_latest(space) -> bytes:
    return httpx.get(space["hub"].url + "/v1/log/checkpoint").content


def _services_cosign_each_other_and_verify_with_quorum(space, capsys) -> None:
    hub_name = space["hub_name"]
    # appends in the sites' logs by another process (as the budget ledger does)
    for s in space["sites"]:
        record(s, "quality.reported", dataset_id="so101", score=91.5, report_sha256="ab" * 32)
    # the hub's log: both catalogs were published; both connectors must cosign it
    _wait(
        lambda: (
            _witnesses(_hub_witnessed(space), hub_name) == set(SITES)
            and checkpoint_of_note(_hub_witnessed(space)).size
            == checkpoint_of_note(_hub_latest(space)).size
        ),
        "both connectors to cosign the hub's latest checkpoint",
    )
    # each site log: cosigned by the hub and the other connector, up to the entry just appended
    for s in space["sites"]:
        log = TransparencyLog.open(s.log_dir)
        want = {hub_name, *(n for n in SITES if n != s.name)}
        _wait(
            lambda log=log, name=s.name, want=want: (
                _witnesses(log.witnessed_checkpoint(), name) == want
                and checkpoint_of_note(log.witnessed_checkpoint()).size == log.size
            ),
            f"the hub and the other connector to cosign {s.name}'s log",
        )
    key = str(space["auditor"].key_path)
    trusted = str(space["trusted"])
    code, _, err = _cli(
        capsys, "audit", "verify", space["hub"].url, "--trusted-keys", trusted,
        "--witness-quorum", "2", "--key", key,
    )  # fmt: skip
    assert code == 0, err
    assert "site-a, site-b" in err
    for s in space["sites"]:
        code, out, err = _cli(
            capsys, "audit", "verify", str(s.root), "--trusted-keys", trusted,
            "--witness-quorum", "2", "--json",
        )  # fmt: skip
        rep = json.loads(out)
        other = next(n for n in SITES if n != s.name)
        assert code == 0 and rep["ok"] and rep["witnesses"] == sorted([hub_name, other]), err
        # `audit checkpoint` prints the cosigned note, and an exported bundle keeps them
        code, out, _ = _cli(capsys, "audit", "checkpoint", str(s.root))
        assert code == 0 and f"\u2014 {hub_name} " in out
        bundle = space["tmp"] / f"bundle-{s.name}"
        assert _cli(capsys, "audit", "export", str(s.root), str(bundle))[0] == 0
        assert hub_name in (bundle / "cosignatures").read_text()
        code, _, err = _cli(
            capsys, "audit", "verify", str(bundle), "--trusted-keys", trusted,
            "--witness-quorum", "1",
        )  # fmt: skip
        assert code == 0, err
    # quorum 3 of trusted witnesses site-a, site-b, hub: the hub never cosigns itself
    code, out, err = _cli(
        capsys, "audit", "verify", space["hub"].url, "--trusted-keys", trusted,
        "--witness-quorum", "3", "--key", key, "--json",
    )  # fmt: skip
    rep = json.loads(out)
    assert code == 4 and not rep["ok"]
    assert "witness-quorum" in rep["first_violation"]
    assert f"missing: {hub_name}" in rep["first_violation"]


def _cosignatures_survive_a_newer_checkpoint(space, capsys) -> None:
    """With one connector down, the hub's newer checkpoints lack its cosignature, and
    the auditor still gets the latest checkpoint that both cosigned."""
    hub_name = space["hub_name"]
    before = _hub_witnessed(space)
    assert _witnesses(before, hub_name) == set(SITES)
    space["connectors"][1].stop()  # site-b's connector (and witness) is gone
    # a signed request the hub refuses: it appends access.refused to its log
    auditor = space["auditor"]
    from dataspace.auth.httpsig import HttpSigAuth

    with httpx.Client(base_url=space["hub"].url, auth=HttpSigAuth(auditor.key)) as c:
        assert c.post("/v1/catalog", json={"dataset_id": "x"}).status_code >= 400
    size_before = checkpoint_of_note(before).size
    _wait(
        lambda: (
            checkpoint_of_note(_hub_latest(space)).size > size_before
            and _witnesses(_hub_latest(space), hub_name) == {"site-a"}
        ),
        "site-a alone to cosign the hub's newer checkpoint",
    )
    witnessed = _hub_witnessed(space)
    assert _witnesses(witnessed, hub_name) == set(SITES)  # not lost, not replaced
    assert checkpoint_of_note(witnessed).size >= size_before
    code, _, err = _cli(
        capsys, "audit", "verify", space["hub"].url, "--trusted-keys", str(space["trusted"]),
        "--witness-quorum", "2", "--key", str(auditor.key_path),
    )  # fmt: skip
    assert code == 0, err


def _a_forked_site_log_is_refused_and_fails_verification(space, capsys) -> None:
    site = space["sites"][0]
    real = TransparencyLog.open(site.log_dir)
    kept = real.witnessed_checkpoint()  # what the auditor kept from last time
    n = checkpoint_of_note(kept).size
    assert space["hub_name"] in _witnesses(kept, site.name)
    # the site rewrites its history in a copy: same key and origin (a URL-style one), entry
    # 1 dropped
    fork_root = space["tmp"] / "fork"
    shutil.copytree(site.root, fork_root, ignore=shutil.ignore_patterns("log"))
    forked = TransparencyLog.create(fork_root / "log", real.origin, log_key(site))
    entries = real.entries(0, n)
    forked.append_many([entries[0], *entries[2:]])
    key = load_private_key(site.key_path)
    from dataspace.audit.events import make_event

    forked.append_many(
        [make_event("quality.reported", key, site.identity, dataset_id="so101", score=99.0,
                    report_sha256="cd" * 32) for _ in range(3)]
    )  # fmt: skip
    assert forked.size > n
    code, out, err = _cli(
        capsys, "audit", "witness", str(fork_root), "--witness", space["hub"].url,
        "--witness-key", str(space["hub_witness"]), "--json",
    )  # fmt: skip
    res = json.loads(out)
    assert code == 5 and not res["ok"] and res["cosignatures"] == []
    (e,) = res["errors"]
    assert e["status"] == 422 and "consistency" in e["error"], e
    # the witness still stands by the real history: the real log is cosigned again
    code, out, err = _cli(
        capsys, "audit", "witness", str(site.root), "--witness", space["hub"].url,
        "--witness-key", str(space["hub_witness"]), "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["cosignatures"][0]["verified"], err
    # the auditor: no witness cosigned the fork, and it contradicts the kept checkpoint
    prev = space["tmp"] / "kept-checkpoint"
    prev.write_bytes(kept)
    code, out, err = _cli(
        capsys, "audit", "verify", str(fork_root), "--trusted-keys", str(space["trusted"]),
        "--witness-quorum", "1", "--previous-checkpoint", str(prev), "--json",
    )  # fmt: skip
    rep = json.loads(out)
    assert code == 4
    rules = [v["rule"] for v in rep["violations"]]
    assert "witness-quorum" in rules and "fork" in rules, rules
    quorum = next(v for v in rep["violations"] if v["rule"] == "witness-quorum")
    assert space["hub_name"] in quorum["values"]["missing"]


def test_witnessing_end_to_end(space, capsys) -> None:
    """One scenario in order (xdist may run this module's tests on different workers,
    each with its own services): witnessed, cross-checked, a fork refused, a witness down."""
    _services_cosign_each_other_and_verify_with_quorum(space, capsys)
    _cross_check_site_and_hub(space, capsys)
    _a_forked_site_log_is_refused_and_fails_verification(space, capsys)
    _cosignatures_survive_a_newer_checkpoint(space, capsys)


def _cross_check_site_and_hub(space, capsys) -> None:
    site = space["sites"][0]
    code, out, err = _cli(
        capsys, "audit", "cross-check", str(site.root), space["hub"].url,
        "--key", str(space["auditor"].key_path), "--json",
    )  # fmt: skip
    rep = json.loads(out)
    assert code == 0 and rep["ok"], err
    assert rep["site"] == site.name and rep["hub"] == space["hub_name"]
