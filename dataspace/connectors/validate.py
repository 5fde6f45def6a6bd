"""Checks every episode passes before it is hashed and stored, whatever its format.

Vectorised numpy checks over the whole episode (no per-frame Python loops):
non-empty, consistent state/action dimensions, finite values, strictly
increasing timestamps, and one frame rate for the whole dataset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dataspace.connectors.reader import (
    DimensionError,
    FpsError,
    NonFiniteError,
    TimestampError,
    estimate_fps,
)
from dataspace.schema import Episode

#: an episode whose median frame interval differs from the dataset's by more
#: than this fraction is "mixed fps" (real recordings jitter by far less)
FPS_TOLERANCE = 0.05


@dataclass
class Validator:
    """Remembers what the first episode established (dims, fps) and checks the rest."""

    fps: float | None = None
    state_dim: int | None = None
    action_dim: int | None = None

    def __post_init__(self) -> None:
        # a declared rate divides below: refuse 0, negative, NaN or infinite ones here
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise FpsError(f"declared frame rate {self.fps!r} is not a positive number")

    def check(self, ep: Episode, index: int) -> None:
        src = ep.source
        if ep.frames == 0:
            raise DimensionError("episode has no frames", src, index)
        s, a = ep.state.shape[1], ep.action.shape[1]
        if self.state_dim is None:
            if s == 0 or a == 0:
                raise DimensionError(
                    f"state dim {s} / action dim {a}: both must be > 0", src, index
                )
            self.state_dim, self.action_dim = s, a
        elif (s, a) != (self.state_dim, self.action_dim):
            raise DimensionError(
                f"state/action dims {s}/{a} differ from the dataset's "
                f"{self.state_dim}/{self.action_dim}",
                src,
                index,
            )
        for what, arr in (("observation.state", ep.state), ("action", ep.action)):
            finite = np.isfinite(arr)
            if not finite.all():
                row, col = (int(x) for x in np.argwhere(~finite)[0])
                raise NonFiniteError(f"{what}[{col}] of frame {row} is {arr[row, col]}", src, index)
        ts = ep.timestamps_us
        steps = np.diff(ts)
        if (steps <= 0).any():
            bad = int(np.flatnonzero(steps <= 0)[0]) + 1
            raise TimestampError(
                f"timestamps not increasing at frame {bad} "
                f"({ts[bad - 1]} us then {ts[bad]} us after the episode start)",
                src,
                index,
            )
        est = estimate_fps(ts)
        if est is None:
            return
        if self.fps is None:
            self.fps = est
        elif abs(est - self.fps) / self.fps > FPS_TOLERANCE:
            raise FpsError(
                f"runs at {est:g} fps but the dataset runs at {self.fps:g} fps (mixed fps)",
                src,
                index,
            )
