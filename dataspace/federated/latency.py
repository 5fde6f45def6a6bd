"""Flower 1.42's fixed waits on the deployment engine's message path, shortened.

Flower waits in fixed steps wherever a process polls another (measured in
bench/RESULTS.md, fl_overhead): the SuperNode sleeps 3 s between pulls and
0.5 s while it waits for a reply; an object not yet uploaded is retried after
1, 2, 4 ... s (``PULL_INITIAL_BACKOFF`` 1 s, ``PULL_BACKOFF_CAP`` 10 s), and
with fast polling the receiver often asks before the sender has finished
uploading. None of these is a flag in 1.42, so the functions here rebind them
in the one module that uses them, leaving the protocol, TLS, node
authentication and FAB verification unchanged.
"""

from __future__ import annotations

import functools
import time
from types import ModuleType
from typing import Any

#: first retry and longest wait when an object is not there yet (Flower: 1 s and 10 s)
INITIAL_BACKOFF = 0.02
BACKOFF_CAP = 0.25


class Pacer:
    """Polls fast while work is flowing, slowly when idle.

    Idle polling is not free on a small machine (measured here: 3 SuperNodes pulling
    every 0.1 s plus the SuperLink serving them took 0.65 of 2 cores with nothing to
    do), and only latency inside a run matters: after any activity, wait ``fast``
    seconds between polls for ``window`` seconds, otherwise ``slow``.
    """

    def __init__(self, fast: float, slow: float, window: float = 30.0) -> None:
        self.fast, self.slow, self.window = fast, slow, window
        self._last = float("-inf")

    def active(self) -> None:
        self._last = time.monotonic()

    def interval(self) -> float:
        return self.fast if time.monotonic() - self._last < self.window else self.slow

    def wait(self) -> None:
        time.sleep(self.interval())


class CappedClock:
    """The ``time`` module, whose ``sleep`` is capped at ``cap`` seconds."""

    def __init__(self, cap: float | Pacer) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        cap = self.cap.interval() if isinstance(self.cap, Pacer) else self.cap
        time.sleep(min(seconds, cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def cap_sleeps(module: ModuleType, cap: float | Pacer) -> None:
    """Every ``time.sleep`` of ``module`` waits at most ``cap`` seconds (or the pacer's)."""
    module.time = CappedClock(cap)  # type: ignore[attr-defined]


def fast_object_pulls(module: ModuleType) -> None:
    """``module.pull_objects`` retries a missing object after 20 ms, at most 250 ms apart."""
    from flwr.supercore.inflatable import inflatable_utils

    module.pull_objects = functools.partial(  # type: ignore[attr-defined]
        inflatable_utils.pull_objects, initial_backoff=INITIAL_BACKOFF, backoff_cap=BACKOFF_CAP
    )
