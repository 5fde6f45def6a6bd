"""A holder's declared feature ranges: read, checked and normalised at enrollment.

A robot's maker knows its joints' limits (and a camera's image size); the quality
check (``dataspace quality check``) reads such a declaration from the dataset's
catalog entry under ``robot:declaredRanges`` and uses it to *narrow* the data's own
out-of-range limits, never to widen them (``dataspace.quality.suite.effective_limits``).
``dataspace connector enroll --ranges FILE`` and ``enroll(..., declared_ranges=...)``
put it there. The format, with the dataset's own state and action names::

    {"observation.state": {"shoulder_pan.pos": [-110, 110], ...},
     "action": {"gripper.pos": [0, 100]}}

A declaration is checked before anything is stored, strictly: a JSON object, only
the two features above, each name one the dataset has, each range exactly two finite
numbers (no strings, no booleans, no NaN or infinity) with ``lo < hi``, no name given
twice in the file, at least one range. A declaration the check could not apply must
not read as one it applied, so a bad one refuses the enrollment (:class:`RangesError`)
instead of being dropped. The quality package's own reader
(``dataspace.quality.suite.declared_ranges``) then accepts what is stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from dataspace.connectors.reader import EnrollError

#: the catalog key (the same as ``dataspace.quality.suite.DECLARED_RANGES_KEY``; a test
#: holds them equal: importing the quality suite here would load Great Expectations)
DECLARED_RANGES_KEY = "robot:declaredRanges"
#: the features a declaration may name, in the order they are stored
FEATURES = ("observation.state", "action")
#: the largest declaration file read (a few names per joint: kilobytes)
MAX_RANGES_BYTES = 1 << 20

Ranges = dict[str, dict[str, list[float]]]


class RangesError(EnrollError):
    """A declaration of feature ranges that cannot be applied (malformed, unknown name,
    empty or reversed range, or not the one the dataset was enrolled with)."""

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
    """``declared`` normalised (``{feature: {name: [lo, hi]}}``, floats, features in the
    order of :data:`FEATURES`, empty features left out); RangesError naming the first
    fault. Names are not checked here (the dataset's are not known yet)."""
    want = ", ".join(f'"{f}": {{name: [lo, hi]}}' for f in FEATURES)
    want = f"{{{want}}}"
    if not isinstance(declared, Mapping):
        raise RangesError(f"declared ranges must be a JSON object {want}", where)
    unknown = [k for k in declared if k not in FEATURES]
    if unknown:
        raise RangesError(
            f"declared ranges: unknown feature {unknown[0]!r} (the features are "
            f"{', '.join(FEATURES)}: {want})",
            where,
        )
    out: Ranges = {}
    for feature in FEATURES:
        ranges = declared.get(feature)
        if ranges is None:
            continue
        if not isinstance(ranges, Mapping):
            raise RangesError(
                f"declared ranges: {feature} must map names to [lo, hi], "
                f"got {type(ranges).__name__}",
                where,
            )
        checked: dict[str, list[float]] = {}
        for name, bounds in ranges.items():
            if not isinstance(name, str) or not name:
                raise RangesError(f"declared ranges: {feature}: a name must be text", where)
            checked[name] = _bounds(feature, name, bounds, where)
        if checked:
            out[feature] = checked
    if not out:
        raise RangesError(f"declared ranges: no range declared ({want})", where)
    return out


def check_ranges(
    declared: Any,
    state_names: Sequence[str],
    action_names: Sequence[str],
    where: Path | str | None = None,
) -> Ranges:
    """``declared`` normalised (:func:`check_shape`), every name one of the dataset's own
    state (action) names, and only one column's; RangesError naming the fault and the
    names there are."""
    out = check_shape(declared, where)
    names = {"observation.state": list(state_names), "action": list(action_names)}
    for feature, ranges in out.items():
        for name in ranges:
            if name not in names[feature]:
                have = ", ".join(names[feature]) or "none"
                raise RangesError(
                    f"declared ranges: {feature} has no {name!r} (its names: {have})", where
                )
            if names[feature].count(name) > 1:
                raise RangesError(
                    f"declared ranges: {feature} {name!r} is ambiguous: the dataset has "
                    f"{names[feature].count(name)} columns of that name",
                    where,
                )
    return out


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


def _bounds(feature: str, name: str, bounds: Any, where: Path | str | None) -> list[float]:
    what = f"declared ranges: {feature} {name!r}"
    if (
        isinstance(bounds, (str, bytes, Mapping))
        or not isinstance(bounds, Sequence)
        or len(bounds) != 2
    ):
        raise RangesError(f"{what} must be [lo, hi] (two numbers), got {_show(bounds)}", where)
    out = []
    for b in bounds:
        if isinstance(b, bool) or not isinstance(b, Real):
            raise RangesError(f"{what}: {_show(b)} is not a number", where)
        try:
            v = float(b)
        except OverflowError:
            v = math.inf
        if not math.isfinite(v):
            raise RangesError(
                f"{what}: bounds must be finite numbers, got {_show(b)} (a declared range "
                "only narrows the data's own limits: a wide finite bound stands for none)",
                where,
            )
        out.append(v)
    if not out[0] < out[1]:
        raise RangesError(f"{what} needs lo < hi, got [{out[0]:g}, {out[1]:g}]", where)
    return out


def _show(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (list, tuple, str, int, float, bool)) else repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "DECLARED_RANGES_KEY",
    "FEATURES",
    "RangesError",
    "check_ranges",
    "check_shape",
    "load_ranges",
    "stored_ranges",
]
