"""The hub's group commit (dataspace.hub.store.GroupCommit) under concurrent publishers.

Every acknowledged publication is in the catalog table and in the hub log exactly
once, batches really form, and an item that makes its batch fail fails only its
own request.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import pytest

from dataspace.audit.events import parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.hub.state import HubLog, hub_key
from dataspace.hub.store import GroupCommit, HubStore


def _entry(n: int) -> dict:
    return {"dataset_id": f"ds-{n:04d}", "fingerprint": f"{n:064x}", "title": f"d{n}"}


def test_concurrent_publications_are_committed_once_each(tmp_path: Path) -> None:
    store = HubStore(tmp_path)
    hub_log = HubLog(tmp_path / "log", "hub", hub_key(tmp_path, "hub"))
    sizes: list[int] = []

    def commit(batch: list[tuple[str, dict]]) -> list[int]:
        sizes.append(len(batch))
        if any(e["dataset_id"] == "ds-0013" for _, e in batch):
            raise ValueError("bad entry ds-0013")
        store.publish_many(batch)
        events = [("catalog.published", {"dataset_id": e["dataset_id"]}) for _, e in batch]
        return hub_log.record_many(events)

    gc = GroupCommit(commit, name="test-publications", burst=store.burst)
    acked: dict[str, int] = {}
    errors: dict[str, str] = {}

    def publisher(first: int) -> None:
        for n in range(first, 40, 8):
            e = _entry(n)
            try:
                acked[e["dataset_id"]] = gc.submit(("holder", e))
            except ValueError as err:
                errors[e["dataset_id"]] = str(err)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == {"ds-0013": "bad entry ds-0013"}
    assert len(acked) == 39 and len(set(acked.values())) == 39
    with TransparencyLog.open(tmp_path / "log") as log:
        logged = [parse_event(e).fields["dataset_id"] for e in log.entries(0, log.size)]
    counts = collections.Counter(logged)
    assert set(counts) == set(acked) and max(counts.values()) == 1
    for ds, idx in acked.items():  # each request got its own entry's index
        assert logged[idx] == ds
    with store.db() as con:
        rows = {r[0] for r in con.execute("SELECT dataset_id FROM catalog").fetchall()}
    assert rows == set(acked) == {k[1] for k in HubStore(tmp_path).catalog}
    assert max(sizes) > 1  # batches formed


def test_an_error_in_a_single_item_batch_reaches_its_caller(tmp_path: Path) -> None:
    gc = GroupCommit(lambda batch: [1 / 0 for _ in batch], name="test-fail")
    with pytest.raises(ZeroDivisionError):
        gc.submit("x")
