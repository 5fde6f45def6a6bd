"""The site base: a holder's folder, its keys and identity, its store of canonical
episodes, and the one way to record an event in its log.

Every layer above passes a :class:`Site` around; this package imports only
``errors``, ``schema`` and ``audit`` (DESIGN.md, "Packages").
"""

from typing import TYPE_CHECKING

from dataspace import lazy

if TYPE_CHECKING:
    from dataspace.site.create import create_site
    from dataspace.site.folder import Site, SiteBusyError, SiteError
    from dataspace.site.identity import Identity, load_identity, load_private_key
    from dataspace.site.log import open_site_log, record, refused

__all__ = [
    "Identity",
    "Site",
    "SiteBusyError",
    "SiteError",
    "create_site",
    "load_identity",
    "load_private_key",
    "open_site_log",
    "record",
    "refused",
]

# heavy (DuckDB, pyarrow): each name is imported on first use (dataspace.lazy)
__getattr__ = lazy.exports(
    __name__,
    {
        "create_site": "dataspace.site.create",
        "Site": "dataspace.site.folder",
        "SiteBusyError": "dataspace.site.folder",
        "SiteError": "dataspace.site.folder",
        "Identity": "dataspace.site.identity",
        "load_identity": "dataspace.site.identity",
        "load_private_key": "dataspace.site.identity",
        "open_site_log": "dataspace.site.log",
        "record": "dataspace.site.log",
        "refused": "dataspace.site.log",
    },
)
