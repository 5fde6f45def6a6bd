"""``dataspace deploy``: what a multi-machine deployment needs before its services start.

    dataspace deploy tls DIR [--host NAME ...] [--nodes N]
    dataspace deploy site SITE --org NAME
    dataspace deploy register PUB... --superlink HOST:PORT --ca FILE

``tls`` makes the SuperLink's CA and server certificate (``dataspace.federated.pki``,
the same code the deployment engine uses on one machine) and one SuperNode
authentication key per node (``node-I.key`` / ``node-I.key.pub``) and the
SuperLink's SuperExec secret (``superexec.secret``, shared with ``dataspace serve
hub-worker``); it keeps existing files, so rerunning it is harmless. ``site``
makes a connector site unless one is there already (``connector init`` refuses
to overwrite), and the site's SuperExec secret ``SITE/superexec.secret``: its
SuperNode runs with ``--isolation process`` and only ``dataspace serve
site-worker``, which holds that secret and runs only the connector's own
ClientApp, can take its tasks. A consumer's bundle never runs at the site.
``register`` adds SuperNode public keys to a SuperLink started with
``--enable-supernode-auth`` (``flwr supernode register``). docker-compose.yml
runs these as one-shot services before the hub, SuperLink and connectors.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import click

from dataspace.cli._ui import site_alias
from dataspace.errors import DataspaceError
from dataspace.federated.pki import make_node_key, make_superexec_secret, make_tls

#: the SuperExec secret's file name, in the TLS directory (hub) and in a site folder
SECRET = "superexec.secret"


class DeploySetupError(DataspaceError):
    exit_code = 2


@click.group(name="deploy")
def group() -> None:
    """Set up a deployment across machines: TLS material, sites, SuperNode keys."""


@group.command("tls")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    default=("localhost", "127.0.0.1"),
    show_default=True,
    help="Name or address the SuperLink is reached at (repeat).",
)
@click.option("--nodes", type=click.IntRange(0), default=0, show_default=True)
def tls_cmd(directory: Path, hosts: tuple[str, ...], nodes: int) -> None:
    """CA + SuperLink certificate in DIR, NODES SuperNode keys and the SuperLink's
    SuperExec secret (each kept if present)."""
    if not (directory / "ca.crt").exists():
        files = make_tls(directory, tuple(hosts))
        click.echo(f"CA {files.ca_cert}, server {files.server_cert} for {', '.join(hosts)}")
    secret = directory / SECRET
    if not secret.exists():
        make_superexec_secret(secret)
    click.echo(f"SuperExec secret {secret}")
    for i in range(nodes):
        key = directory / f"node-{i}.key"
        if not key.exists():
            make_node_key(key)
        click.echo(f"node key {key} ({key}.pub)")


@site_alias()
@group.command("site")
@click.argument("site", type=click.Path(file_okay=False, path_type=Path))
@click.option("--org", required=True, help="The holder's organisation.")
def site_cmd(site: Path, org: str) -> None:
    """Make the connector site SITE unless it exists, and its SuperExec secret; print
    its public key."""
    from dataspace.site import Site, create_site

    s = Site.open(site) if (site / "site.toml").exists() else create_site(site, org)
    if not (s.root / SECRET).exists():
        make_superexec_secret(s.root / SECRET)
    click.echo(f"site {s.root} ({s.org}) key {s.identity.key_b64}")


@group.command("register")
@click.argument("pubkeys", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--superlink", required=True, help="HOST:PORT of the SuperLink's Control API.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
def register_cmd(pubkeys: tuple[Path, ...], superlink: str, ca: Path) -> None:
    """Register SuperNode public keys with the SuperLink (node authentication)."""
    flwr = Path(sys.executable).parent / "flwr"
    with tempfile.TemporaryDirectory() as home:
        Path(home, "config.toml").write_text(
            '[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
            f'address = "{superlink}"\nroot-certificates = "{ca.resolve()}"\n'
        )
        env = {"FLWR_HOME": home, "FLWR_TELEMETRY_ENABLED": "0", "PATH": str(flwr.parent)}
        for pub in pubkeys:
            r = subprocess.run(
                [str(flwr), "supernode", "register", str(pub), "deploy"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            out = (r.stdout + r.stderr).strip()
            if r.returncode != 0 and "already" not in out.lower():
                raise DeploySetupError(f"flwr supernode register {pub} at {superlink}: {out}")
            click.echo(f"registered {pub}")
