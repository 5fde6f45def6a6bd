"""The ``dataspace`` command.

One root group; each area adds its own group from a module of this package
(``connector.py``, ``audit.py``, ...). Library code raises typed errors
(:class:`dataspace.errors.DataspaceError`); this is the one place that turns
them into a message on stderr and an exit code, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click
from rich.console import Console

from dataspace.errors import DataspaceError

# soft_wrap: an error names long file paths; rich must not break them across lines
err_console = Console(stderr=True, soft_wrap=True)

#: modules that each define ``group`` or ``command`` (a click command) to register
_AREAS = (
    "dataspace.cli.connector",
    "dataspace.cli.keys",
    "dataspace.cli.audit",
    "dataspace.cli.contract",
    "dataspace.cli.catalog",
    "dataspace.cli.quality",
    "dataspace.cli.train",
    "dataspace.cli.serve",
    "dataspace.cli.demo",
    "dataspace.cli.privacy",
    "dataspace.cli.deploy",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dataspace")
def cli() -> None:
    """dataspace: robot training data that never leaves its site."""


def _register() -> None:
    for name in _AREAS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that area is not built yet
                continue
            raise
        for attr in ("group", "command", "commands"):
            obj = getattr(mod, attr, None)
            if obj is None:
                continue
            for c in obj if isinstance(obj, list | tuple) else [obj]:
                cli.add_command(c)


_register()


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("[red]aborted[/red]")
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except DataspaceError as e:
        err_console.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
