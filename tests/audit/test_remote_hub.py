"""An auditor verifies the real hub's log over HTTP, signing its requests.

The hub serves entries and proofs only to holders, auditors and operators (the
log names consumers and contracts), so `dataspace audit verify URL` needs
`--key`; without it the refusal must say so, never a false "verified".
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from dataspace.auth.httpsig import HttpSigAuth
from dataspace.cli import main
from dataspace.hub.app import create_app
from dataspace.net import free_port
from dataspace.site.identity import load_private_key, new_identity


@pytest.fixture
def hub(tmp_path: Path):
    auditor = new_identity(tmp_path / "keys" / "auditor.key", name="auditor", role="auditor")
    consumer_key = tmp_path / "keys" / "bob.key"
    new_identity(consumer_key, name="bob", role="consumer")
    app = create_app(tmp_path / "hub", trust=[auditor])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    # a consumer reading the log is refused, and the hub logs the refusal: the log
    # is not empty, so verifying it needs entries that only signed callers may read
    with httpx.Client(base_url=url, auth=HttpSigAuth(load_private_key(consumer_key))) as c:
        info = c.get("/v1/hub").json()
        assert c.get("/v1/log/entries", params={"start": 0, "end": 1}).status_code == 403
        assert c.get("/v1/hub").json()["log_size"] >= 1
    trusted = tmp_path / "trusted-keys"
    trusted.write_text(info["vkey"] + "\n")
    try:
        yield url, tmp_path / "keys" / "auditor.key", consumer_key, trusted
    finally:
        server.should_exit = True
        t.join(timeout=10)


def test_auditor_verifies_hub_log_over_http(hub, capsys) -> None:
    url, auditor_key, _, trusted = hub
    args = ["audit", "verify", url, "--trusted-keys", str(trusted), "--key", str(auditor_key)]
    # a hub with no holder has no witness yet: its log is self-consistent only
    code = main([*args, "--allow-unanchored"])
    err = capsys.readouterr().err
    assert code == 0 and "self-consistent only" in err, err
    assert main(args) == 4 and "unanchored" in capsys.readouterr().err


def test_unsigned_or_consumer_requests_are_refused_with_a_hint(hub, capsys) -> None:
    url, _, consumer_key, trusted = hub
    capsys.readouterr()
    code = main(["audit", "verify", url, "--trusted-keys", str(trusted)])
    err = capsys.readouterr().err
    assert (
        code != 0 and "--key" in err and "verified" not in err.lower().replace("not verified", "")
    )
    code = main(
        ["audit", "verify", url, "--trusted-keys", str(trusted), "--key", str(consumer_key)]
    )
    assert code != 0 and "403" in capsys.readouterr().err
