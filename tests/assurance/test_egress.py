"""The egress guard: replies that are not an expected update or report are refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from dataspace.audit.events import parse_event
from dataspace.audit.log import TransparencyLog
from dataspace.federated import egress
from dataspace.site import create_site


@pytest.fixture(autouse=True)
def _task_identity():
    """Flower stamps messages with the task's identity (as LocalGrid does)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def _arrays(d: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in d.items()})


MODEL = {"net.0.weight": np.zeros((4, 3), np.float32), "net.0.bias": np.zeros(4, np.float32)}


def _request(kind: str = "train") -> Message:
    content = RecordDict(
        {"config": ConfigRecord({"run-id": "run-1", "server-round": 2, "contracts": "c"})}
    )
    if kind == "train":
        content["arrays"] = _arrays(MODEL)
    return Message(content, dst_node_id=1, message_type=kind)


def _reply(req: Message, **records) -> Message:
    base = {
        "arrays": _arrays({k: v + 1 for k, v in MODEL.items()}),
        "metrics": MetricRecord({"num-examples": 100, "train-loss": 0.5}),
        "info": ConfigRecord({"site": "a", "dataset-id": "ds-1"}),
    }
    base.update(records)
    return Message(RecordDict({k: v for k, v in base.items() if v is not None}), reply_to=req)


def test_expected_update_passes_and_is_measured() -> None:
    req = _request()
    rec = egress.check_reply(req, _reply(req))
    assert rec.shapes == {"net.0.weight": [4, 3], "net.0.bias": [4]}
    assert rec.bytes >= 16 * 4 and rec.round_no == 2 and rec.run_id == "run-1"


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ({"raw": ConfigRecord({"x": [1.0, 2.0]})}, "unexpected records"),
        (
            {"arrays": _arrays({**MODEL, "frames": np.ones((10, 3), np.float32)})},
            "arrays differ",
        ),
        ({"arrays": _arrays({k: v.reshape(-1) for k, v in MODEL.items()})}, "arrays differ"),
        (
            {"arrays": _arrays({k: v.astype(np.float64) for k, v in MODEL.items()})},
            "arrays differ",
        ),
        ({"metrics": MetricRecord({"state-mean": [0.1, 0.2]})}, "not an expected"),
        ({"metrics": MetricRecord({"train-loss": [0.1, 0.2]})}, "not a scalar"),
        ({"info": ConfigRecord({"site": "x" * 500})}, "info field"),
        ({"info": ConfigRecord({"episode": "7"})}, "info field"),
    ],
)
def test_unexpected_content_is_refused(records, match) -> None:
    req = _request()
    with pytest.raises(egress.EgressRefusedError, match=match):
        egress.check_reply(req, _reply(req, **records))


def test_evaluate_may_not_send_arrays_and_unknown_types_are_refused() -> None:
    req = _request("evaluate")
    with pytest.raises(egress.EgressRefusedError, match="unexpected records"):
        egress.check_reply(req, _reply(req))
    ok = _reply(req, arrays=None, metrics=MetricRecord({"eval-mse": 0.1}))
    egress.check_reply(req, ok)
    with pytest.raises(egress.EgressRefusedError, match="not a message"):
        egress.check_reply(_request("query.frames"), ok)


def test_sums_wider_than_the_data_are_refused() -> None:
    req = _request("query.stats")
    sums = ConfigRecord({"sum": [0.0] * 9, "state-dim": 3, "action-dim": 3})
    with pytest.raises(egress.EgressRefusedError, match=r"sums\.sum"):
        egress.check_reply(req, _reply(req, arrays=None, metrics=None, sums=sums))


def test_mod_refuses_logs_and_records(tmp_path) -> None:
    """A ClientApp handler that tries to send extra data: the reply never leaves."""
    site = create_site(tmp_path / "site", org="holder")
    app = ClientApp(mods=[egress.guard_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return _reply(message, leak=ConfigRecord({"rows": [1.0, 2.0, 3.0]}))

    ctx = Context(1, 1, {"site": str(site.root)}, RecordDict(), {})
    before = TransparencyLog.open(site.log_dir).size
    with pytest.raises(egress.EgressRefusedError):
        app(_request(), ctx)
    log = TransparencyLog.open(site.log_dir)
    assert log.size == before + 1
    event = parse_event(log.entries(log.size - 1, log.size)[0])
    assert event.kind == "access.refused" and "egress" in event.fields["reason"]
    rows = egress.totals(site)
    assert rows and rows[0]["all_sent"] is False
