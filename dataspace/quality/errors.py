"""The quality package's error, in a module of its own so that light modules
(:mod:`dataspace.quality.ranges`, read at enrollment) can raise it without loading the
suite's Great Expectations and DuckDB."""

from __future__ import annotations

from dataspace.errors import DataspaceError


class QualityError(DataspaceError):
    """A quality check that could not run (unreadable data, GE failure)."""


__all__ = ["QualityError"]
