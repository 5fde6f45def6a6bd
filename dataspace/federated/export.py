"""The trained policy in LeRobot's layout, for a robot company to deploy (issue 17).

Every run directory gets ``DIR/lerobot/`` beside ``model.pt``: the files LeRobot's
``PreTrainedPolicy.save_pretrained`` and ``PolicyProcessorPipeline.save_pretrained``
write (LeRobot 0.4.4 to 0.6.1), for the policy type ``dataspace_bc`` that the plugin
``plugins/lerobot_policy_dataspace`` registers (no LeRobot type has these
architectures)::

    config.json                  "type": "dataspace_bc", input_features
                                 {"observation.state": STATE [S]}, output_features
                                 {"action": ACTION [A]}, n_obs_steps (= the template's
                                 history), chunk_size (= its chunk), n_action_steps,
                                 hidden_dims, template, normalization_mapping MEAN_STD
    model.safetensors            model.net.<i>.weight / .bias (the template's Linear layers)
    policy_preprocessor.json     rename -> to_batch -> device -> normalizer_processor
    policy_preprocessor_step_3_normalizer_processor.safetensors
    policy_postprocessor.json    unnormalizer_processor -> device (cpu)
    policy_postprocessor_step_0_unnormalizer_processor.safetensors
                                 observation.state.mean|std, action.mean|std: the
                                 run's normalisation statistics (the DP ones, or the
                                 consumer's public ones), as float32

The normaliser's ``eps`` is written as 0: the statistics' scales are floored when they
are made (:data:`.normalize.MIN_STD_FRACTION`), so LeRobot computes exactly what the
policy was trained on, ``(x - mean) / std``. Weights and statistics never mix: the
statistics live only in the processor files, as in LeRobot.

:func:`read_lerobot_export` is the inverse: it rebuilds a :class:`Policy` (its buffers
hold the statistics) from such a folder; :mod:`.inference` runs it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dataspace.errors import DataspaceError, NotFoundError
from dataspace.federated.templates import Policy, Template, get_template
from dataspace.schema import ACTION, STATE

#: the export's folder inside a run directory
EXPORT_DIR = "lerobot"
#: the LeRobot policy type the plugin registers
POLICY_TYPE = "dataspace_bc"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PREPROCESSOR = "policy_preprocessor"
POSTPROCESSOR = "policy_postprocessor"
NORMALIZER = "normalizer_processor"
UNNORMALIZER = "unnormalizer_processor"
NORMALIZER_STATE = f"{PREPROCESSOR}_step_3_{NORMALIZER}.safetensors"
UNNORMALIZER_STATE = f"{POSTPROCESSOR}_step_0_{UNNORMALIZER}.safetensors"
#: the weights' key prefix: the plugin's policy holds the network as ``self.model``
WEIGHT_PREFIX = "model."
#: LeRobot's feature-type to normalisation-mode map for these policies
NORM_MAP = {"STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
#: the statistics' keys in the processors' state files, and the buffer each comes from
STAT_BUFFERS = {
    f"{STATE}.mean": "state_mean",
    f"{STATE}.std": "state_std",
    f"{ACTION}.mean": "action_mean",
    f"{ACTION}.std": "action_std",
}


class ExportError(DataspaceError):
    """An export that cannot be written or read (missing file, shapes that disagree)."""


@dataclass(frozen=True)
class ExportSpec:
    """What an export's ``config.json`` says: dimensions, template and its queues."""

    template: Template
    state_dim: int
    action_dim: int
    n_action_steps: int

    def build(self) -> Policy:
        return self.template.build(self.state_dim, self.action_dim)


def lerobot_config(spec: ExportSpec) -> dict[str, Any]:
    """``config.json``: the fields ``DataspaceBCConfig`` saves under LeRobot 0.4.4 (0.6.1
    reads them; it would add ``pretrained_revision``, which 0.4.4 refuses)."""
    t = spec.template
    return {
        "type": POLICY_TYPE,
        "n_obs_steps": t.history,
        "input_features": {STATE: {"type": "STATE", "shape": [spec.state_dim]}},
        "output_features": {ACTION: {"type": "ACTION", "shape": [spec.action_dim]}},
        "device": "cpu",
        "use_amp": False,
        "use_peft": False,
        "push_to_hub": False,
        "repo_id": None,
        "private": None,
        "tags": None,
        "license": None,
        "pretrained_path": None,
        "chunk_size": t.chunk,
        "n_action_steps": spec.n_action_steps,
        "hidden_dims": list(t.hidden),
        "template": t.name,
        "normalization_mapping": dict(NORM_MAP),
        "optimizer_lr": 0.001,
    }


def _features(spec: ExportSpec, *, observation: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if observation:
        out[STATE] = {"type": "STATE", "shape": [spec.state_dim]}
    out[ACTION] = {"type": "ACTION", "shape": [spec.action_dim]}
    return out


def _normalizer_step(registry: str, spec: ExportSpec, state_file: str, obs: bool) -> dict:
    return {
        "registry_name": registry,
        "config": {
            "eps": 0.0,
            "features": _features(spec, observation=obs),
            "norm_map": dict(NORM_MAP),
        },
        "state_file": state_file,
    }


def preprocessor_config(spec: ExportSpec) -> dict[str, Any]:
    """``policy_preprocessor.json``: LeRobot's steps for a state-only policy (as ACT's)."""
    return {
        "name": PREPROCESSOR,
        "steps": [
            {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
            {"registry_name": "to_batch_processor", "config": {}},
            {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
            _normalizer_step(NORMALIZER, spec, NORMALIZER_STATE, obs=True),
        ],
    }


def postprocessor_config(spec: ExportSpec) -> dict[str, Any]:
    """``policy_postprocessor.json``: unnormalise the action, then move it to the CPU."""
    return {
        "name": POSTPROCESSOR,
        "steps": [
            _normalizer_step(UNNORMALIZER, spec, UNNORMALIZER_STATE, obs=False),
            {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
        ],
    }


def stats_tensors(policy: Policy) -> dict[str, torch.Tensor]:
    """The policy's normalisation buffers under LeRobot's statistic keys."""
    return {
        key: getattr(policy, buf).detach().to(torch.float32).contiguous().clone()
        for key, buf in STAT_BUFFERS.items()
    }


def weight_tensors(policy: Policy) -> dict[str, torch.Tensor]:
    """The trainable weights under the plugin policy's keys (``model.net.<i>.*``)."""
    return {
        f"{WEIGHT_PREFIX}net.{k}": v.detach().to(torch.float32).contiguous().clone()
        for k, v in policy.net.state_dict().items()
    }


def spec_for(policy: Policy, template_name: str) -> ExportSpec:
    """The export spec of a trained ``policy`` of template ``template_name``."""
    template = get_template(template_name)
    spec = ExportSpec(
        template=template,
        state_dim=int(policy.state_mean.shape[0]),
        action_dim=int(policy.action_mean.shape[0]),
        n_action_steps=template.chunk,
    )
    want = {k: tuple(v.shape) for k, v in spec.build().net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in policy.net.state_dict().items()}
    if want != have:
        raise ExportError(f"the policy's layers {have} are not template {template_name}'s {want}")
    return spec


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n")


def write_lerobot_export(policy: Policy, template_name: str, out_dir: Path | str) -> Path:
    """Write ``policy`` (of template ``template_name``) in LeRobot's layout to ``out_dir``.

    The folder is written beside ``out_dir`` first and then moved in place, so a
    reader never sees half an export; an older export there is replaced.
    """
    out = Path(out_dir)
    spec = spec_for(policy, template_name)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_json(tmp / CONFIG, lerobot_config(spec))
    save_file(weight_tensors(policy), str(tmp / WEIGHTS))
    stats = stats_tensors(policy)
    _write_json(tmp / f"{PREPROCESSOR}.json", preprocessor_config(spec))
    save_file(stats, str(tmp / NORMALIZER_STATE))
    _write_json(tmp / f"{POSTPROCESSOR}.json", postprocessor_config(spec))
    save_file(stats, str(tmp / UNNORMALIZER_STATE))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NotFoundError(f"{path} not found: not a LeRobot export of a dataspace policy")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: not a JSON object")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise NotFoundError(f"{path} not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, or OSError
        raise ExportError(f"{path}: not a safetensors file ({e})") from None


def read_spec(config: dict[str, Any]) -> ExportSpec:
    """The :class:`ExportSpec` of a ``config.json``; the template must match its name."""
    if config.get("type") != POLICY_TYPE:
        raise ExportError(f"config.json: type {config.get('type')!r}, expected {POLICY_TYPE!r}")
    try:
        template = get_template(str(config["template"]))
        spec = ExportSpec(
            template=template,
            state_dim=int(config["input_features"][STATE]["shape"][0]),
            action_dim=int(config["output_features"][ACTION]["shape"][0]),
            n_action_steps=int(config["n_action_steps"]),
        )
        layout = (int(config["n_obs_steps"]), int(config["chunk_size"]))
        hidden = tuple(int(h) for h in config["hidden_dims"])
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise ExportError(f"config.json: missing or malformed field ({e!r})") from None
    if layout != (template.history, template.chunk) or hidden != template.hidden:
        raise ExportError(
            f"config.json: n_obs_steps, chunk_size, hidden_dims {(*layout, hidden)} are not "
            f"template {template.name}'s {(template.history, template.chunk, template.hidden)}"
        )
    if not 1 <= spec.n_action_steps <= template.chunk:
        raise ExportError(
            f"config.json: n_action_steps {spec.n_action_steps} not in 1..{template.chunk}"
        )
    return spec


def _read_stats(folder: Path, pipeline: str, registry: str) -> dict[str, torch.Tensor]:
    config = _read_json(folder / f"{pipeline}.json")
    for step in config.get("steps", []):
        if isinstance(step, dict) and step.get("registry_name") == registry:
            if float(step.get("config", {}).get("eps", 1e-8)) != 0.0:  # LeRobot: 1e-8
                raise ExportError(f"{pipeline}.json: {registry} eps is not 0")
            return _read_tensors(folder / str(step.get("state_file", "")))
    raise ExportError(f"{pipeline}.json: no {registry} step")


def read_lerobot_export(export_dir: Path | str) -> tuple[ExportSpec, Policy]:
    """The spec and the policy (weights and normalisation buffers) of an export folder."""
    folder = Path(export_dir)
    spec = read_spec(_read_json(folder / CONFIG))
    policy = spec.build()
    weights = _read_tensors(folder / WEIGHTS)
    net = {k.removeprefix(f"{WEIGHT_PREFIX}net."): v for k, v in weights.items()}
    try:
        policy.net.load_state_dict(net)
    except RuntimeError as e:
        raise ExportError(f"{folder / WEIGHTS} does not fit config.json: {e}") from None
    stats = {
        **_read_stats(folder, PREPROCESSOR, NORMALIZER),
        **{
            k: v
            for k, v in _read_stats(folder, POSTPROCESSOR, UNNORMALIZER).items()
            if k.startswith(f"{ACTION}.")
        },
    }
    with torch.no_grad():
        for key, buf in STAT_BUFFERS.items():
            value = stats.get(key)
            target = getattr(policy, buf)
            if value is None or value.shape != target.shape:
                raise ExportError(
                    f"{folder}: statistic {key} missing or not of shape {tuple(target.shape)}"
                )
            target.copy_(value)
    policy.eval()
    return spec, policy
