"""The LeRobot policy class of the dataspace policies (the network is in :mod:`.core`)."""

from __future__ import annotations

from typing import Any

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from torch import Tensor

from .configuration_dataspace_bc import DataspaceBCConfig
from .core import ACTION, OBS_STATE, POLICY_TYPE, Spec, StepQueues, predict_chunk


class DataspaceBCPolicy(PreTrainedPolicy):
    """Takes normalised ``observation.state`` (the preprocessor's output), returns a
    normalised action (the postprocessor unnormalises it); queues chunks as ACT does."""

    config_class = DataspaceBCConfig
    name = POLICY_TYPE

    def __init__(self, config: DataspaceBCConfig, **kwargs: Any) -> None:
        super().__init__(config)
        config.validate_features()
        self.spec = Spec(
            state_dim=int(config.input_features[OBS_STATE].shape[0]),
            action_dim=int(config.output_features[ACTION].shape[0]),
            n_obs_steps=config.n_obs_steps,
            chunk_size=config.chunk_size,
            n_action_steps=config.n_action_steps,
            hidden_dims=tuple(config.hidden_dims),
            template=config.template,
        )
        self.model = self.spec.build()
        self.reset()

    def get_optim_params(self) -> Any:
        return self.parameters()

    def reset(self) -> None:
        self._queues = StepQueues(self.config.n_obs_steps, self.config.n_action_steps)

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Tensor], **kwargs: Any) -> Tensor:
        """[B, chunk_size, A] from ``observation.state`` [B, n_obs_steps, S] (or [B, S]
        when ``n_obs_steps`` is 1)."""
        self.eval()
        state = batch[OBS_STATE]
        history = state.flatten(1) if state.dim() == 3 else state
        return predict_chunk(self.model, self.spec, history)

    @torch.no_grad()
    def select_action(self, batch: dict[str, Tensor], **kwargs: Any) -> Tensor:
        """One action [B, A] for this step (one state [B, S] in)."""
        self.eval()
        self._queues.push_state(batch[OBS_STATE])
        if self._queues.needs_chunk():
            self._queues.push_chunk(predict_chunk(self.model, self.spec, self._queues.history()))
        return self._queues.pop_action()

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        """Mean squared error on normalised actions (LeRobot's training loop)."""
        state = batch[OBS_STATE]
        history = state.flatten(1) if state.dim() == 3 else state
        pred = predict_chunk(self.model, self.spec, history)
        target = batch[ACTION].view(pred.shape)
        err = (pred - target) ** 2
        if "action_is_pad" in batch:
            keep = (~batch["action_is_pad"]).view(*pred.shape[:2], 1).to(err.dtype)
            loss = (err * keep).sum() / (keep.sum() * pred.shape[-1]).clamp_min(1.0)
        else:
            loss = err.mean()
        return loss, {"loss": float(loss.detach())}
