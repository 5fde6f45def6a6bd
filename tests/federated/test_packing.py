"""The deployment engine's wire form of a model: one flat tensor, lossless."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord

from dataspace.federated.packing import is_packed, pack, unpack, unpack_state_dict
from dataspace.federated.templates import get_template


def test_pack_unpack_is_lossless_in_the_model_key_order():
    policy = get_template("bc-mlp").build(26, 26, seed=3)
    arrays = ArrayRecord(policy.state_dict())
    packed = pack(arrays)
    assert is_packed(packed) and not is_packed(arrays)
    assert len(packed) == 1 and packed["packed"].numpy().size == sum(
        v.numel() for v in policy.state_dict().values()
    )
    back = unpack(packed, arrays)
    assert list(back) == list(arrays)
    for k in arrays:
        assert np.array_equal(back[k].numpy(), arrays[k].numpy()), k
    sd = unpack_state_dict(packed, policy.state_dict())
    fresh = get_template("bc-mlp").build(26, 26, seed=4)
    fresh.load_state_dict(sd)
    for k, v in fresh.state_dict().items():
        assert np.array_equal(v.numpy(), policy.state_dict()[k].numpy()), k


def test_unpack_refuses_a_model_of_another_size():
    small = ArrayRecord(get_template("bc-mlp").build(6, 6).state_dict())
    big = ArrayRecord(get_template("bc-mlp").build(26, 26).state_dict())
    with pytest.raises(ValueError, match="layout"):
        unpack(pack(small), big)
