"""Secure aggregation (SecAgg+) of the sites' updates: the server learns only their weighted sum.

Flower 1.42 ships SecAgg+ for its legacy API only: ``SecAggPlusWorkflow``
needs a ``LegacyContext`` (a legacy ``Strategy`` and ``ClientManager``) and
``secaggplus_mod`` expects legacy ``fitres.*`` records. This module runs the
same protocol inside this project's Message-API apps:

* site side, :func:`secagg_mod` (in the connector's ClientApp): messages that
  carry ``secaggplus_configs`` go through Flower's own ``secaggplus_mod``
  (key agreement, Shamir shares, masking, unmasking). Its training stage calls
  the connector's train handler (through the egress guard, which checks the
  plain update before it is masked) and hands the mod the *update* (weights
  sent minus weights trained) with the site's example count, already rounded
  to tens; the mod scales the update by that count over ``max_weight``,
  quantises it and sends it masked. The reply keeps the DP loss, epsilon and
  site info, and no tensors.
* server side, :func:`train_round`: the four stages (setup, share keys,
  collect masked vectors, unmask), a port of ``SecAggPlusWorkflow`` (1.42) on
  this project's ``Grid`` exchange. The unmasked sum gives
  ``sum_i q_i * update_i / sum_i q_i`` with ``q_i`` the quantised weight
  ``round(n_i / max_weight * 2**22)``: weighted FedAvg of the updates, added
  to the global model.

Error against plain FedAvg: each site's scaled update is quantised to steps
of ``2 * clipping_range / quantization_range`` (stochastic rounding), so the
aggregate differs by at most ``sites * step / sum_i(n_i / max_weight)`` per
coordinate (:func:`error_bound`), plus the weights' rounding to 2**-22. Values
beyond ``clipping_range`` are clipped: updates, not weights, are sent, so the
default range of 8 is far above them. ``max_weight`` must be at least every
site's example count: the server takes 1.5 times the largest DP count of the
statistics round.
"""

from __future__ import annotations

import contextvars
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from dataspace.errors import DataspaceError

#: Flower's defaults (SecAggPlusWorkflow)
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
CLIPPING_RANGE = 8.0

_FITRES = ("fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status")


class SecAggError(DataspaceError):
    """A secure aggregation round that cannot complete (too few sites at some stage)."""


def error_bound(
    num_examples: list[float],
    max_weight: float,
    clipping_range: float = CLIPPING_RANGE,
    quantization_range: int = QUANTIZATION_RANGE,
) -> float:
    """Largest per-coordinate difference from plain weighted FedAvg of the same updates."""
    step = 2 * clipping_range / quantization_range
    ratios = sum(n / max_weight for n in num_examples)
    return len(num_examples) * step / ratios + 2.0**-20


# ---------------------------------------------------------------- site side (ClientApp mod)


def _as_update(request: Message, reply: Message) -> Message:
    """The train reply in the legacy ``fitres`` form ``secaggplus_mod`` reads: the update."""
    sent = request.content["arrays"]
    trained = reply.content["arrays"]
    update = ArrayRecord({k: Array(_np(trained[k]) - _np(sent[k])) for k in sent})
    content = RecordDict(
        {
            "fitres.parameters": update,
            "fitres.num_examples": MetricRecord(
                {"num_examples": int(reply.content["metrics"]["num-examples"])}
            ),
            "fitres.metrics": ConfigRecord({}),
            "fitres.status": ConfigRecord({"code": 0, "message": ""}),
        }
    )
    for name in ("metrics", "info"):
        content[name] = reply.content[name]
    return Message(content, reply_to=request)


def _np(array: Any) -> np.ndarray:
    return np.asarray(array.numpy(), dtype=np.float64)


#: True while the train handler runs inside SecAgg+'s masking stage (set by :func:`secagg_mod`
#: after Flower's mod checked the protocol's stages, never by anything a message says)
_IN_SECURE_ROUND: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "in_secure_round", default=False
)


def in_secure_round() -> bool:
    """Is the current train message's update going to be masked by SecAgg+?"""
    return _IN_SECURE_ROUND.get()


def secagg_mod(msg: Message, ctxt: Context, call_next: Callable) -> Message:
    """Run Flower's ``secaggplus_mod`` on SecAgg+ messages; pass every other message on."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    from flwr.client.mod import secaggplus_mod

    def train_update(m: Message, c: Context) -> Message:
        token = _IN_SECURE_ROUND.set(True)
        try:
            reply = call_next(m, c)
        finally:
            _IN_SECURE_ROUND.reset(token)
        return reply if reply.has_error() else _as_update(m, reply)

    reply = secaggplus_mod(msg, ctxt, train_update)
    if reply.has_error():
        return reply
    for name in _FITRES:  # emptied by the mod; the masked vector is in its configs
        if name in reply.content:
            del reply.content[name]
    return reply


# ---------------------------------------------------------------- server side (ServerApp)


@dataclass
class _State:
    sampled: set[int]
    active: set[int]
    threshold: int
    neighbours: dict[int, set[int]] = field(default_factory=dict)
    public_keys: dict[int, list[bytes]] = field(default_factory=dict)
    fwd_srcs: dict[int, list[int]] = field(default_factory=dict)
    fwd_ciphertexts: dict[int, list[bytes]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)


Exchange = Callable[[list[Message]], list[Message]]


def _send(
    exchange: Exchange, state: _State, make: Callable[[int], RecordDict], rnd: int, stage: str
) -> list[Message]:
    msgs = [
        Message(make(n), dst_node_id=n, message_type="train", group_id=str(rnd))
        for n in sorted(state.active)
    ]
    replies = exchange(msgs)
    ok = [m for m in replies if not m.has_error()]
    answered = {m.metadata.src_node_id for m in replies}
    state.failures += [
        {"node": m.metadata.src_node_id, "reason": f"{stage}: {m.error.reason}"}
        for m in replies
        if m.has_error()
    ] + [{"node": n, "reason": f"{stage}: no reply"} for n in state.active - answered]
    state.active = {m.metadata.src_node_id for m in ok}
    for n in state.sampled:
        if len(state.neighbours[n] & state.active) < state.threshold:
            raise SecAggError(
                f"SecAgg+ round {rnd}, stage {stage}: node {n} has fewer than "
                f"{state.threshold} live neighbours ({state.failures})"
            )
    return ok


def train_round(
    exchange: Exchange,
    nodes: list[int],
    content: RecordDict,
    rnd: int,
    max_weight: float,
    clipping_range: float = CLIPPING_RANGE,
    quantization_range: int = QUANTIZATION_RANGE,
    modulus_range: int = MODULUS_RANGE,
    seed: int | None = None,
) -> tuple[ArrayRecord, list[Message], list[dict]]:
    """One SecAgg+ training round; returns (new global arrays, train replies, failures).

    ``exchange`` sends messages and returns the replies (the ServerApp's
    ``send_and_receive``); ``content`` is the plain train message (``arrays``
    = global model, ``config``). The replies carry ``metrics`` and ``info``,
    never an update.
    """
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    n = len(nodes)
    if n < 2:
        raise SecAggError(f"SecAgg+ needs at least 2 sites, round {rnd} has {n}")
    # Flower's defaults for num_shares=1.0 (all), reconstruction_threshold=2/3 of them
    num_shares = n
    threshold = max(2, round(2 * num_shares / 3))
    state = _State(sampled=set(nodes), active=set(nodes), threshold=threshold)
    order = list(nodes)
    random.Random(seed).shuffle(order)
    half = num_shares >> 1
    state.neighbours = {
        nid: {order[(i + o) % n] for o in range(-half, half + 1)} for i, nid in enumerate(order)
    }

    # stage 0: setup -> public keys
    setup = {
        Key.STAGE: Stage.SETUP,
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: num_shares,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: float(clipping_range),
        Key.TARGET_RANGE: int(quantization_range),
        Key.MOD_RANGE: int(modulus_range),
        Key.MAX_WEIGHT: float(max_weight),
    }
    ok = _send(
        exchange, state, lambda _: RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(setup)}), rnd,
        "setup",
    )  # fmt: skip
    for m in ok:
        cfg = m.content.config_records[RECORD_KEY_CONFIGS]
        state.public_keys[m.metadata.src_node_id] = [cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]]

    # stage 1: share keys -> encrypted shares, forwarded to their destinations
    def share_keys(nid: int) -> RecordDict:
        cfg = ConfigRecord(
            {str(j): state.public_keys[j] for j in state.neighbours[nid] & state.active}
        )
        cfg[Key.STAGE] = Stage.SHARE_KEYS
        return RecordDict({RECORD_KEY_CONFIGS: cfg})

    ok = _send(exchange, state, share_keys, rnd, "share_keys")
    state.fwd_srcs = {nid: [] for nid in state.active}
    state.fwd_ciphertexts = {nid: [] for nid in state.active}
    for m in ok:
        cfg = m.content.config_records[RECORD_KEY_CONFIGS]
        for dst, ctxt in zip(cfg[Key.DESTINATION_LIST], cfg[Key.CIPHERTEXT_LIST], strict=True):
            if dst in state.fwd_srcs:
                state.fwd_srcs[dst].append(m.metadata.src_node_id)
                state.fwd_ciphertexts[dst].append(ctxt)

    # stage 2: train, collect masked vectors
    def collect(nid: int) -> RecordDict:
        rd = RecordDict({k: v for k, v in content.items()})
        rd[RECORD_KEY_CONFIGS] = ConfigRecord(
            {
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.CIPHERTEXT_LIST: state.fwd_ciphertexts[nid],
                Key.SOURCE_LIST: state.fwd_srcs[nid],
            }
        )
        return rd

    trained = _send(exchange, state, collect, rnd, "collect_masked_vectors")
    masked = None
    for m in trained:
        vec = [bytes_to_ndarray(b) for b in m.content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        masked = vec if masked is None else parameters_addition(masked, vec)
    masked = parameters_mod(masked, modulus_range)

    # stage 3: unmask -> shares of live sites' mask seeds and of dropped sites' keys
    active, dead = set(state.active), state.sampled - state.active

    def unmask(nid: int) -> RecordDict:
        nb = state.neighbours[nid]
        return RecordDict(
            {
                RECORD_KEY_CONFIGS: ConfigRecord(
                    {
                        Key.STAGE: Stage.UNMASK,
                        Key.ACTIVE_NODE_ID_LIST: sorted(nb & active),
                        Key.DEAD_NODE_ID_LIST: sorted(nb & dead),
                    }
                )
            }
        )

    ok = _send(exchange, state, unmask, rnd, "unmask")
    shares: dict[int, list[bytes]] = {nid: [] for nid in state.sampled}
    for m in ok:
        cfg = m.content.config_records[RECORD_KEY_CONFIGS]
        for owner, share in zip(cfg[Key.NODE_ID_LIST], cfg[Key.SHARE_LIST], strict=True):
            shares[owner].append(share)
    shape = get_parameters_shape(masked)
    for nid, share_list in shares.items():
        if len(share_list) < threshold:
            raise SecAggError(f"SecAgg+ round {rnd}: too few shares to unmask node {nid}")
        secret = combine_shares(share_list)
        if nid in active:  # the live site's private mask
            masked = parameters_subtraction(masked, pseudo_rand_gen(secret, modulus_range, shape))
            continue
        for j in state.neighbours[nid] - {nid}:  # a dropped site's pairwise masks
            key = generate_shared_key(
                bytes_to_private_key(secret), bytes_to_public_key(state.public_keys[j][0])
            )
            mask = pseudo_rand_gen(key, modulus_range, shape)
            op = parameters_addition if nid > j else parameters_subtraction
            masked = op(masked, mask)
    total = parameters_mod(masked, modulus_range)
    q_total, summed = factor_extract(total)
    mean = dequantize(summed, clipping_range, quantization_range)
    offset = -(len(active) - 1) * clipping_range
    scale = quantization_range / float(q_total)
    glob = content["arrays"]
    new = ArrayRecord(
        {
            k: Array((_np(glob[k]) + (d + offset) * scale).astype(glob[k].numpy().dtype))
            for k, d in zip(glob, mean, strict=True)
        }
    )
    return new, trained, state.failures
