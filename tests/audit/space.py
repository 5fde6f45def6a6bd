"""A running data space for the witnessing end-to-end tests: a hub and two connectors.

``dataspace serve`` processes on 127.0.0.1, each site with the real SO-101
dataset enrolled (``dataspace connector init`` / ``enroll``), a trusted-keys
file naming the hub's and the sites' log keys and their witness keys, and an
auditor identity registered at the hub.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dataspace.audit.checkpoint import checkpoint_of_note
from dataspace.audit.note import parse_note
from dataspace.audit.witnesskey import WITNESS_VKEY
from dataspace.cli import main
from dataspace.net import free_port
from dataspace.site.folder import Site
from dataspace.site.identity import load_identity
from tests.conftest import SO101
from tests.services.conftest import Service, make_party, run_cli

SITES = ("site-a", "site-b")


def witnesses_of(note: bytes, origin: str | None = None) -> set[str]:
    """The names that cosigned ``note`` (all its signatures but the log's own, named
    after its origin: a URL-style origin for new logs, not the holder's name)."""
    return {s.name for s in parse_note(note).signatures} - {checkpoint_of_note(note).origin}


def size_of(note: bytes) -> int:
    return checkpoint_of_note(note).size


def wait_for(cond, what: str, timeout: float = 90.0) -> None:
    """Poll ``cond`` until it holds (generous: CI runs two workers on two cores)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``dataspace ARGS`` in process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def hub_checkpoint(url: str, witnessed: bool = True) -> bytes:
    params = {"witnessed": "true"} if witnessed else {}
    r = httpx.get(url + "/v1/log/checkpoint", params=params, timeout=30)
    r.raise_for_status()
    return r.content


@contextlib.contextmanager
def running_space(tmp: Path, env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Start the hub and both connectors (with ``env`` added to their environment)."""
    sites = []
    for name in SITES:
        run_cli("connector", "init", str(tmp / name), "--org", f"Org {name}", "--name", name)
        run_cli("connector", "enroll", str(tmp / name), str(SO101), "--no-quality")
        sites.append(Site.open(tmp / name))
    keys = tmp / "keys"
    keys.mkdir()
    auditor = make_party(keys, "auditor", "auditor")
    args = ["hub", "--data", str(tmp / "hub")]
    for s in sites:
        args += ["--trust", str(s.root / "site.key.pub")]
    args += ["--trust", str(auditor.key_path) + ".pub"]
    started: list[Service] = []
    with pytest.MonkeyPatch.context() as mp:
        for k, v in (env or {}).items():
            mp.setenv(k, v)  # Service passes os.environ on to the process
        try:
            hub = Service(args, free_port(), tmp / "hub.log")
            started.append(hub)
            hub.wait_ready()
            for s in sites:
                c = Service(
                    ["connector", str(s.root), "--hub", hub.url],
                    free_port(),
                    tmp / f"{s.name}.log",
                )
                started.append(c)
            for c in started[1:]:
                c.wait_ready(until=lambda h: h["published"])
        except BaseException:
            for s in started:
                s.stop()
            raise
    try:
        hub_id = load_identity(tmp / "hub" / "hub.key")
        hub_pub = tmp / "hub" / "hub.key.pub"
        trusted = tmp / "trusted-keys"
        lines = [f"log {hub_pub}", *(str(s.vkey_path) for s in sites)]
        # the services cosign with their witness keys (made on first start), not their
        # identity keys: the auditor lists those (dataspace.audit.witnesskey)
        lines += [f"witness {s.root / WITNESS_VKEY}" for s in sites]
        lines += [f"witness {tmp / 'hub' / WITNESS_VKEY}"]
        trusted.write_text("\n".join(lines) + "\n")
        hub_witness = tmp / "hub" / WITNESS_VKEY
        yield {
            "tmp": tmp,
            "hub": started[0],
            "connectors": started[1:],
            "sites": sites,
            "auditor": auditor,
            "trusted": trusted,
            "hub_name": hub_id.name,
            "hub_witness": hub_witness,
        }
    finally:
        for s in started:
            s.stop()
