"""A package's front door without its weight: names exported on first use (PEP 562).

``dataspace.site`` and ``dataspace.policy`` export their front doors from modules that
import DuckDB and pyarrow; importing one light module of theirs (``site.identity``,
``policy.odrl``) runs the package's ``__init__`` first, so an eager ``__init__`` would
make ``dataspace --help`` and every argument error pay for DuckDB.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``where[name]`` on first use."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
