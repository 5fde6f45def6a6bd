"""A holder's declared feature ranges: read, checked and normalised at enrollment.

A robot's maker knows its joints' limits (and a camera's image size); the quality
check (``dataspace quality check``) reads such a declaration from the dataset's
catalog entry under ``robot:declaredRanges`` and uses it to *narrow* the data's own
out-of-range limits, never to widen them (``dataspace.quality.suite.effective_limits``).
``dataspace connector enroll --ranges FILE`` and ``enroll(..., declared_ranges=...)``
put it there. The format, with the dataset's own state and action names::

    {"observation.state": {"shoulder_pan.pos": [-110, 110], ...},
     "action": {"gripper.pos": [0, 100]}}

The format and its one strict check are :mod:`dataspace.quality.ranges` (light: no
Great Expectations); this module reads the holder's file (a size cap, UTF-8, no name
given twice, no NaN or Infinity literal, not nested too deeply) and applies that check
before anything is stored. A declaration the check could not apply must not read as
one it applied, so a bad one refuses the enrollment (:class:`RangesError`, exit code 2)
instead of being dropped. The quality check applies the same check to what is stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dataspace.connectors.reader import EnrollError
from dataspace.quality import ranges as shared
from dataspace.quality.ranges import DECLARED_RANGES_KEY, FEATURES, Ranges

#: the largest declaration file read (a few names per joint: kilobytes)
MAX_RANGES_BYTES = 1 << 20


class RangesError(shared.RangesError, EnrollError):
    """A declaration of feature ranges that cannot be applied (malformed, unknown name,
    empty or reversed range, or not the one the dataset was enrolled with), naming the
    file: the shared check's :class:`dataspace.quality.ranges.RangesError` (a
    ``QualityError``) that is also an :class:`EnrollError` (exit code 2)."""

    exit_code = 2


def load_ranges(path: Path | str) -> Ranges:
    """The declaration in the JSON file at ``path``, its shape checked (:func:`check_shape`);
    the names are checked against the dataset at enrollment (:func:`check_ranges`)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RANGES_BYTES + 1)
    except OSError as e:
        raise RangesError(f"cannot be read ({e.strerror or type(e).__name__})", path) from e
    if len(raw) > MAX_RANGES_BYTES:
        raise RangesError(f"is larger than {MAX_RANGES_BYTES} bytes: not a declaration", path)
    try:
        text = raw.decode("utf-8")
        declared = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise RangesError(f"is not UTF-8 text ({e.reason} at byte {e.start})", path) from e
    except json.JSONDecodeError as e:
        raise RangesError(f"is not JSON ({e.msg} at line {e.lineno} column {e.colno})", path) from e
    except _Refused as e:
        raise RangesError(str(e), path) from e
    except RecursionError as e:
        raise RangesError("is not JSON (nested too deeply)", path) from e
    return check_shape(declared, path)


def check_shape(declared: Any, where: Path | str | None = None) -> Ranges:
    """``declared`` checked and normalised by :func:`dataspace.quality.ranges.check_declaration`
    (names not yet: the dataset's are not known); RangesError naming ``where``."""
    return _checked(declared, None, None, where)


def check_ranges(
    declared: Any,
    state_names: Sequence[str],
    action_names: Sequence[str],
    where: Path | str | None = None,
) -> Ranges:
    """``declared`` checked and normalised, every name one of the dataset's own state
    (action) names, and only one column's; RangesError naming ``where`` and the fault."""
    return _checked(declared, state_names, action_names, where)


def _checked(declared, state_names, action_names, where) -> Ranges:
    """The shared check; its error re-raised as this module's, naming ``where``."""
    try:
        return shared.check_declaration(declared, state_names, action_names)
    except shared.RangesError as e:
        raise RangesError(str(e), where) from e


def stored_ranges(catalog: Mapping[str, Any] | None) -> Any:
    """What a dataset's catalog entry declares (None: nothing)."""
    return (catalog or {}).get(DECLARED_RANGES_KEY)


class _Refused(ValueError):
    """Raised inside the JSON parser's hooks."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _Refused(f"names {k!r} twice (which range is meant?)")
        seen[k] = v
    return seen


def _no_constant(name: str) -> Any:
    raise _Refused(f"is not JSON: {name} is not a number (bounds are finite numbers)")


__all__ = [
    "DECLARED_RANGES_KEY",
    "FEATURES",
    "Ranges",
    "RangesError",
    "check_ranges",
    "check_shape",
    "load_ranges",
    "stored_ranges",
]
