"""``dataspace serve``: run the hub, a connector or a Flower worker as a plain process.

``hub`` and ``connector`` are uvicorn services. ``site-worker`` and ``hub-worker``
are the SuperExecs of a SuperNode / the SuperLink started with ``--isolation
process``: they run only the project's own apps, whatever bundle a run names
(see :mod:`dataspace.federated.site_worker`).

The listening socket is bound here, before the app starts, so a port in use is
a clear error and a non-zero exit, not a traceback from inside uvicorn.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

import click

from dataspace.auth.limits import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS,
    ConnectionLimits,
)
from dataspace.cli._ui import site_alias
from dataspace.errors import DataspaceError
from dataspace.federated.hub_worker import execute
from dataspace.net import bind
from dataspace.site.identity import load_identity


def run(app, sock: socket.socket, log_level: str, limits: ConnectionLimits) -> None:
    # uvicorn under the connection limits: header deadline, header size, connections
    from dataspace.auth.connections import serve

    serve(app, sock, limits, log_level)


def service_options(f: Callable[..., None]) -> Callable[..., None]:
    """The options both services share: their names, and what a client may hold of them."""
    options = [
        click.option(
            "--authority",
            "authorities",
            multiple=True,
            help="a HOST[:PORT] (or URL) clients reach this service by, besides the address "
            "they connect to: signed requests name the service they are for (repeatable)",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(min=1),
            default=None,
            help=f"connections held at once [default: {MAX_CONNECTIONS}, or half the file "
            "limit if smaller]; at the limit the one waiting longest for its headers is closed",
        ),
        click.option(
            "--header-timeout",
            type=click.FloatRange(min=0.1),
            default=HEADER_TIMEOUT_S,
            show_default=True,
            help="seconds a request's headers may take (the connection is closed after)",
        ),
        click.option(
            "--body-timeout",
            type=click.FloatRange(min=0.1),
            default=BODY_TIMEOUT_S,
            show_default=True,
            help="seconds a request's body may take after its headers (408 after)",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _limits(
    max_connections: int | None, header_timeout: float, body_timeout: float
) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        max_connections=max_connections,
    )


def _trusted(paths: tuple[Path, ...]):
    return [load_identity(p) for p in paths]


@click.group(name="serve")
def group() -> None:
    """Run a service (hub, connector, site or hub worker) in the foreground."""


@group.command("hub")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="hub state folder (created on first start)",
)
@click.option("--port", type=int, required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--name", default="dataspace-hub", show_default=True, help="the hub's key name and log origin"
)
@click.option(
    "--trust",
    "trust",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    help="identity file (X.pub) to register with its role (holder, auditor, ...)",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="the hub worker's run directories (its --runs-dir), served to each run's "
    "consumer  [default: DATA/runs]",
)
@click.option(
    "--superlink",
    default=None,
    help="HOST:PORT of the hub's Flower SuperLink, as consumers reach it (GET /v1/hub)",
)
@click.option(
    "--superlink-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="CA certificate of the SuperLink's TLS (PEM), handed to consumers with --superlink",
)
@service_options
@click.option("--log-level", default="warning", show_default=True)
def hub(
    data_dir: Path,
    port: int,
    host: str,
    name: str,
    trust: tuple[Path, ...],
    runs_dir: Path | None,
    superlink: str | None,
    superlink_ca: Path | None,
    authorities: tuple[str, ...],
    max_connections: int | None,
    header_timeout: float,
    body_timeout: float,
    log_level: str,
) -> None:
    """The hub: catalog, contract and run registries, audit log."""
    if (superlink is None) != (superlink_ca is None):
        raise click.UsageError("--superlink and --superlink-ca go together")
    sock = bind(host, port)
    from dataspace.hub.app import create_app
    from dataspace.hub.state import SuperLink

    link = None
    if superlink is not None and superlink_ca is not None:
        link = SuperLink(superlink, superlink_ca.read_text())
    limits = _limits(max_connections, header_timeout, body_timeout)
    app = create_app(
        data_dir,
        name=name,
        trust=_trusted(trust),
        runs_dir=runs_dir,
        superlink=link,
        authorities=authorities,
        limits=limits,
    )
    click.echo(f"hub {name} listening on http://{host}:{port} (data {data_dir})", err=True)
    run(app, sock, log_level, limits)


@site_alias()
@group.command("connector")
@click.argument("site", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--hub", "hub_url", required=True, help="the hub's URL, e.g. http://127.0.0.1:8000")
@click.option("--port", type=int, required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--public-url",
    default=None,
    help="URL consumers reach this connector at (default http://HOST:PORT)",
)
@click.option(
    "--trust",
    "trust",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    help="identity file (X.pub) to give its role here (auditor, operator, holder)",
)
@service_options
@click.option("--log-level", default="warning", show_default=True)
def connector(
    site: Path,
    hub_url: str,
    port: int,
    host: str,
    public_url: str | None,
    trust: tuple[Path, ...],
    authorities: tuple[str, ...],
    max_connections: int | None,
    header_timeout: float,
    body_timeout: float,
    log_level: str,
) -> None:
    """A site's connector: publishes its catalog, negotiates contracts, admin API."""
    sock = bind(host, port)
    from dataspace.connectors.service import create_app

    url = public_url or f"http://{host}:{port}"
    limits = _limits(max_connections, header_timeout, body_timeout)
    app = create_app(
        site, hub_url, public_url=url, trust=_trusted(trust), authorities=authorities, limits=limits
    )
    click.echo(f"connector {site} listening on {url} (hub {hub_url})", err=True)
    run(app, sock, log_level, limits)


@group.command("site-worker")
@click.option("--runtime-api", required=True, help="HOST:PORT of the SuperNode's Runtime API")
@click.option(
    "--secret-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the SuperExec secret the SuperNode was given (--superexec-auth-secret-file)",
)
def site_worker(runtime_api: str, secret_file: Path) -> None:
    """The holder's SuperExec: runs only the connector's own ClientApp, for a SuperNode
    started with ``--isolation process`` (a bundle naming other code is refused)."""
    from dataspace.federated.site_worker import execute

    execute(runtime_api, secret_file.read_bytes())


@group.command("hub-worker")
@click.option("--runtime-api", required=True, help="HOST:PORT of the SuperLink")
@click.option(
    "--root-certificates",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA certificate of the SuperLink's TLS",
)
@click.option(
    "--secret-file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the SuperExec secret the SuperLink was given (--superexec-auth-secret-file)",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write every run to RUNS/<run-id> whatever its config says, and run only runs "
    "the hub registered there (the hub's --runs-dir); without it: the run's out-dir",
)
def hub_worker(
    runtime_api: str, root_certificates: Path, secret_file: Path, runs_dir: Path | None
) -> None:
    """The hub's SuperExec: runs only the project's own ServerApp, for a SuperLink
    started with ``--isolation process``."""
    if runs_dir is not None:
        runs_dir = runs_dir.resolve()
        runs_dir.mkdir(parents=True, exist_ok=True)
    execute(
        runtime_api,
        root_certificates.read_bytes(),
        secret_file.read_bytes(),
        runs_dir=runs_dir,
    )


# ``python -m dataspace.cli.serve hub|connector ...``: ``dataspace serve`` alone, with
# the error handling of :func:`dataspace.cli.main` but without loading every other
# command: the demo starts four services at once on a small machine.
def main(argv: list[str] | None = None) -> int:
    try:
        group.main(args=argv, prog_name="dataspace serve", standalone_mode=False)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except DataspaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
