"""The canonical bytes and fingerprint: one definition, any clock, any machine."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from dataspace.audit.merkle import EMPTY_ROOT, leaf_hash, node_hash
from dataspace.schema import (
    CANONICAL_MAGIC,
    Episode,
    SchemaError,
    canonical_bytes,
    dataset_id_for,
    episode_hash,
    fingerprint,
    timestamps_to_us,
)


def _episode(n: int = 5, s: int = 3, a: int = 2, fps: float = 30.0) -> Episode:
    rng = np.random.default_rng(0)
    t = np.arange(n, dtype=np.float64) / fps
    return Episode(
        timestamps_us=timestamps_to_us(t),
        state=rng.normal(size=(n, s)).astype(np.float32),
        action=rng.normal(size=(n, a)).astype(np.float32),
    )


def test_canonical_bytes_layout_is_exactly_as_documented() -> None:
    ep = _episode(n=4, s=3, a=2)
    b = canonical_bytes(ep)
    header = CANONICAL_MAGIC + struct.pack("<IIQ", 3, 2, 4)
    assert b.startswith(header)
    body = b[len(header) :]
    assert len(body) == 4 * 8 + 4 * 3 * 4 + 4 * 2 * 4
    assert np.frombuffer(body[:32], "<i8").tolist() == [0, 33333, 66667, 100000]
    assert np.array_equal(np.frombuffer(body[32:80], "<f4").reshape(4, 3), ep.state)
    assert episode_hash(ep) == hashlib.sha256(b).digest()


def test_float32_float64_and_nanosecond_clocks_give_the_same_microseconds() -> None:
    start_ns = 1_700_000_000_123_456_789  # an absolute clock: the episode start is subtracted
    rel = np.arange(3000) / 30.0
    f64 = timestamps_to_us(rel)
    f32 = timestamps_to_us(rel.astype(np.float32))
    ns = timestamps_to_us(start_ns + np.rint(rel * 1e9).astype(np.int64), unit="ns")
    assert np.array_equal(f64, f32)
    assert np.array_equal(f64, ns)


def test_any_change_of_content_changes_the_hash() -> None:
    ep = _episode()
    h = episode_hash(ep)
    state = ep.state.copy()
    state[2, 1] = np.nextafter(state[2, 1], np.float32(np.inf))
    assert episode_hash(Episode(ep.timestamps_us, state, ep.action)) != h
    ts = ep.timestamps_us.copy()
    ts[3] += 1
    assert episode_hash(Episode(ts, ep.state, ep.action)) != h
    # the dimensions are part of the bytes: a [N,6] state + [N,0] action is not [N,3] + [N,3]
    both = np.concatenate([ep.state, ep.action], axis=1)
    assert episode_hash(Episode(ep.timestamps_us, both, np.zeros((5, 0), np.float32))) != h


def test_fingerprint_is_the_rfc9162_root_over_episode_hashes() -> None:
    hs = [episode_hash(_episode(n=k + 2)) for k in range(3)]
    want = node_hash(node_hash(leaf_hash(hs[0]), leaf_hash(hs[1])), leaf_hash(hs[2]))
    assert fingerprint(hs) == want
    assert fingerprint([]) == EMPTY_ROOT
    assert dataset_id_for(want) == "ds-" + want.hex()[:16]


def test_mismatched_rows_are_a_schema_error() -> None:
    ep = _episode()
    with pytest.raises(SchemaError, match="one row per frame"):
        canonical_bytes(Episode(ep.timestamps_us, ep.state[:3], ep.action))


def test_store_timestamps_round_trip_exactly() -> None:
    from dataspace.schema import stored_timestamps_to_us

    us = timestamps_to_us(np.arange(20_000) / 30.0)  # an 11-minute episode
    assert np.array_equal(stored_timestamps_to_us(us / 1e6), us)
    assert np.all(np.diff(us) > 0)
