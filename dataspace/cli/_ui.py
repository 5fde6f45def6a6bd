"""What every ``dataspace`` command shares about printing (issue 14).

* **Messages are text, not markup.** Rich reads ``[word]`` as a style tag: an
  error naming ``site.toml [training]`` lost ``[training]``, and one holding
  ``[/x]`` crashed. Every message that carries a value (an exception, a path, a
  name) goes through :func:`escape` (or is printed with ``markup=False``).
* **Identifiers are never cut.** :func:`print_table` prints a table only when
  every cell fits unbroken in the terminal; otherwise it prints the same rows as
  ``key value`` records, one line per field, where a long id stays whole on its
  line (``soft_wrap``: the terminal may wrap it visually, a copy gets it whole).
* **Library logs are silent** unless ``dataspace --verbose``
  (:func:`configure_logging`), and carry no colour codes into a file.
* **One way to name a site**: a positional ``SITE`` (:func:`site_alias` keeps the
  older ``--site SITE`` spelling working, hidden).

This module imports only click, rich and the standard library: ``dataspace
--help`` and argument errors must stay fast (no torch, Flower, DuckDB, GE).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import click
from rich.console import Console
from rich.markup import escape as _rich_escape
from rich.text import Text

#: model template names (dataspace.federated.templates.REGISTRY; a test keeps them
#: equal): named here so that `--help` needs no torch
TEMPLATE_NAMES = ("bc-mlp", "bc-chunk")
#: policy actions (dataspace.policy.odrl.ACTIONS; a test keeps them equal)
ACTIONS = ("train", "compute-statistics")
#: identity roles (dataspace.site.identity.ROLES; a test keeps them equal)
ROLES = ("holder", "consumer", "auditor", "operator")

#: how a command's help names the site argument
SITE_HELP = (
    "SITE is the holder's site folder (positional in every command; the older "
    "spelling --site SITE is still accepted)."
)

#: width of the console when stdout is a file or a pipe and COLUMNS is unset:
#: nothing to fit, so tables keep their natural width and ids stay whole
FILE_WIDTH = 200


def escape(value: object) -> str:
    """``value`` as text that Rich prints literally (``[training]`` stays, ``[/x]`` is safe)."""
    return _rich_escape(str(value))


def out_console() -> Console:
    """A console on stdout: the terminal's width, or FILE_WIDTH for a file (unless COLUMNS)."""
    probe = Console()
    if probe.is_terminal or os.environ.get("COLUMNS"):
        return Console(soft_wrap=True)
    return Console(soft_wrap=True, width=FILE_WIDTH)


# --- tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Col:
    """A column of :func:`print_table`. ``ident``: a value a user copies (never cut)."""

    header: str
    justify: str = "left"
    ident: bool = False


Cell = str | Text


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(str(cell))


def table_fits(console: Console, cols: Sequence[Col], rows: Sequence[Sequence[Cell]]) -> bool:
    """Whether the table shows every cell without breaking a word or an id."""
    table = make_table(None, cols, rows)
    wide = console.options.update_width(10_000)
    return console.measure(table, options=wide).minimum <= console.width


def make_table(title: str | None, cols: Sequence[Col], rows: Sequence[Sequence[Cell]]):
    from rich.table import Table

    table = Table(title=Text(title) if title else None)
    for c in cols:
        # fold, never ellipsis: if a cell must break, it breaks without losing characters
        table.add_column(c.header, justify=c.justify, overflow="fold", no_wrap=c.ident)
    for r in rows:
        table.add_row(*(_text(v) for v in r))
    return table


def print_table(
    console: Console,
    title: str,
    cols: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
) -> None:
    """A table when it fits the console unbroken; else one ``key value`` block per row.

    Nothing is ever shortened with an ellipsis: identifiers (``Col.ident``) stay
    on one line in either form.
    """
    if table_fits(console, cols, rows):
        console.print(make_table(title, cols, rows))
        return
    console.print(Text(title, style="bold"), soft_wrap=True)
    width = max(len(c.header) for c in cols)
    for r in rows:
        console.print()
        for c, v in zip(cols, r, strict=True):
            line = Text(f"{c.header:<{width}}  ")
            line.append_text(_text(v))
            console.print(line, soft_wrap=True, highlight=False)


# --- logging ------------------------------------------------------------------------------


class _CurrentStderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Quiet(logging.Filter):
    """Let through the project's warnings and errors, libraries' errors only (or all at
    --verbose: INFO and up); strip Flower's colour codes when its stream is no terminal."""

    def __init__(self) -> None:
        super().__init__()
        self.verbose = False
        self.flower = False

    def filter(self, record: logging.LogRecord) -> bool:
        _plain_flower_handlers()
        if self.verbose or (self.flower and record.name.split(".")[0] == "flwr"):
            return record.levelno >= logging.INFO
        if record.name == "dataspace" or record.name.startswith("dataspace."):
            return record.levelno >= logging.WARNING
        return record.levelno >= logging.ERROR


_QUIET = _Quiet()
#: the root level --verbose replaced (restored by the next run without it)
_RAISED_ROOT: int | None = None


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _plain_flower_handlers() -> None:
    """Flower's own console handler writes ANSI colours whatever its stream is, to the
    stderr of the moment Flower was imported: follow the current one (a progress bar's
    proxy prints the line above the bar) and colour only a terminal."""
    for h in logging.getLogger("flwr").handlers:
        if not hasattr(h, "colored") or not isinstance(h, logging.StreamHandler):
            continue
        if h.stream is not sys.stderr and h.stream in (sys.__stderr__, getattr(h, "_ds_err", None)):
            h.stream = sys.stderr
            h._ds_err = sys.stderr  # type: ignore[attr-defined]
        h.colored = bool(h.colored) and _isatty(h.stream)  # type: ignore[attr-defined]


def configure_logging(verbose: bool, flower: bool = False) -> None:
    """Library logs silent unless ``verbose`` (then INFO and up, each line once);
    ``flower``: Flower's INFO lines all the same (a service's log).

    Idempotent (tests call the CLI many times in one process). A root handler
    on stderr is installed unless one exists: Opacus calls ``logging.basicConfig``
    on import, which otherwise lets every library's INFO through (Great
    Expectations printed one line per site in the demo). Flower's logger keeps
    its own handler and stops propagating (its lines came out twice); the same
    filter guards both.
    """
    _QUIET.verbose = verbose
    _QUIET.flower = flower
    root = logging.getLogger()
    global _RAISED_ROOT
    if verbose and root.level > logging.INFO:
        _RAISED_ROOT = root.level
        root.setLevel(logging.INFO)
    elif not verbose and _RAISED_ROOT is not None:
        root.setLevel(_RAISED_ROOT)
        _RAISED_ROOT = None
    if not root.handlers:
        h = _CurrentStderr()
        h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
    for h in root.handlers:
        if isinstance(h, _CurrentStderr) and _QUIET not in h.filters:
            h.addFilter(_QUIET)
    flwr = logging.getLogger("flwr")
    flwr.propagate = False
    if _QUIET not in flwr.filters:
        flwr.addFilter(_QUIET)
    _plain_flower_handlers()


# --- one way to name a site ---------------------------------------------------------------


def _move_to_front(args: list[str], flags: Iterable[str]) -> list[str]:
    flags = tuple(flags)
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        name, eq, value = a.partition("=")
        if name in flags:
            if eq:
                front.append(value)
            elif i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
            else:
                raise click.UsageError(f"{name} needs a value (a site folder)")
        else:
            rest.append(a)
        i += 1
    return front + rest


def site_alias(
    *flags: str, note: str | None = SITE_HELP
) -> Callable[[click.Command], click.Command]:
    """Accept ``--site X`` (or the given flags) as the command's first positional argument.

    The value moves to the front of the arguments before click parses them, so
    ``contract approve --site S ID`` is ``contract approve S ID``. The flag is
    not listed among the options; ``note`` is appended to the command's help.
    """
    flags = flags or ("--site",)

    def deco(cmd: click.Command) -> click.Command:
        parse = cmd.parse_args
        if note:
            cmd.help = f"{cmd.help or ''}\n\n{note}".strip()

        def parse_args(ctx: click.Context, args: list[str]) -> list[str]:
            return parse(ctx, _move_to_front(list(args), flags))

        cmd.parse_args = parse_args  # type: ignore[method-assign]
        return cmd

    return deco
