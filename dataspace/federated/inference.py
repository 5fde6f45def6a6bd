"""Run a trained policy on a robot: ``dataspace.load_policy(DIR).select_action(obs)``.

``DIR`` is a run directory (``dataspace train --out DIR``) or its LeRobot export
(``DIR/lerobot``, :mod:`.export`). Observations and actions use LeRobot's key names
and raw units: ``select_action({"observation.state": state})`` normalises the state
with the run's statistics, runs the network and returns the unnormalised action as a
float32 numpy array. Templates that predict several future actions (``bc-chunk``: 8)
are queued as LeRobot's ACT does with ``n_action_steps``: the policy predicts when
its queue is empty, then hands out one queued action per call; templates that look
at past states (``bc-chunk``: 4) keep them, filling the history with an episode's
first state, as in training. Call :meth:`DeployedPolicy.reset` between episodes.

The actions are those of the LeRobot export run by LeRobot with the plugin
``lerobot_policy_dataspace`` (tests/federated/test_export.py compares them to 1e-5).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from dataspace.errors import DataspaceError, NotFoundError
from dataspace.federated.export import (
    CONFIG,
    EXPORT_DIR,
    ExportSpec,
    read_lerobot_export,
    spec_for,
)
from dataspace.federated.templates import Policy, get_template
from dataspace.schema import STATE

#: files of a run directory written before exports existed: the state dict and the report
MODEL = "model.pt"
REPORT = "report.json"


class InferenceError(DataspaceError):
    """A policy asked to run in a way it cannot (``n_action_steps`` beyond its chunk)."""


class ObservationError(InferenceError):
    """An observation without ``observation.state``, or of the wrong shape or values."""


class DeployedPolicy:
    """A trained policy with its normalisation and its step queues (module docstring)."""

    def __init__(self, spec: ExportSpec, policy: Policy, n_action_steps: int | None = None):
        steps = spec.n_action_steps if n_action_steps is None else n_action_steps
        if not 1 <= steps <= spec.template.chunk:
            raise InferenceError(f"n_action_steps {steps} not in 1..{spec.template.chunk}")
        self.spec = spec
        self.policy = policy.eval()
        self.n_action_steps = steps
        self.reset()

    @property
    def template(self) -> str:
        return self.spec.template.name

    @property
    def state_dim(self) -> int:
        return self.spec.state_dim

    @property
    def action_dim(self) -> int:
        return self.spec.action_dim

    def reset(self) -> None:
        """Start a new episode: forget past states and queued actions."""
        self._states: deque[torch.Tensor] = deque(maxlen=self.spec.template.history)
        self._actions: deque[torch.Tensor] = deque(maxlen=self.n_action_steps)

    def _state(self, observation: Mapping[str, np.ndarray]) -> torch.Tensor:
        if STATE not in observation:
            raise ObservationError(f"observation has no {STATE!r} (keys: {sorted(observation)})")
        state = np.asarray(observation[STATE], dtype=np.float32)
        if state.shape not in ((self.state_dim,), (1, self.state_dim)):
            raise ObservationError(f"{STATE} has shape {state.shape}, expected ({self.state_dim},)")
        if not np.isfinite(state).all():
            raise ObservationError(f"{STATE} holds a value that is not finite")
        return torch.from_numpy(state.reshape(1, self.state_dim))

    @torch.no_grad()
    def predict_chunk(self, history: torch.Tensor) -> torch.Tensor:
        """Normalised states [1, history * S] -> raw actions [chunk, A]."""
        p = self.policy
        out = p(history).view(self.spec.template.chunk, self.action_dim)
        return out * p.action_std + p.action_mean

    def select_action(self, observation: Mapping[str, np.ndarray]) -> np.ndarray:
        """The action for this step, float32 [A], from ``{"observation.state": [S]}``."""
        p = self.policy
        state = (self._state(observation) - p.state_mean) / p.state_std
        if not self._states:
            self._states.extend([state] * self.spec.template.history)
        else:
            self._states.append(state)
        if not self._actions:
            chunk = self.predict_chunk(torch.cat(list(self._states), dim=1))
            self._actions.extend(chunk[: self.n_action_steps])
        return self._actions.popleft().numpy().copy()


def _from_model_pt(run_dir: Path) -> tuple[ExportSpec, Policy]:
    """A run directory from before exports: ``model.pt`` and ``report.json``'s template."""
    template = json.loads((run_dir / REPORT).read_text()).get("template")
    state = torch.load(run_dir / MODEL, map_location="cpu", weights_only=True)
    dims = (int(state["state_mean"].shape[0]), int(state["action_mean"].shape[0]))
    policy = get_template(str(template)).build(*dims)
    policy.load_state_dict(state)
    return spec_for(policy, str(template)), policy


def load_policy(path: Path | str, n_action_steps: int | None = None) -> DeployedPolicy:
    """The trained policy of a run directory or of its LeRobot export, ready to run.

    ``n_action_steps`` (default: the whole chunk, as exported) sets how many of a
    chunk's actions run before the next prediction.
    """
    folder = Path(path)
    if (folder / EXPORT_DIR / CONFIG).is_file():
        spec, policy = read_lerobot_export(folder / EXPORT_DIR)
    elif (folder / CONFIG).is_file():
        spec, policy = read_lerobot_export(folder)
    elif (folder / MODEL).is_file() and (folder / REPORT).is_file():
        spec, policy = _from_model_pt(folder)
    else:
        raise NotFoundError(
            f"{folder}: neither a run directory with {EXPORT_DIR}/{CONFIG} or {MODEL} "
            f"nor a LeRobot export ({CONFIG})"
        )
    return DeployedPolicy(spec, policy, n_action_steps)
