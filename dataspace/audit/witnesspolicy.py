"""Which checkpoint of a log counts as witnessed: the log's witness policy.

A log serves, besides its latest checkpoint, a *witnessed* one
(``GET /checkpoint?witnessed=true``, ``dataspace audit checkpoint``): the newest
checkpoint its witnesses cosigned, which is what auditors verify with
``--witness-quorum``. As in C2SP practice (a log's witness policy names the
witnesses and a k-of-n quorum; verifiers apply their own), the policy is
evaluated against the *current* witness set of the log, which the service that
pushes its checkpoints knows (the hub: its catalog's connectors; a connector:
the hub and the other holders). The pusher writes it to ``LOG/witnesses.json``
(:class:`WitnessPolicy`) so that every reader of the folder sees the same.

A checkpoint of size ``s`` satisfies the policy when

- with a configured ``quorum`` k: at least k current witnesses cosigned it;
- otherwise: every *required* witness cosigned it, and at least one is
  required. A current witness is required at size ``s`` when it is not stale
  and its current run of cosignatures began at or before ``s`` (``since``).

A witness turns *stale* once it has failed to cosign for ``stale_after``
seconds in a row (dead, unreachable, or refusing); from then on it no longer
holds the witnessed checkpoint back, and it is reported (name, the size it
cosigned last, since when it fails, why). A witness removed from the
configuration stops counting at once. A witness that comes back, or a new one,
is required only from the first size it cosigns (``since``): the witnessed
checkpoint never moves back to an older one because a witness returned.
When no checkpoint satisfies the policy, the newest one cosigned by any
current witness is served (then the latest: none is cosigned at all).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dataspace.errors import DataspaceError

#: seconds a witness may fail in a row before it stops holding the witnessed checkpoint back
STALE_AFTER_S = 300.0


class WitnessPolicyError(DataspaceError):
    """A ``witnesses.json`` that cannot be read."""


@dataclass(frozen=True)
class WitnessState:
    """One current witness of a log, as its pusher last saw it."""

    name: str
    url: str | None = None
    #: the largest checkpoint size it cosigned (None: none yet)
    size: int | None = None
    #: the first size of its current run of cosignatures (None: not cosigned in this run)
    since: int | None = None
    #: UNIX time of its first failure since it last cosigned (None: not failing)
    failing_since: float | None = None
    error: str | None = None
    #: the HTTP status of its last refusal (409/422: it saw another history)
    status: int | None = None

    def stale(self, now: float, stale_after: float) -> bool:
        return self.failing_since is not None and now - self.failing_since >= stale_after


@dataclass(frozen=True)
class WitnessPolicy:
    """The current witness set of a log and how many of it must cosign (module docstring)."""

    witnesses: tuple[WitnessState, ...] = ()
    #: how many current witnesses must cosign; None: every required (live) one
    quorum: int | None = None
    stale_after: float = STALE_AFTER_S
    updated: float | None = field(default=None, compare=False)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(w.name for w in self.witnesses)

    def state(self, name: str) -> WitnessState | None:
        return next((w for w in self.witnesses if w.name == name), None)

    def stale(self, now: float | None = None) -> list[WitnessState]:
        now = time.time() if now is None else now
        return [w for w in self.witnesses if w.stale(now, self.stale_after)]

    def required(self, size: int, now: float | None = None) -> frozenset[str]:
        """The witnesses that must have cosigned a checkpoint of ``size`` (default quorum)."""
        now = time.time() if now is None else now
        return frozenset(
            w.name
            for w in self.witnesses
            if not w.stale(now, self.stale_after) and w.since is not None and w.since <= size
        )

    def satisfied(self, size: int, cosigners: Iterable[str], now: float | None = None) -> bool:
        """Does a checkpoint of ``size`` cosigned by ``cosigners`` count as witnessed?"""
        got = set(cosigners) & self.names
        if self.quorum is not None:
            return len(got) >= self.quorum
        need = self.required(size, now)
        return bool(need) and need <= got

    def to_json(self) -> dict[str, Any]:
        return {
            "witnesses": [asdict(w) for w in self.witnesses],
            "quorum": self.quorum,
            "stale_after_s": self.stale_after,
            "updated": self.updated,
        }

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode()

    def same_as(self, other: WitnessPolicy | None) -> bool:
        """Equal but for the time it was written (the pusher rewrites only on change)."""
        return other is not None and replace(other, updated=None) == replace(self, updated=None)


def _opt(obj: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    v = obj.get(key)
    if v is not None and (not isinstance(v, typ) or isinstance(v, bool)):
        raise WitnessPolicyError(f"witness policy: {key}={v!r} is not {typ}")
    return v


def parse_witness_policy(data: bytes) -> WitnessPolicy:
    """Read ``witnesses.json``; raises :class:`WitnessPolicyError` naming what is wrong."""
    try:
        obj = json.loads(data)
        states = []
        for w in obj["witnesses"]:
            if not isinstance(w, dict) or not isinstance(w.get("name"), str):
                raise WitnessPolicyError(f"witness policy: witness {w!r} has no name")
            states.append(
                WitnessState(
                    w["name"],
                    _opt(w, "url", str),
                    _opt(w, "size", int),
                    _opt(w, "since", int),
                    _opt(w, "failing_since", (int, float)),
                    _opt(w, "error", str),
                    _opt(w, "status", int),
                )
            )
        stale_after = _opt(obj, "stale_after_s", (int, float))
        return WitnessPolicy(
            tuple(states),
            _opt(obj, "quorum", int),
            STALE_AFTER_S if stale_after is None else float(stale_after),
            _opt(obj, "updated", (int, float)),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise WitnessPolicyError(f"witness policy is malformed: {e}") from e
