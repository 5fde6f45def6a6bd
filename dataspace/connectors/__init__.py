"""Format readers, enrollment, the catalog entry and the connector service.

The front doors: :func:`open_reader` (a registry of formats in :mod:`.detect`:
LeRobot, HDF5, MCAP, Parquet/CSV), :func:`enroll` (read, validate, commit whole or
not at all, log ``dataset.enrolled``), :func:`read_episodes` (a consumer's own data);
the service is :func:`dataspace.connectors.service.create_app`. Every refusal of a
reader is an :class:`EnrollError` subclass.
"""

from typing import TYPE_CHECKING

from dataspace import lazy

if TYPE_CHECKING:
    from dataspace.connectors.detect import FORMATS, open_reader, read_episodes
    from dataspace.connectors.enroll import EnrollResult, enroll
    from dataspace.connectors.reader import EnrollError, UnknownFormatError

__all__ = [
    "FORMATS",
    "EnrollError",
    "EnrollResult",
    "UnknownFormatError",
    "enroll",
    "open_reader",
    "read_episodes",
]

# heavy (pyarrow, DuckDB, ...): each name is imported on first use (dataspace.lazy)
__getattr__ = lazy.exports(
    __name__,
    {
        "open_reader": "dataspace.connectors.detect",
        "read_episodes": "dataspace.connectors.detect",
        "FORMATS": "dataspace.connectors.detect",
        "enroll": "dataspace.connectors.enroll",
        "EnrollResult": "dataspace.connectors.enroll",
        "EnrollError": "dataspace.connectors.reader",
        "UnknownFormatError": "dataspace.connectors.reader",
    },
)
