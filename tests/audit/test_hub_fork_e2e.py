"""The hub cannot show two histories: a forked hub log, with real processes.

A hub and two connectors (``dataspace serve``, the real SO-101 dataset
enrolled at each site) run until both connectors have cosigned the hub's log.
Then the hub equivocates: a second log with the same origin and key whose entry
0 (a holder's ``catalog.published``) is rewritten and re-signed, under freshly
signed checkpoints. Shown to a connector's witness, by the CLI client and by a
second hub process serving the fork (whose own witnessing thread pushes it to
both connectors), it is refused with HTTP 422 (C2SP tlog-witness), the
witnesses keep the real checkpoint they cosigned last and go on cosigning the
real log. ``dataspace audit verify`` names the fork (rule ``fork``) for an
auditor holding the checkpoint of last time, one from before, a witness's own
kept checkpoint, the refused checkpoint the witness kept as evidence, or the
fork's checkpoint against the real log; and ``--witness-quorum`` names the
witnesses that did not cosign it.
"""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.events import make_event
from dataspace.audit.log import TransparencyLog
from dataspace.audit.note import parse_note
from dataspace.audit.witness import Witness
from dataspace.auth.httpsig import HttpSigAuth
from dataspace.net import free_port
from dataspace.site.identity import load_private_key
from tests.audit.space import (
    SITES,
    cli,
    hub_checkpoint,
    running_space,
    size_of,
    wait_for,
    witnesses_of,
)
from tests.services.conftest import Service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory):
    with running_space(tmp_path_factory.mktemp("hub-fork-e2e")) as s:
        yield s


def _refused_request(space) -> None:
    """A signed request the hub refuses: the hub appends ``access.refused`` to its log."""
    with httpx.Client(base_url=space["hub"].url, auth=HttpSigAuth(space["auditor"].key)) as c:
        assert c.post("/v1/catalog", json={"dataset_id": "x"}).status_code >= 400


def _fully_cosigned(space, above: int = 0) -> bytes:
    """Wait until both connectors cosigned the hub's latest checkpoint (of more than
    ``above`` entries); returns that witnessed checkpoint."""
    url, hub_name = space["hub"].url, space["hub_name"]

    def done() -> bool:
        w = hub_checkpoint(url)
        latest = hub_checkpoint(url, witnessed=False)
        return (
            witnesses_of(w, hub_name) == set(SITES)
            and size_of(w) == size_of(latest)
            and size_of(w) > above
        )

    wait_for(done, f"both connectors to cosign the hub's log beyond size {above}")
    return hub_checkpoint(url)


def _rewritten(entry: bytes, key, actor: str, **changes) -> bytes:
    """The same event with ``changes``, re-signed by the hub's key (a forged history)."""
    obj = json.loads(entry)
    for k in ("sig", "actor", "v"):
        obj.pop(k)
    kind = obj.pop("kind")
    obj.update(changes)
    return make_event(kind, key, actor, **obj)


def _witness_latest(site, origin: str):
    """The checkpoint of ``origin`` that the connector's witness cosigned last."""
    return Witness(site.root / "witness", site.name, site.key, []).latest(origin)


def _verify(capsys, source: str, space, *extra: str) -> tuple[int, dict]:
    code, out, _ = cli(
        capsys, "audit", "verify", source, "--trusted-keys", str(space["trusted"]),
        "--key", str(space["auditor"].key_path), "--json", *extra,
    )  # fmt: skip
    return code, json.loads(out)


def _rules(rep: dict) -> list[str]:
    return [v["rule"] for v in rep["violations"]]


def test_a_forked_hub_log_is_refused_by_the_witnesses_and_named_by_auditors(space, capsys) -> None:
    tmp, hub, hub_name = space["tmp"], space["hub"], space["hub_name"]
    site_a, site_b = space["sites"]
    # --- the real history, cosigned by both connectors; auditors keep checkpoints
    early = _fully_cosigned(space)  # an auditor's checkpoint from well before the fork
    _refused_request(space)
    kept = _fully_cosigned(space, above=size_of(early))  # the checkpoint of last time
    n = size_of(kept)
    (tmp / "early").write_bytes(early)
    (tmp / "kept").write_bytes(kept)
    real = TransparencyLog.open(tmp / "hub" / "log")
    origin = real.origin  # a URL-style origin (dataspace.audit.witnesskey.log_origin)
    entries = real.entries(0, n)
    assert json.loads(entries[0])["kind"] == "catalog.published"

    # --- the hub equivocates: same origin and key, entry 0 rewritten, checkpoints re-signed
    key = load_private_key(tmp / "hub" / "hub.key")
    forged = _rewritten(entries[0], key, hub_name, quality_score=3.0)
    assert forged != entries[0]
    same = TransparencyLog.create(tmp / "fork-same" / "log", origin, key)
    same.append_many([forged, *entries[1:]])
    fork_cp = checkpoint_of_note(same.checkpoint())
    assert fork_cp.size == n and fork_cp.root != checkpoint_of_note(kept).root

    # shown to site-a's witness (the C2SP client the services use): refused, 422
    code, out, err = cli(
        capsys, "audit", "witness", str(same.directory), "--witness",
        space["connectors"][0].url, "--witness-key", str(site_a.root / "site.key.pub"), "--json",
    )  # fmt: skip
    res = json.loads(out)
    assert code == 5 and not res["ok"] and res["cosignatures"] == [], out + err
    (e,) = res["errors"]
    assert e["status"] == 422 and e["witness"] == "site-a", e
    assert "fork" in e["error"] and f"size {n}" in e["error"], e
    # the witness keeps the real checkpoint it cosigned last, and the refused one as evidence
    latest = _witness_latest(site_a, origin)
    assert latest.size >= n and latest.root == real.root(latest.size)
    evidence = Witness(site_a.root / "witness", site_a.name, site_a.key, []).refused(origin)
    assert [checkpoint_of_note(e) for e in evidence] == [fork_cp]
    (tmp / "evidence").write_bytes(evidence[0])
    # which any auditor checks against the real log: two signed roots for one size
    code, rep = _verify(capsys, hub.url, space, "--previous-checkpoint", str(tmp / "evidence"))
    assert code == 4 and _rules(rep) == ["fork"] and f"size {n}" in rep["first_violation"]

    # --- a hub process serving a grown fork: its witnessing thread pushes it to both
    fork_dir = tmp / "fork-hub"
    shutil.copytree(
        tmp / "hub", fork_dir, ignore=shutil.ignore_patterns("log", "witness", "nonces")
    )
    grown = TransparencyLog.create(fork_dir / "log", origin, key)
    extra = [
        make_event("access.refused", key, hub_name, reason="forged", caller="nobody")
        for _ in range(2)
    ]
    grown.append_many([forged, *entries[1:], *extra])
    grown.close()
    args = ["hub", "--data", str(fork_dir)]
    for s in space["sites"]:
        args += ["--trust", str(s.root / "site.key.pub")]
    args += ["--trust", str(space["auditor"].key_path) + ".pub"]
    fork_hub = Service(args, free_port(), tmp / "fork-hub.log")
    try:
        fork_hub.wait_ready()

        # both witnesses refuse it (the forked hub's own witness status says so)
        def refusals() -> dict[str, int | None]:
            auth = HttpSigAuth(space["auditor"].key)
            r = httpx.get(fork_hub.url + "/v1/log/witnesses", auth=auth, timeout=30)
            r.raise_for_status()
            return {w["witness"]: w["status"] for w in r.json()["witnesses"]}

        wait_for(
            lambda: refusals() == {"site-a": 422, "site-b": 422},
            "both connectors' witnesses to refuse the forked hub's checkpoint",
        )
        served = hub_checkpoint(fork_hub.url)
        assert size_of(served) == n + 2 and witnesses_of(served, hub_name) == set()
        for site in (site_a, site_b):
            w = _witness_latest(site, origin)
            assert w.size >= n and w.root == real.root(w.size), site.name

        # --- the auditors name the fork
        # with the checkpoint kept from last time, and the witness quorum
        code, rep = _verify(
            capsys, fork_hub.url, space, "--previous-checkpoint", str(tmp / "kept"),
            "--witness-quorum", "2",
        )  # fmt: skip
        assert code == 4 and not rep["ok"]
        assert {"fork", "witness-quorum"} <= set(_rules(rep)), rep["violations"]
        fork = next(v for v in rep["violations"] if v["rule"] == "fork")
        assert fork["values"]["size"] == n
        quorum = next(v for v in rep["violations"] if v["rule"] == "witness-quorum")
        assert {"site-a", "site-b"} <= set(quorum["values"]["missing"])
        # with a checkpoint from before the fork (smaller than the fork's tree)
        code, rep = _verify(
            capsys, fork_hub.url, space, "--previous-checkpoint", str(tmp / "early")
        )
        assert code == 4 and _rules(rep) == ["fork"], rep["violations"]
        assert rep["violations"][0]["values"]["size"] == size_of(early)
        # with a witness's own kept checkpoint (its state file: the log-signed note)
        state = Witness(site_b.root / "witness", site_b.name, site_b.key, []).state_path(origin)
        code, rep = _verify(capsys, fork_hub.url, space, "--previous-checkpoint", str(state))
        assert code == 4 and _rules(rep) == ["fork"], rep["violations"]
        # the same-size fork (a folder), against the checkpoint kept: two roots for size n
        code, rep = _verify(
            capsys, str(same.directory), space, "--previous-checkpoint", str(tmp / "kept")
        )
        assert code == 4 and "fork" in _rules(rep) and f"size {n}" in rep["first_violation"]
        # the fork dressed in the real checkpoint's cosignatures: they do not verify
        real_cosigs = b"".join(s.line() for s in parse_note(kept).signatures if s.name in SITES)
        same.checkpoint_path.write_bytes(same.checkpoint() + real_cosigs)
        code, rep = _verify(capsys, str(same.directory), space, "--witness-quorum", "2")
        assert code == 4 and _rules(rep)[0] == "witness-signature", rep["violations"]
        assert "witness-quorum" in _rules(rep)
        # an auditor shown the fork first: the real log is smaller than what it saw
        (tmp / "fork-checkpoint").write_bytes(hub_checkpoint(fork_hub.url, witnessed=False))
        code, rep = _verify(
            capsys, hub.url, space, "--previous-checkpoint", str(tmp / "fork-checkpoint")
        )
        assert code == 4 and _rules(rep) == ["rollback"], rep["violations"]
    finally:
        fork_hub.stop()

    # --- the real log still verifies, with the quorum and the checkpoint kept
    code, rep = _verify(
        capsys, hub.url, space, "--previous-checkpoint", str(tmp / "kept"),
        "--witness-quorum", "2",
    )  # fmt: skip
    assert code == 0 and rep["ok"], rep["violations"]
    # and the witnesses go on cosigning the real history
    while real.size <= n + 2:
        _refused_request(space)
    after = _fully_cosigned(space, above=n + 2)
    assert witnesses_of(after, hub_name) == set(SITES)
    # once it has outgrown the fork, the auditor shown the fork first names the fork
    code, rep = _verify(
        capsys, hub.url, space, "--previous-checkpoint", str(tmp / "fork-checkpoint"),
        "--witness-quorum", "2",
    )  # fmt: skip
    assert code == 4 and _rules(rep) == ["fork"], rep["violations"]
    assert rep["violations"][0]["values"]["size"] == n + 2
