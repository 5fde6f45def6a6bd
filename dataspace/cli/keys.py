"""``dataspace keys``: identities (Ed25519 key pairs with a name and a role)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dataspace.cli._ui import ROLES
from dataspace.site.identity import load_identity, new_identity, rotate_identity


@click.group(name="keys")
def group() -> None:
    """Make, show and rotate identities (private key 0600, public identity beside it)."""


@group.command(name="new")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="The participant's name.")
@click.option("--role", required=True, type=click.Choice(ROLES), help="The participant's role.")
def new_cmd(file: Path, name: str, role: str) -> None:
    """Make an identity: FILE (private, mode 0600) and FILE.pub; prints the public identity."""
    ident = new_identity(file, name=name, role=role)
    click.echo(json.dumps(ident.to_json()))


@group.command(name="show")
@click.argument("file", type=click.Path(path_type=Path))
def show_cmd(file: Path) -> None:
    """Print the public identity of FILE (or FILE.pub)."""
    click.echo(json.dumps(load_identity(file).to_json()))


@group.command(name="rotate")
@click.argument("path", metavar="FILE|SITE", type=click.Path(path_type=Path), required=False)
@click.option("--site", type=click.Path(path_type=Path), default=None, hidden=True)
def rotate_cmd(path: Path | None, site: Path | None) -> None:
    """Replace a key by a new one signed by the old; prints the rotation statement.

    FILE is an identity's private key file; SITE, a site folder, rotates the
    site's key (logged as key.rotated). The older spelling --site SITE is still
    accepted.
    """
    if (path is None) == (site is None):
        raise click.UsageError("give either FILE or --site SITE (a key file, or a site folder)")
    if site is None and path is not None and path.is_dir():
        site, path = path, None
    if site is not None:
        from dataspace.site.folder import Site
        from dataspace.site.rotation import rotate_site_key

        rotation = rotate_site_key(Site.open(site))
    else:
        assert path is not None
        rotation = rotate_identity(path)
    click.echo(json.dumps(rotation.to_json()))
