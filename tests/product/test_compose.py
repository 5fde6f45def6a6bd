"""docker-compose.yml: every service runs a command that exists, with valid options.

``dataspace ...`` commands are resolved through the click tree and their options
checked against the command's parameters (and run with ``--help``); Flower's
``flower-superlink`` / ``flower-supernode`` must be in this venv and accept each
option given, and must be started with the options the deployment engine uses
when the tests start it as plain processes (dataspace.federated.deploy).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import click
import pytest
import yaml

from dataspace.cli import cli
from tests.product.conftest import ROOT

BIN = Path(sys.executable).parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """The click command ``dataspace ARGS`` names, and the rest of the arguments."""
    cmd: click.Command = cli
    rest = list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        assert sub is not None, f"dataspace has no command {rest[0]!r} (in {args})"
        cmd, rest = sub, rest[1:]
    return cmd, rest


def options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


@cache
def flower_options(exe: str) -> set[str]:
    out = subprocess.run([str(BIN / exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout))


def given_options(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def test_the_compose_file_has_a_hub_and_three_connectors():
    cmds = {name: s["command"] for name, s in SERVICES.items()}
    assert sum(c[:3] == ["dataspace", "serve", "hub"] for c in cmds.values()) == 1
    assert sum(c[:3] == ["dataspace", "serve", "connector"] for c in cmds.values()) == 3
    assert sum(c[0] == "flower-superlink" for c in cmds.values()) == 1
    assert sum(c[0] == "flower-supernode" for c in cmds.values()) == 3
    assert any(c[:3] == ["dataspace", "deploy", "tls"] for c in cmds.values())
    assert sum(c[:3] == ["dataspace", "serve", "site-worker"] for c in cmds.values()) == 3
    assert sum(c[:3] == ["dataspace", "serve", "hub-worker"] for c in cmds.values()) == 1
    for name, s in SERVICES.items():
        assert s.get("build") == "." or s.get("image"), name
    assert (ROOT / "Dockerfile").exists()
    for v in ("certs", "hub", "site-0", "site-1", "site-2"):
        assert v in COMPOSE["volumes"]


def test_the_consumer_step_trains_through_the_hub_and_mounts_no_site():
    """Issue 16: the consumer's service runs `dataspace train --hub` with its own key and
    volume only; it is a profile, so `docker compose up` does not start it."""
    c = SERVICES["consumer"]
    assert c["command"][:4] == ["dataspace", "train", "--hub", "http://hub:8000"]
    assert c["profiles"] == ["consumer"]
    assert all(not v.startswith("site-") for v in c["volumes"]), c["volumes"]
    assert _opt(c["command"], "--key").startswith("/consumer/")


DATASPACE = sorted(n for n, s in SERVICES.items() if s["command"][0] == "dataspace")
FLOWER = sorted(n for n, s in SERVICES.items() if s["command"][0] != "dataspace")


@pytest.mark.parametrize("name", DATASPACE)
def test_dataspace_commands_resolve_with_valid_options(name):
    args = SERVICES[name]["command"]
    cmd, rest = resolve(args[1:])
    assert not isinstance(cmd, click.Group), f"{name}: {args} names a group, not a command"
    unknown = given_options(rest) - options(cmd)
    assert not unknown, f"{name}: {unknown} are not options of dataspace {args[1:3]}"
    # click accepts the arguments (paths that must exist are checked at run time in the image)
    ctx = cmd.make_context("dataspace", list(rest), resilient_parsing=True)
    assert ctx.command is cmd


@pytest.mark.parametrize("name", FLOWER)
def test_flower_commands_exist_with_valid_options(name):
    args = SERVICES[name]["command"]
    exe = args[0]
    assert exe in ("flower-superlink", "flower-supernode"), f"{name}: unexpected entry point {exe}"
    assert (BIN / exe).exists(), f"{exe} is not installed in the venv"
    unknown = given_options(args[1:]) - flower_options(exe)
    assert not unknown, f"{name}: {exe} has no options {unknown}"


def test_flower_commands_match_what_the_deployment_engine_starts():
    from dataspace.federated import deploy

    src = inspect.getsource(deploy)
    for name, s in SERVICES.items():
        args = s["command"]
        if args[0] in ("flower-superlink", "flower-supernode"):
            for opt in given_options(args[1:]):
                assert f'"{opt}"' in src, f"{name}: {opt} is not used by dataspace.federated.deploy"


def test_one_shot_commands_are_idempotent(tmp_path):
    """tls and site run twice give the same files (compose reruns them on every up)."""
    from click.testing import CliRunner

    run = CliRunner().invoke
    tls = ["deploy", "tls", str(tmp_path / "certs"), "--nodes", "2"]
    assert run(cli, tls).exit_code == 0
    ca = (tmp_path / "certs" / "ca.crt").read_bytes()
    assert run(cli, tls).exit_code == 0
    assert (tmp_path / "certs" / "ca.crt").read_bytes() == ca
    assert (tmp_path / "certs" / "node-1.key.pub").exists()
    site = ["deploy", "site", str(tmp_path / "s"), "--org", "Plant North"]
    a, b = run(cli, site), run(cli, site)
    assert a.exit_code == b.exit_code == 0, a.output + b.output
    assert a.output == b.output


def _opt(args: list[str], name: str) -> str:
    assert name in args, f"{args} has no {name}"
    return args[args.index(name) + 1]


def test_no_bundle_code_runs_at_a_site_or_the_hub():
    """Every SuperNode (and the SuperLink) runs with --isolation process, and its one
    SuperExec is our worker: same network namespace, same site volume, same secret.
    With Flower's default (subprocess) isolation, the SuperNode would start
    ``flwr-clientapp`` on whatever ClientApp the consumer's bundle names."""
    for name, s in SERVICES.items():
        args = s["command"]
        if args[0] not in ("flower-supernode", "flower-superlink"):
            continue
        assert _opt(args, "--isolation") == "process", name
        secret = _opt(args, "--superexec-auth-secret-file")
        kind = "site-worker" if args[0] == "flower-supernode" else "hub-worker"
        workers = [
            w
            for w, ws in SERVICES.items()
            if ws["command"][:3] == ["dataspace", "serve", kind]
            and ws.get("network_mode") == f"service:{name}"
        ]
        assert len(workers) == 1, (name, workers)
        w = SERVICES[workers[0]]
        assert _opt(w["command"], "--secret-file") == secret
        port = _opt(args, "--port")
        assert _opt(w["command"], "--runtime-api").endswith(f":{port}")
        # the secret lives on a volume both mount
        mount = secret.rsplit("/", 1)[0]
        volume = next(v.split(":")[0] for v in s["volumes"] if v.split(":")[1] == mount)
        assert any(v.split(":")[:2] == [volume, mount] for v in w["volumes"]), (name, w)
        if kind == "site-worker":
            # and the site-N-init that makes it has finished first
            init = next(d for d in s["depends_on"] if d.endswith("-init"))
            assert SERVICES[init]["command"][:3] == ["dataspace", "deploy", "site"]
            assert f"{volume}:/site" in SERVICES[init]["volumes"]


def test_deploy_makes_the_superexec_secrets_private_and_keeps_them(tmp_path):
    from click.testing import CliRunner

    run = CliRunner().invoke
    tls = ["deploy", "tls", str(tmp_path / "certs"), "--nodes", "1"]
    site = ["deploy", "site", str(tmp_path / "s"), "--org", "Plant North"]
    assert run(cli, tls).exit_code == 0 and run(cli, site).exit_code == 0
    secrets = [tmp_path / "certs" / "superexec.secret", tmp_path / "s" / "superexec.secret"]
    first = [p.read_bytes() for p in secrets]
    for p in secrets:
        assert p.stat().st_mode & 0o777 == 0o600
        assert len(p.read_bytes()) == 64
    assert run(cli, tls).exit_code == 0 and run(cli, site).exit_code == 0
    assert [p.read_bytes() for p in secrets] == first  # a rerun keeps them


def test_the_hub_serves_the_runs_its_worker_writes_and_names_the_superlink():
    """Issue 16: the hub worker confines runs to --runs-dir, the hub serves that folder
    (the same volume, writable: the hub writes each run's registration there), and the hub
    hands consumers the SuperLink's address and CA."""
    hub, worker = SERVICES["hub"], SERVICES["hub-worker"]
    runs = _opt(hub["command"], "--runs-dir")
    assert _opt(worker["command"], "--runs-dir") == runs

    def volume(service: dict, mount: str) -> str:
        (v,) = [v for v in service["volumes"] if v.split(":")[1] == mount]
        assert not v.endswith(":ro"), v
        return v.split(":")[0]

    assert volume(hub, runs) == volume(worker, runs)
    assert _opt(hub["command"], "--superlink-ca") == _opt(worker["command"], "--root-certificates")
    host, port = _opt(hub["command"], "--superlink").rsplit(":", 1)
    assert SERVICES[host]["command"][0] == "flower-superlink"
    assert _opt(SERVICES[host]["command"], "--port") == port
