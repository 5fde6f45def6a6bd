"""The closed-loop benchmark's simulator and a tiny end-to-end run (issue 17).

mujoco and gymnasium are dev extras: without them these tests are skipped.
The expert must succeed (>= 0.9) on every task, so that the benchmark measures the
policy and not the demonstrator; the smoke run goes through the real data space
(HDF5 files enrolled into real sites, contracts, the one-process engine, the
LeRobot export loaded with ``dataspace.load_policy``) and rolls the result out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("gymnasium")

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import closed_loop  # noqa: E402
import sim_reacher as sr  # noqa: E402

from dataspace.connectors.enroll import enroll  # noqa: E402
from dataspace.site import create_site  # noqa: E402


@pytest.mark.parametrize("name", sorted(sr.TASKS))
def test_the_scripted_expert_succeeds_on_every_task(name):
    task = sr.TASKS[name]
    sim = sr.Sim(task)
    goals = sr.sector_goals(task, 40, None, 3, np.random.default_rng(4))
    k, dists = sr.success_rate(sim, sr.expert(task), goals, seed=11)
    assert k / len(goals) >= 0.9, sorted(dists)[-5:]
    # and a policy that does nothing does not: success is not free
    idle, _ = sr.success_rate(sim, lambda obs: np.zeros(2, np.float32), goals, seed=11)
    assert idle / len(goals) <= 0.1


def test_the_variant_is_another_robot():
    """reacher-long is built from Reacher-v5's XML with other links and dynamics."""
    long, base = sr.TASKS["reacher-long"], sr.TASKS["reacher"]
    sim = sr.Sim(long)
    assert sim.model.body("fingertip").pos[0] == pytest.approx(long.link1)
    assert sim.model.body("body1").pos[0] == pytest.approx(long.link0)
    assert sim.model.actuator_gear[0, 0] == pytest.approx(long.gear) != base.gear
    assert sim.model.dof_damping[0] == pytest.approx(long.damping) != base.damping


def test_sector_goals_split_the_workspace_by_angle():
    task = sr.TASKS["reacher"]
    rng = np.random.default_rng(0)
    for k in range(3):
        g = sr.sector_goals(task, 200, k, 3, rng)
        angle = np.degrees(np.arctan2(g[:, 1], g[:, 0])) % 360
        r = np.linalg.norm(g, axis=1)
        assert ((angle >= 120 * k) & (angle < 120 * (k + 1))).all()
        assert ((r >= task.r_min) & (r <= task.r_max)).all()


def test_the_demonstrations_enroll_as_hdf5(tmp_path):
    """The files the benchmark writes are what the connector reads, frame for frame."""
    task = sr.TASKS["reacher"]
    sim = sr.Sim(task)
    eps = sr.record(sim, sr.sector_goals(task, 3, 0, 3, np.random.default_rng(1)), seed=5)
    path = sr.write_hdf5(tmp_path / "d.h5", eps)
    site = create_site(tmp_path / "site", "holder", name="holder")
    res = enroll(site, path, format="hdf5")
    assert (res.episodes, res.frames, res.state_dim, res.action_dim) == (3, 3 * task.steps, 10, 2)
    assert res.fps == 50


def test_wilson_interval():
    lo, hi = sr.wilson(92, 100)
    assert lo == pytest.approx(0.850, abs=2e-3) and hi == pytest.approx(0.959, abs=2e-3)
    assert sr.wilson(0, 30)[0] == 0.0 and sr.wilson(30, 30)[1] == 1.0


@pytest.mark.slow
def test_a_tiny_closed_loop_run_goes_end_to_end(tmp_path):
    argv = ["--demos", "6", "--rounds", "1", "--rollouts", "4", "--no-alone"]
    out = closed_loop.run(closed_loop.parse([*argv, "--workdir", str(tmp_path / "w")]))
    for key in ("success_federated", "success_central", "success_alone", "ratio", "task"):
        assert key in out
    assert out["success_expert"] == 1.0
    assert 0.0 <= out["success_federated"] <= 1.0
    # what the sites' ledgers charged, within the contract
    assert len(out["epsilon_spent"]) == 3
    assert all(0 < e <= 8.0 for e in out["epsilon_spent"].values())
    assert out["recipe"]["spec"]["optimizer"] == "adam"
    # a round's steps are the site's setting capped by its run_steps over the run's rounds
    site = out["recipe"]["site"]
    assert site["local_steps"] == min(site["local_steps_setting"], -(-site["run_steps"] // 1))
    assert site["local_steps"] == out["plan_site0"]["steps_per_round"]
    assert (tmp_path / "w" / "federated" / "lerobot" / "config.json").exists()


def test_the_plot_draws_every_policy_with_its_interval(tmp_path):
    """From a real run's result (bench/RESULTS.md, session 8, reacher with defaults)."""
    out = {"task": "reacher", "epsilon": 8.0, "rounds": 100, "demos_per_site": 80,
           "rollouts": 100, "success_expert": 1.0, "success_central": 0.8,
           "success_central_ci": [0.7112, 0.8666], "success_federated": 0.37,
           "success_federated_ci": [0.2818, 0.4678],
           "success_alone": {"site-0": 0.34, "site-1": 0.18, "site-2": 0.04},
           "success_alone_ci": {"site-0": [0.2546, 0.4372], "site-1": [0.117, 0.2667],
                                "site-2": [0.0157, 0.0984]}}  # fmt: skip
    png = closed_loop.plot(out, tmp_path / "p" / "success.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    out.pop("success_central")  # --no-central: no goal line, still a chart
    assert closed_loop.plot(out, tmp_path / "q.png").exists()
