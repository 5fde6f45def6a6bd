"""Quality: expectation suites, dimension scores, value, reports; computed on site.

The front door is :func:`run_checks` (the suite on a site's dataset, its dimension
scores, the signed report in the site's log); :mod:`.flags` holds what the suite
flags, which training leaves out.
"""

from typing import TYPE_CHECKING

from dataspace import lazy

if TYPE_CHECKING:
    from dataspace.quality.check import CheckOutcome, run_checks

__all__ = [
    "CheckOutcome",
    "run_checks",
]

# heavy (pyarrow, DuckDB, ...): each name is imported on first use (dataspace.lazy)
__getattr__ = lazy.exports(
    __name__,
    {
        "run_checks": "dataspace.quality.check",
        "CheckOutcome": "dataspace.quality.check",
    },
)
