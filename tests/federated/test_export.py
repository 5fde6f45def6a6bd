"""The deployable policy (issue 17): ``DIR/lerobot/`` and ``dataspace.load_policy(DIR)``.

LeRobot itself cannot be installed here (it pins torch below the project's), so these
tests check the export against what LeRobot 0.4.4 wrote for it (``tests/vectors/lerobot``)
and against the plugin's own load path (``lerobot_policy_dataspace.core``, plain torch),
and check ``load_policy``'s actions against the network as training fed it
(``Template.pairs``). The run with the real LeRobot is ``plugins/lerobot_policy_dataspace/
verify/check_with_lerobot.py`` (bench/RESULTS.md, LeRobot export).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

import dataspace
from dataspace.errors import NotFoundError
from dataspace.federated import export
from dataspace.federated.inference import InferenceError, ObservationError, load_policy
from dataspace.federated.normalize import Stats, apply_stats, exact_stats, normalised
from dataspace.federated.report import write_report
from dataspace.federated.templates import REGISTRY, Policy, get_template
from tests.conftest import REPO, UNITREE, VECTORS

PLUGIN_SRC = REPO / "plugins" / "lerobot_policy_dataspace" / "src"
TOLERANCE = 1e-5


def g1(episode: int) -> tuple[np.ndarray, np.ndarray]:
    t = pq.read_table(UNITREE / "data" / "chunk-000" / f"episode_{episode:06d}.parquet")
    state = np.asarray(t.column("observation.state").to_pylist(), dtype=np.float32)
    action = np.asarray(t.column("action").to_pylist(), dtype=np.float32)
    return state, action


@pytest.fixture(scope="module")
def g1_stats() -> Stats:
    """Real normalisation statistics: exact, over G1 episodes 0-2."""
    frames = [g1(e) for e in range(3)]
    return exact_stats(
        torch.from_numpy(np.concatenate([s for s, _ in frames])),
        torch.from_numpy(np.concatenate([a for _, a in frames])),
    )


@pytest.fixture(scope="module")
def episodes() -> list[np.ndarray]:
    """Two real episodes' states, cut short: 21 steps (not a multiple of 8) and 11."""
    return [g1(3)[0][:21], g1(4)[0][:11]]


def built(name: str, stats: Stats, seed: int = 5) -> Policy:
    policy = get_template(name).build(len(stats.state_mean), len(stats.action_mean), seed=seed)
    apply_stats(policy, stats)
    return policy


def run(policy, states: np.ndarray) -> np.ndarray:
    policy.reset()
    return np.stack([policy.select_action({"observation.state": s}) for s in states])


@pytest.fixture
def plugin_core(monkeypatch):
    """The plugin's plain-torch module, imported from the repository without LeRobot."""
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    for name in [m for m in sys.modules if m.startswith("lerobot_policy_dataspace")]:
        monkeypatch.delitem(sys.modules, name)
    core = importlib.import_module("lerobot_policy_dataspace.core")
    assert "lerobot" not in sys.modules  # the plain-torch path needs no LeRobot
    return core


# ------------------------------------------------------------------ the layout


def test_the_export_is_what_lerobot_writes(tmp_path, g1_stats):
    """Every JSON file as LeRobot 0.4.4 wrote it for the same policy (bc-chunk, G1
    dimensions), every tensor file with LeRobot's keys, dtypes and shapes."""
    out = export.write_lerobot_export(built("bc-chunk", g1_stats), "bc-chunk", tmp_path / "x")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "config.json",
            "model.safetensors",
            "policy_preprocessor.json",
            "policy_preprocessor_step_3_normalizer_processor.safetensors",
            "policy_postprocessor.json",
            "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
        ]
    )
    for name in ("config.json", "policy_preprocessor.json", "policy_postprocessor.json"):
        golden = json.loads((VECTORS / "lerobot" / name).read_text())
        assert json.loads((out / name).read_text()) == golden, name
    stats_keys = {"observation.state.mean", "observation.state.std", "action.mean", "action.std"}
    want = {
        "model.safetensors": {
            "model.net.0.weight": (256, 4 * 26),
            "model.net.0.bias": (256,),
            "model.net.2.weight": (256, 256),
            "model.net.2.bias": (256,),
            "model.net.4.weight": (8 * 26, 256),
            "model.net.4.bias": (8 * 26,),
        },
        "policy_preprocessor_step_3_normalizer_processor.safetensors": dict.fromkeys(
            stats_keys, (26,)
        ),
        "policy_postprocessor_step_0_unnormalizer_processor.safetensors": dict.fromkeys(
            stats_keys, (26,)
        ),
    }
    for name, shapes in want.items():
        with safe_open(str(out / name), "pt") as f:
            got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}  # noqa: SIM118
        assert got == shapes, name


def test_the_statistics_are_the_runs_and_leave_the_weights_alone(tmp_path, g1_stats):
    policy = built("bc-mlp", g1_stats)
    out = export.write_lerobot_export(policy, "bc-mlp", tmp_path / "x")
    config = json.loads((out / "config.json").read_text())
    assert (config["type"], config["template"]) == ("dataspace_bc", "bc-mlp")
    assert (config["n_obs_steps"], config["chunk_size"], config["n_action_steps"]) == (1, 1, 1)
    for name in (export.NORMALIZER_STATE, export.UNNORMALIZER_STATE):
        with safe_open(str(out / name), "pt") as f:
            assert np.array_equal(f.get_tensor("observation.state.std"), g1_stats.state_std)
            assert np.array_equal(f.get_tensor("action.mean"), g1_stats.action_mean)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any("mean" in k or "std" in k for k in f.keys())  # noqa: SIM118
    # a second export replaces the first, whole
    export.write_lerobot_export(built("bc-chunk", g1_stats), "bc-chunk", out)
    assert json.loads((out / "config.json").read_text())["template"] == "bc-chunk"
    assert not (tmp_path / "x.partial").exists()


# -------------------------------------------------- the same actions, three ways


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_load_policy_and_the_plugin_give_the_same_actions(
    name, tmp_path, g1_stats, episodes, plugin_core
):
    export.write_lerobot_export(built(name, g1_stats), name, tmp_path / "run" / "lerobot")
    ours = load_policy(tmp_path / "run")
    theirs = plugin_core.load_export(tmp_path / "run" / "lerobot")
    for states in episodes:
        a = run(ours, states)
        theirs.reset()
        b = np.stack([theirs.select_action({"observation.state": s}).numpy() for s in states])
        assert a.dtype == np.float32 and a.shape == (len(states), 26)
        assert np.abs(a - b).max() <= TOLERANCE
    assert np.abs(a).max() > 0.1  # real units, not normalised ones


def test_actions_follow_training_inputs_and_chunk_queue(tmp_path, g1_stats, episodes):
    """Step t of an episode runs the chunk predicted at step k = t - t % 8 from the
    4 states ending at k (an episode's first state repeated before it), exactly the
    input ``Template.pairs`` built in training; its action (t - k) unnormalised."""
    template = get_template("bc-chunk")
    policy = built("bc-chunk", g1_stats)
    export.write_lerobot_export(policy, "bc-chunk", tmp_path / "lerobot")
    deployed = load_policy(tmp_path / "lerobot")  # the export folder itself works too
    assert (deployed.template, deployed.n_action_steps) == ("bc-chunk", 8)
    for states in episodes:
        got = run(deployed, states)
        state = torch.from_numpy(states)
        norm_state, _ = normalised(policy, state, torch.zeros(len(states), 26))
        x, _ = template.pairs(
            norm_state, torch.zeros(len(states), 26), torch.zeros(len(states), dtype=torch.long)
        )
        with torch.no_grad():
            chunks = policy(x).view(len(states), 8, 26) * policy.action_std + policy.action_mean
        want = np.stack([chunks[t - t % 8, t % 8].numpy() for t in range(len(states))])
        assert np.abs(got - want).max() <= TOLERANCE
    # one action per prediction: each step's first action of its own chunk
    every = load_policy(tmp_path / "lerobot", n_action_steps=1)
    got = run(every, episodes[0])
    state = torch.from_numpy(episodes[0])
    norm_state, _ = normalised(policy, state, torch.zeros(len(state), 26))
    x, _ = template.pairs(
        norm_state, torch.zeros(len(state), 26), torch.zeros(len(state), dtype=torch.long)
    )
    with torch.no_grad():
        first = policy(x)[:, :26] * policy.action_std + policy.action_mean
    assert np.abs(got - first.numpy()).max() <= TOLERANCE


# ------------------------------------------------------------ run directories


def fake_run(out: Path, policy: Policy, template: str) -> Path:
    """A finished run directory as the ServerApp leaves it (history.json, final.npz)."""
    out.mkdir(parents=True)
    np.savez(out / "final.npz", **{k: v.numpy() for k, v in policy.state_dict().items()})
    history = {
        "spec": {"run_id": "r1", "template": template, "contracts": ["c1"]},
        "stats": {"state_dim": int(policy.state_mean.shape[0]),
                  "action_dim": int(policy.action_mean.shape[0])},
        "status": "finished",
        "rounds": [],
    }  # fmt: skip
    (out / "history.json").write_text(json.dumps(history))
    return out


def test_write_report_adds_the_export_and_keeps_model_pt(tmp_path, g1_stats, episodes):
    policy = built("bc-chunk", g1_stats, seed=9)
    out = fake_run(tmp_path / "run", policy, "bc-chunk")
    report = write_report(out)
    assert report["model"]["path"] == "model.pt" and (out / "model.pt").is_file()
    assert torch.load(out / "model.pt", weights_only=True).keys() == policy.state_dict().keys()
    assert (out / "lerobot" / "config.json").is_file()
    from_export = run(load_policy(out), episodes[0])
    # a run directory from before exports: model.pt and report.json only
    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.pt", "report.json"):
        (old / name).write_bytes((out / name).read_bytes())
    assert np.abs(run(load_policy(old), episodes[0]) - from_export).max() <= TOLERANCE


@pytest.mark.slow
def test_a_trained_run_deploys(federation, tmp_path, plugin_core, episodes):
    """One DP round on real data: the run's export, load_policy and the plugin agree."""
    from dataspace.federated import RunSpec, train

    fed = federation(
        epsilon=3.0, rounds=1, n_sites=2, template="bc-chunk",
        episodes_per_site=[range(0, 3), range(40, 43)],
    )  # fmt: skip
    for site in fed.sites:  # bc-chunk trains only with the episode as privacy unit
        with open(site.config_path, "a") as f:
            f.write('\n[training]\nprivacy_unit = "episode"\nframes_per_episode = 16\n')
    out = tmp_path / "run"
    spec = RunSpec(contracts=fed.contract_ids, template="bc-chunk", rounds=1, out_dir=out, seed=2)
    assert train(spec, fed.sites, "simulation")["status"] == "finished"
    write_report(out)
    trained = np.load(out / "final.npz")
    config = json.loads((out / "lerobot" / "config.json").read_text())
    assert config["template"] == "bc-chunk"
    with safe_open(str(out / "lerobot" / export.NORMALIZER_STATE), "pt") as f:
        assert np.array_equal(f.get_tensor("observation.state.mean"), trained["state_mean"])
    ours = load_policy(out)
    theirs = plugin_core.load_export(out / "lerobot")
    for states in episodes:
        theirs.reset()
        b = np.stack([theirs.select_action({"observation.state": s}).numpy() for s in states])
        assert np.abs(run(ours, states) - b).max() <= TOLERANCE


# ------------------------------------------------------------ errors, weight


def test_bad_inputs_are_typed_errors(tmp_path, g1_stats):
    with pytest.raises(NotFoundError, match="neither a run directory"):
        load_policy(tmp_path)
    out = export.write_lerobot_export(built("bc-mlp", g1_stats), "bc-mlp", tmp_path / "x")
    deployed = load_policy(out)
    with pytest.raises(ObservationError, match=r"no 'observation\.state'"):
        deployed.select_action({"state": np.zeros(26)})
    with pytest.raises(ObservationError, match="shape"):
        deployed.select_action({"observation.state": np.zeros(25)})
    with pytest.raises(ObservationError, match="finite"):
        deployed.select_action({"observation.state": np.full(26, np.nan)})
    with pytest.raises(InferenceError, match="n_action_steps"):
        load_policy(out, n_action_steps=2)  # bc-mlp predicts one action
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "hidden_dims": [64]}))
    with pytest.raises(export.ExportError, match="hidden_dims"):
        load_policy(out)
    (out / "config.json").write_text(json.dumps(config))
    (out / export.NORMALIZER_STATE).write_bytes(b"not safetensors")
    with pytest.raises(export.ExportError, match="not a safetensors file"):
        load_policy(out)
    with pytest.raises(export.ExportError, match="not template bc-chunk"):
        export.write_lerobot_export(built("bc-mlp", g1_stats), "bc-chunk", tmp_path / "y")


def test_importing_dataspace_stays_light():
    code = (
        "import sys, dataspace; assert 'torch' not in sys.modules, 'torch imported'; "
        "f = dataspace.load_policy; assert 'torch' in sys.modules; print(f.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "dataspace.federated.inference"
    assert dataspace.load_policy is load_policy
