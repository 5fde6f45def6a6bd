"""Hostile input: malformed Parquet, HDF5, MCAP and JSON-LD give typed errors, never a crash.

Seeds are small valid files made from two real SO-101 episodes (the test
writers of tests/connectors); hypothesis truncates them or overwrites bytes at
random offsets, then the format's reader reads every episode. Any exception
that is not a :class:`DataspaceError` fails, and so does an example that runs
longer than ``HANG_S`` (SIGALRM). JSON-LD: ODRL usage policies, both random
JSON and valid policies with one member changed or removed.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataspace.connectors.detect import open_reader
from dataspace.errors import DataspaceError
from dataspace.policy.odrl import build_policy, parse_usage_policy
from tests.conftest import SO101
from tests.connectors.writers import read_lerobot, write_hdf5, write_mcap, write_parquet

HANG_S = 20
FORMATS = ("parquet", "hdf5", "mcap")
CASES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("seeds")
    eps = read_lerobot(SO101, "observation.state", "action", episodes=[0, 1])
    for e in eps:  # short episodes: small seed files, fast examples
        e.timestamps, e.state, e.action = e.timestamps[:40], e.state[:40], e.action[:40]
    write_parquet(d / "f.parquet", eps)
    write_hdf5(d / "f.hdf5", eps, fps=30.0)
    write_mcap(d / "f.mcap", eps)
    out = {fmt: (d / f"f.{fmt}").read_bytes() for fmt in FORMATS}
    for fmt in FORMATS:  # the seeds themselves read cleanly
        assert len(list(open_reader(d / f"f.{fmt}", fmt).episodes())) == 2
    return out


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"reader ran longer than {HANG_S}s")


def _read_all(path: Path, fmt: str) -> None:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        for _ in open_reader(path, fmt).episodes():
            pass
    except DataspaceError:
        pass  # a typed refusal is the expected outcome
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 0.999), st.just(b"")),
    st.tuples(st.just("overwrite"), st.floats(0.0, 0.999), st.binary(min_size=1, max_size=16)),
)


@settings(CASES, max_examples=60)
@given(fmt=st.sampled_from(FORMATS), muts=st.lists(mutation, min_size=1, max_size=4))
def test_malformed_files_give_typed_errors(seeds, tmp_path: Path, fmt: str, muts) -> None:
    data = bytearray(seeds[fmt])
    for kind, where, junk in muts:
        pos = int(where * len(data))
        if kind == "truncate":
            del data[pos:]
        else:
            data[pos : pos + len(junk)] = junk
    path = tmp_path / f"{uuid.uuid4().hex}.{fmt}"
    path.write_bytes(bytes(data))
    _read_all(path, fmt)


def _policy() -> dict:
    return build_policy(
        dataset_id="ds-1",
        fingerprint="00" * 32,
        assigner=base64.b64encode(bytes(32)).decode(),
        epsilon=8.0,
        delta=1e-5,
        purposes=["research"],
        until=datetime.now(UTC) + timedelta(days=3),
        max_rounds=5,
        templates=["bc-mlp"],
    ).to_jsonld()


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


@CASES
@given(data=st.data())
def test_malformed_policies_give_typed_errors(data) -> None:
    doc = copy.deepcopy(_policy())
    paths = list(_paths(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        try:
            for p in path[:-1]:
                parent = parent[p]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue
    for form in (doc, json.dumps(doc)):
        with contextlib.suppress(DataspaceError):
            parse_usage_policy(form)


@CASES
@given(doc=json_values)
def test_random_json_is_not_a_policy(doc) -> None:
    with pytest.raises(DataspaceError):
        parse_usage_policy(json.dumps(doc))
