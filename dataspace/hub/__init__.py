"""The hub service: catalog, contract registry, run registry, audit log server, dashboard.

:func:`create_app` builds it from :mod:`.routes` around one :class:`.state.Hub`.
"""

from typing import TYPE_CHECKING

from dataspace import lazy

if TYPE_CHECKING:
    from dataspace.hub.app import create_app

__all__ = [
    "create_app",
]

# heavy (pyarrow, DuckDB, ...): each name is imported on first use (dataspace.lazy)
__getattr__ = lazy.exports(
    __name__,
    {
        "create_app": "dataspace.hub.app",
    },
)
