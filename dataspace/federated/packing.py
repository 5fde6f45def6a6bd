"""A model as one flat tensor on the wire: fewer objects per Flower message.

Flower 1.42 sends every tensor of an ``ArrayRecord`` as its own object, each
fetched with its own authenticated HTTPS request (a ``bc-mlp`` message is 20
objects). On a loaded machine each request costs tens of milliseconds of CPU
at both ends, so the deployment engine packs the model into one float32
vector (key ``packed``, in the model's own key order) and each side unpacks it
with the layout of the model it already has: the server its global model, a
site the template it builds. Lossless; the simulation sends tensors as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

PACKED = "packed"


def is_packed(arrays: ArrayRecord) -> bool:
    return list(arrays.keys()) == [PACKED]


def pack(arrays: ArrayRecord) -> ArrayRecord:
    """All tensors, flattened in key order, as one float32 vector."""
    parts = [np.asarray(arrays[k].numpy(), dtype=np.float32).ravel() for k in arrays]
    return ArrayRecord({PACKED: Array(np.concatenate(parts))})


def _split(vec: np.ndarray, layout: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    sizes = {k: int(np.prod(shape, dtype=np.int64)) for k, shape in layout.items()}
    if sum(sizes.values()) != vec.size:
        raise ValueError(
            f"packed model has {vec.size} values, the layout needs {sum(sizes.values())}"
        )
    out, at = {}, 0
    for k, shape in layout.items():
        out[k] = vec[at : at + sizes[k]].reshape(shape)
        at += sizes[k]
    return out


def unpack(arrays: ArrayRecord, like: ArrayRecord) -> ArrayRecord:
    """The tensors of a packed record, shaped and named as ``like``."""
    vec = np.asarray(arrays[PACKED].numpy(), dtype=np.float32)
    layout = {k: tuple(like[k].numpy().shape) for k in like}
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in _split(vec, layout).items()})


def unpack_state_dict(arrays: ArrayRecord, like: Mapping[str, Any]) -> dict[str, Any]:
    """A packed record as a torch state dict shaped as ``like`` (a model's state dict)."""
    import torch

    vec = np.asarray(arrays[PACKED].numpy(), dtype=np.float32)
    layout = {k: tuple(v.shape) for k, v in like.items()}
    return {k: torch.from_numpy(v.copy()) for k, v in _split(vec, layout).items()}
