"""``python -m dataspace.demo.serve_main hub|connector ...``: ``dataspace serve`` alone.

The same click command as ``dataspace serve`` (:mod:`dataspace.cli.serve`), with
the same error handling as :func:`dataspace.cli.main`, without importing every
other area's CLI first: the demo starts four services at once on a small
machine, and each would otherwise pay for importing torch, Opacus and Great
Expectations that a service never uses.
"""

from __future__ import annotations

import sys

import click

from dataspace.cli.serve import group
from dataspace.errors import DataspaceError


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
