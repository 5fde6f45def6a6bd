from __future__ import annotations

import pytest
import torch

from dataspace.errors import NotFoundError
from dataspace.federated.templates import REGISTRY, get_template


def test_registry_names_and_unknown():
    assert {"bc-mlp", "bc-chunk"} <= set(REGISTRY)
    with pytest.raises(NotFoundError, match="bc-mlp"):
        get_template("resnet-9000")


def test_pairs_never_cross_episodes():
    t = get_template("bc-chunk")
    # two episodes of 3 and 2 frames; state = frame number, action = 10 * frame number
    ep = torch.tensor([0, 0, 0, 1, 1])
    state = torch.tensor([[0.0], [1], [2], [3], [4]])
    action = state * 10
    x, y = t.pairs(state, action, ep)
    assert x.shape == (5, t.history) and y.shape == (5, t.chunk)
    # history of frame 3 (first of episode 1) is padded with itself, not frames 0..2
    assert x[3].tolist() == [3.0] * t.history
    # chunk of frame 2 (last of episode 0) repeats its own action
    assert y[2].tolist() == [20.0] * t.chunk
    assert x[1].tolist()[-2:] == [0.0, 1.0]
    assert y[3].tolist()[:2] == [30.0, 40.0]


def test_bc_mlp_is_linear_and_same_seed_same_weights():
    t = get_template("bc-mlp")
    a, b = t.build(26, 26, seed=3), t.build(26, 26, seed=3)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in a.modules())
