"""The format of a holder's declared feature ranges, and its one strict check.

A robot's maker knows its joints' limits (and a camera's image size); a dataset's
catalog entry may declare them under :data:`DECLARED_RANGES_KEY`, with LeRobot's feature
keys and the dataset's own state and action names::

    {"observation.state": {"shoulder_pan.pos": [-110, 110], ...},
     "action": {"gripper.pos": [0, 100]}}

:func:`check_declaration` is the only check of that format: enrollment applies it
before anything is stored (``dataspace.connectors.ranges``, which adds reading the
file), the quality check applies it again to what it reads from the catalog
(``dataspace.quality.suite.declared_ranges``), and the DCAT catalogs apply it before
they carry a declaration. It is strict: a JSON object of only the :data:`FEATURES`, each
mapping names to exactly two finite real numbers (no strings, bytes, booleans or
mappings; no NaN or infinity) with ``lo < hi``, at least one range; and, once the
dataset's names are known, every name one of the feature's own names and only one
column's. A declaration the check could not apply must not read as one it applied, so
every fault raises :class:`RangesError` instead of being dropped.

Pure Python: no Great Expectations, pandas, DuckDB or pyarrow (enrollment, the
connector's catalog and the hub import it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

from dataspace.quality.errors import QualityError

#: the catalog key under which a dataset declares its features' ranges
DECLARED_RANGES_KEY = "robot:declaredRanges"
#: the features a declaration may name, in the order they are stored
FEATURES = ("observation.state", "action")

#: a checked declaration: feature -> name -> [lo, hi] (floats)
Ranges = dict[str, dict[str, list[float]]]


class RangesError(QualityError):
    """A declaration of feature ranges that cannot be applied (malformed, unknown feature
    or name, a name two columns share, empty or reversed range)."""


def check_declaration(
    declared: Any,
    state_names: Sequence[str] | None = None,
    action_names: Sequence[str] | None = None,
) -> Ranges:
    """``declared`` checked (module docstring) and normalised: ``{feature: {name: [lo,
    hi]}}``, floats, features in the order of :data:`FEATURES`, empty features left out.

    With the dataset's ``state_names`` and ``action_names`` (both or neither), every name
    must be one of its feature's and only one column's; without them (the names are not
    known yet) only the shape is checked. :class:`RangesError` names the first fault.
    """
    if (state_names is None) != (action_names is None):
        raise TypeError("give both state_names and action_names, or neither")
    want = ", ".join(f'"{f}": {{name: [lo, hi]}}' for f in FEATURES)
    want = f"{{{want}}}"
    if not isinstance(declared, Mapping):
        raise RangesError(f"declared ranges must be a JSON object {want}")
    unknown = [k for k in declared if k not in FEATURES]
    if unknown:
        raise RangesError(
            f"declared ranges: unknown feature {unknown[0]!r} (the features are "
            f"{', '.join(FEATURES)}: {want})"
        )
    out: Ranges = {}
    for feature in FEATURES:
        ranges = declared.get(feature)
        if ranges is None:
            continue
        if not isinstance(ranges, Mapping):
            raise RangesError(
                f"declared ranges: {feature} must map names to [lo, hi], "
                f"got {type(ranges).__name__}"
            )
        checked: dict[str, list[float]] = {}
        for name, bounds in ranges.items():
            if not isinstance(name, str) or not name:
                raise RangesError(f"declared ranges: {feature}: a name must be text")
            checked[name] = _bounds(feature, name, bounds)
        if checked:
            out[feature] = checked
    if not out:
        raise RangesError(f"declared ranges: no range declared ({want})")
    if state_names is not None and action_names is not None:
        names = {"observation.state": list(state_names), "action": list(action_names)}
        for feature, ranges in out.items():
            for name in ranges:
                n = names[feature].count(name)
                if n == 0:
                    have = ", ".join(names[feature]) or "none"
                    raise RangesError(
                        f"declared ranges: {feature} has no {name!r} (its names: {have})"
                    )
                if n > 1:
                    raise RangesError(
                        f"declared ranges: {feature} {name!r} is ambiguous: the dataset "
                        f"has {n} columns of that name"
                    )
    return out


def _bounds(feature: str, name: str, bounds: Any) -> list[float]:
    """``[lo, hi]``: exactly two finite real numbers, ``lo < hi`` (a string such as
    "12" would unpack as 1, 2; a bool is not a number)."""
    what = f"declared ranges: {feature} {name!r}"
    if (
        isinstance(bounds, str | bytes | Mapping)
        or not isinstance(bounds, Sequence)
        or len(bounds) != 2
    ):
        raise RangesError(f"{what} must be [lo, hi] (two numbers), got {_show(bounds)}")
    out = []
    for b in bounds:
        if isinstance(b, bool) or not isinstance(b, Real):
            raise RangesError(f"{what}: {_show(b)} is not a number")
        try:
            v = float(b)
        except OverflowError:
            v = math.inf
        if not math.isfinite(v):
            raise RangesError(
                f"{what}: bounds must be finite numbers, got {_show(b)} (a declared range "
                "only narrows the data's own limits: a wide finite bound stands for none)"
            )
        out.append(v)
    if not out[0] < out[1]:
        raise RangesError(f"{what} needs lo < hi, got [{out[0]:g}, {out[1]:g}]")
    return out


def _show(v: Any) -> str:
    try:
        text = json.dumps(v) if isinstance(v, list | tuple | str | int | float | bool) else repr(v)
    except (TypeError, ValueError, RecursionError):  # no JSON form, or nested too deeply
        text = f"a {type(v).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "DECLARED_RANGES_KEY",
    "FEATURES",
    "Ranges",
    "RangesError",
    "check_declaration",
]
