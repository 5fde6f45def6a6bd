"""The dataspace policies in plain torch: the network, the step queues, and a loader.

Nothing here imports LeRobot, so the same code serves three readers: the LeRobot
policy class (``modeling_dataspace_bc``), anyone who wants the exported policy
without LeRobot (:func:`load_export`), and the dataspace project's tests, which
check its exports against this loader without installing LeRobot.

An export is a folder in LeRobot's layout (what ``PreTrainedPolicy.save_pretrained``
and ``PolicyProcessorPipeline.save_pretrained`` write):

* ``config.json``: ``"type": "dataspace_bc"``, the features, ``n_obs_steps`` (past
  states in), ``chunk_size`` (future actions out), ``n_action_steps`` (how many of
  them run before the next prediction), ``hidden_dims``, ``template``;
* ``model.safetensors``: the weights, keys ``model.net.<i>.weight|bias``;
* ``policy_preprocessor.json`` and ``policy_postprocessor.json`` with their state files
  ``policy_preprocessor_step_3_normalizer_processor.safetensors`` and
  ``policy_postprocessor_step_0_unnormalizer_processor.safetensors``: the normalisation
  statistics (``observation.state.mean|std``, ``action.mean|std``).

The network maps the last ``n_obs_steps`` normalised states, oldest first and
concatenated, to ``chunk_size`` normalised actions, concatenated; at an episode's
start the history is filled with its first state (as in training).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

POLICY_TYPE = "dataspace_bc"
OBS_STATE = "observation.state"
ACTION = "action"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PREPROCESSOR_NAME = "policy_preprocessor.json"
POSTPROCESSOR_NAME = "policy_postprocessor.json"
NORMALIZER = "normalizer_processor"
UNNORMALIZER = "unnormalizer_processor"


class ExportFormatError(ValueError):
    """An export folder that is missing a file or holds values this loader cannot use."""


class BCNet(nn.Module):
    """Linear layers with ReLU between them: normalised inputs to normalised outputs."""

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass(frozen=True)
class Spec:
    """What ``config.json`` says about the network and its queues."""

    state_dim: int
    action_dim: int
    n_obs_steps: int
    chunk_size: int
    n_action_steps: int
    hidden_dims: tuple[int, ...]
    template: str

    def build(self) -> BCNet:
        return BCNet(
            self.n_obs_steps * self.state_dim, self.chunk_size * self.action_dim, self.hidden_dims
        )


def spec_from_config(config: Mapping[str, Any]) -> Spec:
    """The :class:`Spec` of a ``config.json`` (as a dict)."""
    if config.get("type") != POLICY_TYPE:
        raise ExportFormatError(f"config.json: type {config.get('type')!r}, not {POLICY_TYPE!r}")
    try:
        state = config["input_features"][OBS_STATE]["shape"]
        action = config["output_features"][ACTION]["shape"]
        spec = Spec(
            state_dim=int(state[0]),
            action_dim=int(action[0]),
            n_obs_steps=int(config["n_obs_steps"]),
            chunk_size=int(config["chunk_size"]),
            n_action_steps=int(config["n_action_steps"]),
            hidden_dims=tuple(int(h) for h in config["hidden_dims"]),
            template=str(config.get("template", "")),
        )
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise ExportFormatError(f"config.json: missing or malformed field ({e!r})") from None
    if not 1 <= spec.n_action_steps <= spec.chunk_size or spec.n_obs_steps < 1:
        raise ExportFormatError(
            f"config.json: need 1 <= n_action_steps ({spec.n_action_steps}) <= chunk_size "
            f"({spec.chunk_size}) and n_obs_steps ({spec.n_obs_steps}) >= 1"
        )
    return spec


class StepQueues:
    """LeRobot's queues for one rollout: past normalised states and pending actions.

    Each step adds the newest state (the first one of an episode fills the whole
    history); when no action is pending, the caller predicts a chunk and queues its
    first ``n_action_steps`` actions (as ACT does); each step then takes one.
    """

    def __init__(self, n_obs_steps: int, n_action_steps: int) -> None:
        self.states: deque[Tensor] = deque(maxlen=n_obs_steps)
        self.actions: deque[Tensor] = deque(maxlen=n_action_steps)

    def push_state(self, state: Tensor) -> None:
        """Add one step's state, [B, S]."""
        if not self.states:
            self.states.extend([state] * (self.states.maxlen or 1))
        else:
            self.states.append(state)

    def history(self) -> Tensor:
        """The network's input: [B, n_obs_steps * S], oldest state first."""
        return torch.cat(list(self.states), dim=-1)

    def needs_chunk(self) -> bool:
        return not self.actions

    def push_chunk(self, chunk: Tensor) -> None:
        """Queue the first ``n_action_steps`` actions of a chunk [B, chunk_size, A]."""
        n = self.actions.maxlen or 1
        self.actions.extend(chunk[:, :n].transpose(0, 1))

    def pop_action(self) -> Tensor:
        return self.actions.popleft()


def predict_chunk(net: BCNet, spec: Spec, history: Tensor) -> Tensor:
    """[B, n_obs_steps * S] normalised states -> [B, chunk_size, A] normalised actions."""
    return net(history).view(history.shape[0], spec.chunk_size, spec.action_dim)


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ExportFormatError(f"{path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportFormatError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ExportFormatError(f"{path}: not a JSON object")
    return data


def read_tensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors."""
    if not path.is_file():
        raise ExportFormatError(f"{path} not found")
    return load_file(str(path))


def read_step_stats(export_dir: Path, pipeline_name: str, registry_name: str) -> dict[str, Any]:
    """The statistics and ``eps`` of a pipeline's (un)normaliser step."""
    pipeline = read_json(export_dir / pipeline_name)
    for step in pipeline.get("steps", []):
        if step.get("registry_name") == registry_name:
            if "state_file" not in step:
                raise ExportFormatError(f"{pipeline_name}: {registry_name} has no state_file")
            stats = read_tensors(export_dir / step["state_file"])
            return {"eps": float(step.get("config", {}).get("eps", 1e-8)), "stats": stats}
    raise ExportFormatError(f"{pipeline_name}: no {registry_name} step")


def _stat(stats: Mapping[str, Tensor], key: str, dim: int) -> Tensor:
    value = stats.get(key)
    if value is None or tuple(value.shape) != (dim,):
        raise ExportFormatError(f"statistic {key!r} missing or not of shape ({dim},)")
    return value.float()


class ExportedPolicy:
    """An export run without LeRobot: raw observation in, raw action out.

    Normalises ``observation.state`` as LeRobot's ``NormalizerProcessorStep`` does
    (``(x - mean) / (std + eps)``), runs the network through :class:`StepQueues`, and
    unnormalises as ``UnnormalizerProcessorStep`` does (``y * std + mean``).
    """

    def __init__(self, export_dir: Path | str) -> None:
        folder = Path(export_dir)
        self.spec = spec_from_config(read_json(folder / CONFIG_NAME))
        self.net = self.spec.build()
        weights = read_tensors(folder / WEIGHTS_NAME)
        prefix = "model."
        try:
            self.net.load_state_dict({k.removeprefix(prefix): v for k, v in weights.items()})
        except RuntimeError as e:
            raise ExportFormatError(f"{WEIGHTS_NAME} does not fit config.json: {e}") from None
        self.net.eval()
        pre = read_step_stats(folder, PREPROCESSOR_NAME, NORMALIZER)
        post = read_step_stats(folder, POSTPROCESSOR_NAME, UNNORMALIZER)
        s, a = self.spec.state_dim, self.spec.action_dim
        self.state_mean = _stat(pre["stats"], f"{OBS_STATE}.mean", s)
        self.state_std = _stat(pre["stats"], f"{OBS_STATE}.std", s)
        self.eps = pre["eps"]
        self.action_mean = _stat(post["stats"], f"{ACTION}.mean", a)
        self.action_std = _stat(post["stats"], f"{ACTION}.std", a)
        self.reset()

    def reset(self) -> None:
        """Start a new episode: forget the state history and the pending actions."""
        self.queues = StepQueues(self.spec.n_obs_steps, self.spec.n_action_steps)

    @torch.no_grad()
    def select_action(self, observation: Mapping[str, Any]) -> Tensor:
        """One action [A] (or [B, A] for a batch of states [B, S]) for this step."""
        state = torch.as_tensor(observation[OBS_STATE], dtype=torch.float32)
        batched = state.dim() == 2
        state = state if batched else state.unsqueeze(0)
        self.queues.push_state((state - self.state_mean) / (self.state_std + self.eps))
        if self.queues.needs_chunk():
            self.queues.push_chunk(predict_chunk(self.net, self.spec, self.queues.history()))
        action = self.queues.pop_action() * self.action_std + self.action_mean
        return action if batched else action[0]


def load_export(export_dir: Path | str) -> ExportedPolicy:
    """The policy of an export folder, for plain torch (no LeRobot needed)."""
    return ExportedPolicy(export_dir)
