"""The LeRobot config of the dataspace policies (``"type": "dataspace_bc"``).

One type serves every dataspace template: ``bc-mlp`` is ``n_obs_steps=1,
chunk_size=1``, ``bc-chunk`` is ``n_obs_steps=4, chunk_size=8``; ``template``
records which one a run trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode
from lerobot.optim.optimizers import AdamConfig

from .core import ACTION, OBS_STATE, POLICY_TYPE


@PreTrainedConfig.register_subclass(POLICY_TYPE)
@dataclass
class DataspaceBCConfig(PreTrainedConfig):
    """Behaviour cloning MLP: the last ``n_obs_steps`` states -> ``chunk_size`` actions."""

    n_obs_steps: int = 1
    chunk_size: int = 1
    n_action_steps: int = 1
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    template: str = "bc-mlp"
    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "STATE": NormalizationMode.MEAN_STD,
            "ACTION": NormalizationMode.MEAN_STD,
        }
    )
    optimizer_lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"need 1 <= n_action_steps ({self.n_action_steps}) "
                f"<= chunk_size ({self.chunk_size})"
            )
        if self.n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {self.n_obs_steps}")

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamConfig:
        return AdamConfig(lr=self.optimizer_lr)

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        state = (self.input_features or {}).get(OBS_STATE)
        action = (self.output_features or {}).get(ACTION)
        if state is None or state.type is not FeatureType.STATE:
            raise ValueError(f"{POLICY_TYPE} needs a STATE input feature {OBS_STATE!r}")
        if action is None or action.type is not FeatureType.ACTION:
            raise ValueError(f"{POLICY_TYPE} needs an ACTION output feature {ACTION!r}")
        if self.image_features:
            raise ValueError(f"{POLICY_TYPE} takes no images: {sorted(self.image_features)}")
