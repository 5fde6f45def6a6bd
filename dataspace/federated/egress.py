"""The egress guard: what a connector's ClientApp may send, checked and recorded per message.

DESIGN.md ("The flow of one dataset"): only DP model updates, DP-noised
statistics, reports and signed events cross a site's boundary. This module makes
that an enforced rule at the last point before a reply leaves the ClientApp
(a Flower mod, :func:`guard_mod`, installed with ``ClientApp(mods=[...])``):

* ``train``: records ``arrays`` (exactly the keys, shapes and dtypes of the
  model the server sent: an update, nothing more), ``metrics``, ``info``;
* ``evaluate``: ``metrics`` and ``info`` only;
* ``query`` (``query.stats``): the DP normalisation ``sums`` (vectors of the
  dataset's state + action width), ``metrics``, ``info``.

Metrics must be named ones and scalar; info values short strings. Anything else
(an unknown record, an extra tensor, a reshaped tensor, a vector metric, a
long string) is refused with :class:`EgressRefusedError`: the reply is not
sent, an ``access.refused`` event goes to the site's log. Every reply, sent or
refused, is recorded in the site's ``egress`` table (bytes, tensor shapes); the
update's size and shapes also go into the round's ``round.finished`` details
(:func:`round_details`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common.serde import recorddict_to_proto

from dataspace.errors import RefusedError
from dataspace.site import Site, refused

RECORDS: dict[str, frozenset[str]] = {
    "train": frozenset({"arrays", "metrics", "info"}),
    "evaluate": frozenset({"metrics", "info"}),
    "query.stats": frozenset({"sums", "metrics", "info"}),
}
METRICS: dict[str, frozenset[str]] = {
    "train": frozenset(
        {
            "num-examples",
            "train-loss",
            "epsilon-round",
            "epsilon-spent",
            "noise-multiplier",
            "steps",
            "train-seconds",
            # held-out MSE of the previous round's global model, when the server folds
            # evaluation into the train message (dataspace.federated.server_app)
            "eval-mse",
            "eval-examples",
            # the FedAvg weight in frames (catalog metadata), for federations mixing
            # frame and episode privacy units (dataspace.federated.server_app)
            "num-frames",
            # the held-out MSE's weight in frames (the same formula), for mixed federations
            "eval-frames",
        }
    ),
    "evaluate": frozenset({"num-examples", "eval-mse", "eval-frames"}),
    "query.stats": frozenset({"epsilon-round", "epsilon-spent"}),
}
#: "stats": the run's stats source, "dp" or "public"; "normalisation": what the site
#: normalised with, "public", "pooled" (a DP-stats run's pooled statistics) or "own"
INFO = frozenset(
    {"site", "dataset-id", "contract-id", "fingerprint", "privacy-unit", "stats", "normalisation"}
)
SUMS = frozenset({"sum", "sumsq", "count", "bound", "noise", "state-dim", "action-dim"})
#: longest string an info field may carry (names and hex ids, nothing more)
MAX_INFO_CHARS = 200


class EgressRefusedError(RefusedError):
    """A reply that is not an expected update or report; it is not sent."""


@dataclass(frozen=True)
class EgressRecord:
    message_type: str
    run_id: str
    round_no: int
    bytes: int
    shapes: dict[str, list[int]]


def _run_of(request: Message) -> str:
    """The run id a request names, as recorded (never raises: the sender chose it)."""
    cfg = request.content.config_records.get("config", ConfigRecord())
    return str(cfg.get("run-id", ""))[:200]


def _round_of(request: Message) -> int:
    """The round a request names, 0 when it is not a plausible whole number."""
    cfg = request.content.config_records.get("config", ConfigRecord())
    r = cfg.get("server-round", 0)
    return r if type(r) is int and 0 <= r < 2**53 else 0


def _kind(message_type: str) -> str:
    """Exact message types only: ``query.frames`` is not ``query.stats``."""
    return message_type


def _shapes(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(int(d) for d in a.shape), str(a.dtype)) for k, a in arrays.items()}


def check_reply(request: Message, reply: Message) -> EgressRecord:
    """Refuse ``reply`` unless it is exactly what a ``request`` of its type may get back."""
    mtype = request.metadata.message_type
    kind = _kind(mtype)
    rec = EgressRecord(
        message_type=mtype[:200],
        run_id=_run_of(request),
        round_no=_round_of(request),
        bytes=reply_bytes(reply),
        shapes={},
    )
    if reply.has_error():
        return rec  # an error reply carries the error's text only
    if kind not in RECORDS:
        raise EgressRefusedError(f"reply to a {mtype!r} message: not a message a site answers")
    content = reply.content
    extra = set(content.keys()) - RECORDS[kind]
    if extra:
        raise EgressRefusedError(f"reply to {mtype!r} carries unexpected records {sorted(extra)}")
    for name, value in content.items():
        if name == "arrays":
            sent = request.content.array_records.get("arrays")
            if not isinstance(value, ArrayRecord) or sent is None:
                raise EgressRefusedError(f"reply to {mtype!r}: arrays without a model sent")
            got, want = _shapes(value), _shapes(sent)
            if got != want:
                diff = sorted(set(got.items()) ^ set(want.items()))[:3]
                raise EgressRefusedError(
                    f"reply to {mtype!r}: arrays differ from the model sent (keys, shapes or "
                    f"dtypes), e.g. {diff}"
                )
            rec.shapes.update({k: list(s) for k, (s, _) in got.items()})
        elif name == "metrics":
            _check_metrics(mtype, kind, value)
        elif name == "info":
            _check_info(mtype, value)
        elif name == "sums":
            _check_sums(mtype, value)
    return rec


def _check_metrics(mtype: str, kind: str, value: Any) -> None:
    if not isinstance(value, MetricRecord):
        raise EgressRefusedError(f"reply to {mtype!r}: metrics is not a MetricRecord")
    for k, v in value.items():
        if k not in METRICS[kind]:
            raise EgressRefusedError(f"reply to {mtype!r}: metric {k!r} is not an expected one")
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise EgressRefusedError(f"reply to {mtype!r}: metric {k!r} is not a scalar")


def _check_info(mtype: str, value: Any) -> None:
    if not isinstance(value, ConfigRecord):
        raise EgressRefusedError(f"reply to {mtype!r}: info is not a ConfigRecord")
    for k, v in value.items():
        if k not in INFO or not isinstance(v, str) or len(v) > MAX_INFO_CHARS:
            raise EgressRefusedError(f"reply to {mtype!r}: info field {k!r} is not expected")


def _check_sums(mtype: str, value: Any) -> None:
    if not isinstance(value, ConfigRecord) or set(value.keys()) - SUMS:
        raise EgressRefusedError(f"reply to {mtype!r}: sums has unexpected fields")
    try:
        width = int(value["state-dim"]) + int(value["action-dim"])
    except (KeyError, TypeError, ValueError):
        raise EgressRefusedError(f"reply to {mtype!r}: sums without state/action dims") from None
    for k in ("sum", "sumsq", "count", "bound", "noise"):
        v = value.get(k)
        n = len(v) if isinstance(v, list) else 1
        if n > width:
            raise EgressRefusedError(f"reply to {mtype!r}: sums.{k} has {n} values > {width}")


def reply_bytes(reply: Message) -> int:
    """Size of the reply's serialised content (protobuf), as it goes on the wire."""
    if reply.has_error():
        return len(reply.error.reason.encode())
    return int(recorddict_to_proto(reply.content).ByteSize())


def round_details(arrays: ArrayRecord) -> dict[str, Any]:
    """``round.finished`` details: the update's bytes, tensor count and shapes."""
    shapes = _shapes(arrays)
    return {
        "egress_update_bytes": int(sum(a.numpy().nbytes for a in arrays.values())),
        "egress_tensors": len(shapes),
        "egress_shapes": {k: list(s) for k, (s, _) in sorted(shapes.items())},
    }


# --------------------------------------------------------------------------- recording


def ensure_tables(con: Any) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS egress (recorded_at TIMESTAMP, run_id VARCHAR, "
        "round_no BIGINT, "
        "message_type VARCHAR, bytes BIGINT, shapes JSON, sent BOOLEAN, reason VARCHAR)"
    )


def record_egress(site: Site, rec: EgressRecord, sent: bool, reason: str | None = None) -> None:
    """One row in the site's ``egress`` table (a unit of work of its own)."""
    with site.db() as con:
        ensure_tables(con)
        con.execute(
            "INSERT INTO egress VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                datetime.now(UTC).replace(tzinfo=None),
                rec.run_id,
                rec.round_no,
                rec.message_type,
                rec.bytes,
                json.dumps(rec.shapes),
                sent,
                reason,
            ],
        )


def totals(site: Any, run_id: str | None = None) -> list[dict[str, Any]]:
    """Bytes sent per run, round and message type (what ``egress`` recorded)."""
    with site.db() as con:
        ensure_tables(con)
        where, args = ("WHERE run_id = ?", [run_id]) if run_id else ("", [])
        rows = con.execute(
            "SELECT run_id, round_no, message_type, sum(bytes), count(*), bool_and(sent) "
            f"FROM egress {where} GROUP BY ALL ORDER BY ALL",
            args,
        ).fetchall()
    keys = ("run_id", "round_no", "message_type", "bytes", "messages", "all_sent")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _site_of(context: Context) -> Site | None:
    root = context.node_config.get("site")
    if not root:
        return None
    return Site.open(Path(str(root)))


def guard_mod(
    message: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Flower mod: run the handler, then let its reply out only if :func:`check_reply` agrees."""
    reply = call_next(message, context)
    site = _site_of(context)
    try:
        rec = check_reply(message, reply)
    except EgressRefusedError as e:
        if site is not None:
            bad = EgressRecord(
                message.metadata.message_type[:200],
                _run_of(message),
                _round_of(message),
                reply_bytes(reply),
                {},
            )
            record_egress(site, bad, sent=False, reason=str(e))
            refused(
                site, f"egress: {e}", run_id=bad.run_id, refusal=type(e).__name__,
                release=bad.message_type,
            )  # fmt: skip
        raise
    if site is not None:
        record_egress(site, rec, sent=True)
    _capture(reply)
    return reply


def _capture(reply: Message) -> None:
    """Tests: ``DATASPACE_EGRESS_CAPTURE=FILE`` appends each reply's wire bytes to FILE."""
    path = os.environ.get("DATASPACE_EGRESS_CAPTURE")
    if not path or reply.has_error():
        return
    # one write(2) on an O_APPEND descriptor: the site workers of a deployment share the
    # file, and a reply split by another's write could hide a needle across the seam
    data = recorddict_to_proto(reply.content).SerializeToString()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        written = os.write(fd, data)
        if written != len(data):  # a short write: say so rather than capture half a reply
            raise OSError(f"egress capture {path}: wrote {written} of {len(data)} bytes")
    finally:
        os.close(fd)
