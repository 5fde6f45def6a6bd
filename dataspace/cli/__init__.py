"""The ``dataspace`` command.

One root group; each area adds its own group from a module of this package
(``connector.py``, ``audit.py``, ...). Library code raises typed errors
(:class:`dataspace.errors.DataspaceError`); this is the one place that turns
them into a message on stderr and an exit code, never a traceback.

An area's module is imported only when its command runs or ``--help`` lists
it (:class:`_LazyCommands`), and no module of this package imports torch,
Flower, Opacus, Great Expectations or DuckDB at import time: ``dataspace
--help`` and argument errors take a fraction of a second.

``dataspace --verbose CMD`` lets the libraries' logs (Flower, Great
Expectations, ...) through; without it they are silent
(:func:`dataspace.cli._ui.configure_logging`), except Flower's under ``dataspace
serve`` (a service logs for its operators). No colour codes ever go to a file.
"""

from __future__ import annotations

import importlib
import sys

import click
from rich.console import Console

from dataspace.cli._ui import configure_logging, escape
from dataspace.errors import DataspaceError

# soft_wrap: an error names long file paths; rich must not break them across lines
err_console = Console(stderr=True, soft_wrap=True)

#: command name -> the module that defines it (as ``group``, ``command`` or ``commands``)
_COMMANDS = {
    "connector": "dataspace.cli.connector",
    "keys": "dataspace.cli.keys",
    "audit": "dataspace.cli.audit",
    "contract": "dataspace.cli.contract",
    "catalog": "dataspace.cli.catalog",
    "quality": "dataspace.cli.quality",
    "train": "dataspace.cli.train",
    "serve": "dataspace.cli.serve",
    "demo": "dataspace.cli.demo",
    "privacy-audit": "dataspace.cli.privacy",
    "deploy": "dataspace.cli.deploy",
    "sample": "dataspace.cli.sample",
}
#: commands that run services: Flower's INFO lines go to their log (as before issue 14)
SERVICES = ("serve",)


class _LazyCommands(dict):
    """``cli.commands``, importing an area's module on first use of one of its names.

    Looking one command up (``dataspace train ...``) imports only its module;
    listing them (``--help``, iterating) imports them all.
    """

    def __init__(self, areas: dict[str, str]) -> None:
        super().__init__()
        self._pending = dict(areas)

    def _load(self, name: object) -> None:
        module = self._pending.get(name)  # type: ignore[call-overload]
        if module is None:
            return
        for n in [n for n, m in self._pending.items() if m == module]:
            del self._pending[n]
        mod = importlib.import_module(module)
        for attr in ("group", "command", "commands"):
            obj = getattr(mod, attr, None)
            if obj is None:
                continue
            for c in obj if isinstance(obj, list | tuple) else [obj]:
                dict.__setitem__(self, c.name, c)

    def _load_all(self) -> None:
        for name in list(self._pending):
            self._load(name)

    def get(self, key, default=None):  # type: ignore[override]
        self._load(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self._load(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._load(key)
        return super().__contains__(key)

    def __iter__(self):
        self._load_all()
        return super().__iter__()

    def __len__(self) -> int:
        self._load_all()
        return super().__len__()

    def keys(self):  # type: ignore[override]
        self._load_all()
        return super().keys()

    def values(self):  # type: ignore[override]
        self._load_all()
        return super().values()

    def items(self):  # type: ignore[override]
        self._load_all()
        return super().items()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dataspace")
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    envvar="DATASPACE_VERBOSE",
    help="Show the libraries' logs (Flower, Great Expectations, ...); silent otherwise.",
)
@click.pass_context
def cli(ctx: click.Context, verbose: bool = False) -> None:
    """dataspace: robot training data that never leaves its site.

    A site is always named by its folder, as the positional SITE argument.
    """
    # a service (`serve ...`) keeps Flower's INFO lines: its log file is for operators
    configure_logging(verbose, flower=ctx.invoked_subcommand in SERVICES)


cli.commands = _LazyCommands(_COMMANDS)


def _register() -> None:
    """Import every area now (``cli.commands`` does it on demand anyway)."""
    cli.commands._load_all()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("[red]aborted[/red]")
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except DataspaceError as e:
        err_console.print(f"[red]error:[/red] {escape(e)}", markup=True, highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        return 130
    # click returns the code of a `click.exceptions.Exit` (e.g. privacy-audit's 3)
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
