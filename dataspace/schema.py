"""The canonical episode schema, episode hashes and dataset fingerprints.

Every format reader normalises to one Arrow schema (LeRobot's column names, one
row per frame). Two facts are defined here and nowhere else:

* the **canonical bytes** of an episode, hashed with SHA-256 to give the
  episode hash;
* the **fingerprint** of a dataset: the RFC 9162 Merkle root over its episode
  hashes in episode order.

Canonical bytes of an episode with N frames, S state and A action dimensions
(all integers little-endian)::

    b"dataspace/episode/v1\\n"
    || uint32(S) || uint32(A) || uint64(N)
    || int64[N]     timestamps, microseconds since the episode's first frame
                    (see :func:`timestamps_to_us`)
    || float32[N*S] observation.state, frame-major
    || float32[N*A] action, frame-major

Float32, float64 and integer nanosecond clocks give the same microseconds for
the same moment, so the same recording yields the same hash whatever format it
came in. A float32 clock holds about seven significant digits (its step is
0.95 us between 8 s and 16 s, 61 us at 1000 s), so a float64 or nanosecond
clock cannot be matched to it by rounding to microseconds alone: the seconds
since the first frame are first rounded to the nearest float32, then to whole
microseconds (half to even). The store keeps those microseconds (as seconds,
us / 1e6, which float64 holds exactly), so :func:`stored_timestamps_to_us`
recovers them without going through float32 again.

Rewards, done flags and task labels are metadata, not content: many formats
cannot carry them, and the fingerprint must survive a format change.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from dataspace.audit.merkle import leaf_hash, root_from_leaf_hashes
from dataspace.errors import DataspaceError

CANONICAL_MAGIC = b"dataspace/episode/v1\n"

STATE = "observation.state"
ACTION = "action"


class SchemaError(DataspaceError):
    """Data that cannot be put in the canonical schema (dims, dtypes, clocks)."""


def frame_schema(state_dim: int, action_dim: int) -> pa.Schema:
    """The Arrow schema of the canonical frame table (DESIGN.md, Canonical schema)."""
    return pa.schema(
        [
            pa.field("episode_index", pa.int64(), nullable=False),
            pa.field("frame_index", pa.int64(), nullable=False),
            pa.field("timestamp", pa.float64(), nullable=False),
            pa.field(STATE, pa.list_(pa.float32(), state_dim), nullable=False),
            pa.field(ACTION, pa.list_(pa.float32(), action_dim), nullable=False),
            pa.field("task_index", pa.int64(), nullable=False),
            pa.field("next.reward", pa.float32()),
            pa.field("next.done", pa.bool_()),
            pa.field("index", pa.int64(), nullable=False),
        ]
    )


@dataclass(frozen=True)
class Episode:
    """One episode in canonical form, as numpy arrays (what readers yield).

    ``timestamps_us`` are microseconds since the first frame; ``state`` is
    float32 [N, S]; ``action`` float32 [N, A]. ``source`` names the file (and
    group or topic) it came from, for error messages.
    """

    timestamps_us: np.ndarray
    state: np.ndarray
    action: np.ndarray
    task_index: int = 0
    reward: np.ndarray | None = None
    done: np.ndarray | None = None
    source: str = ""

    @property
    def frames(self) -> int:
        return int(self.timestamps_us.shape[0])


def timestamps_to_us(values: np.ndarray, unit: str = "s") -> np.ndarray:
    """Canonical microseconds since the first value, as int64.

    ``unit`` is ``"s"`` for float seconds (float32 or float64) or ``"ns"`` for
    integer nanoseconds. The offset from the first value is taken exactly
    (float64, or int64 for nanoseconds), rounded to the nearest float32 so that
    every clock lands on the same value a float32 clock would hold, then
    rounded half to even to whole microseconds.
    """
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if unit == "ns":
        ns = values.astype(np.int64)
        rel = (ns - ns[0]).astype(np.float64) / 1e9
    elif unit == "s":
        sec = values.astype(np.float64)
        rel = sec - sec[0]
    else:
        raise SchemaError(f"unknown timestamp unit {unit!r} (expected 's' or 'ns')")
    if not np.all(np.isfinite(rel)):
        raise SchemaError("timestamps contain NaN or infinity")
    return np.rint(rel.astype(np.float32).astype(np.float64) * 1e6).astype(np.int64)


def stored_timestamps_to_us(seconds: np.ndarray) -> np.ndarray:
    """Microseconds from the store's ``timestamp`` column (already canonical: us / 1e6)."""
    return np.rint(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)


def canonical_bytes(ep: Episode) -> bytes:
    """The exact bytes an episode hash is computed over (see module docstring)."""
    return b"".join(_canonical_parts(ep))


def _canonical_parts(ep: Episode) -> Iterable[bytes]:
    n = ep.frames
    state = np.ascontiguousarray(ep.state, dtype="<f4")
    action = np.ascontiguousarray(ep.action, dtype="<f4")
    if state.ndim != 2 or state.shape[0] != n or action.ndim != 2 or action.shape[0] != n:
        raise SchemaError(
            f"{ep.source or 'episode'}: state {state.shape} and action {action.shape} "
            f"must be 2-D with one row per frame ({n} frames)"
        )
    yield CANONICAL_MAGIC
    yield struct.pack("<IIQ", state.shape[1], action.shape[1], n)
    yield np.ascontiguousarray(ep.timestamps_us, dtype="<i8").tobytes()
    yield state.tobytes()
    yield action.tobytes()


def episode_hash(ep: Episode) -> bytes:
    """SHA-256 over the episode's canonical bytes (32 bytes)."""
    h = hashlib.sha256()
    for part in _canonical_parts(ep):
        h.update(part)
    return h.digest()


def fingerprint(episode_hashes: Sequence[bytes]) -> bytes:
    """The dataset fingerprint: RFC 9162 Merkle root over the episode hashes.

    Each episode hash is a leaf entry, so leaf i is SHA-256(0x00 || hash_i).
    """
    return root_from_leaf_hashes([leaf_hash(h) for h in episode_hashes])


def dataset_id_for(fingerprint_bytes: bytes) -> str:
    """A dataset's id is derived from its content, so enrolling twice is idempotent."""
    return "ds-" + fingerprint_bytes.hex()[:16]


@dataclass
class DatasetInfo:
    """Metadata a reader learns about a dataset before or while streaming it."""

    name: str
    source_format: str
    fps: float | None
    robot_type: str = "unknown"
    state_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    license: str | None = None
    declared_episodes: int | None = None
    declared_frames: int | None = None
    #: referenced files (e.g. videos): {"path", "sha256" or None, "present"}
    attachments: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
