"""Simulated reaching tasks for the closed-loop benchmark (bench/closed_loop.py).

A robot company judges a policy by how often the robot succeeds, so the benchmark
needs a robot: gymnasium's MuJoCo ``Reacher-v5`` (a planar two-link arm, torque
controlled; the XML ships inside gymnasium, nothing is downloaded), driven by a
scripted expert that records demonstrations, and the same simulator to roll the
trained policies out. mujoco and gymnasium are dev extras: the product never
imports this module.

Two tasks, so that the training recipe's defaults can be chosen on one and
checked on another it was not tuned on:

* ``reacher``: Reacher-v5 as shipped (links 0.1 and 0.11 m, armature 1, damping
  1, gear 200), targets in the annulus 0.05..0.20 m;
* ``reacher-long``: the same XML rewritten (:func:`task_xml`): links 0.13 and
  0.12 m, armature 0.5, damping 2, gear 120, targets in 0.08..0.24 m: other
  kinematics, other dynamics, another workspace.

Observation (``observation.state``): Reacher-v5's own 10 numbers, ``cos q``,
``sin q``, target x/y, joint velocities, fingertip minus target. Action: the two
motor commands in [-1, 1]. Success: the fingertip ends (last step) within
``Task.success_radius`` of the target. The scripted expert (:func:`expert`) is
inverse kinematics (elbow up) plus a PD law on the joints, computed from the
observation only, so a policy of the observation can imitate it exactly.

Non-IID sites: :func:`sector_goals` draws targets whose polar angle lies in one
third of the circle, one third per site; rollouts draw targets from the whole
annulus.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import h5py
import mujoco
import numpy as np

#: gymnasium's Reacher-v5 XML (in the gymnasium wheel)
REACHER_XML = Path(gym.__file__).parent / "envs" / "mujoco" / "assets" / "reacher.xml"


@dataclass(frozen=True)
class Task:
    """A reaching task: the arm's geometry and dynamics, its workspace, its success."""

    name: str
    link0: float = 0.1  # body0 -> body1
    link1: float = 0.11  # body1 -> fingertip
    armature: float = 1.0
    damping: float = 1.0
    gear: float = 200.0
    r_min: float = 0.05
    r_max: float = 0.20
    steps: int = 50  # control steps of one episode (dt 0.02 s)
    success_radius: float = 0.02
    #: expert's PD gains (in motor command units)
    kp: float = 1.2
    kd: float = 0.12


TASKS: dict[str, Task] = {
    "reacher": Task(name="reacher"),
    "reacher-long": Task(
        name="reacher-long",
        link0=0.13,
        link1=0.12,
        armature=0.5,
        damping=2.0,
        gear=120.0,
        r_min=0.08,
        r_max=0.24,
        kp=1.5,
        kd=0.12,
    ),
}

Policy = Callable[[np.ndarray], np.ndarray]


def task_xml(task: Task) -> str:
    """Reacher-v5's XML with ``task``'s links, armature, damping and gear."""
    xml = REACHER_XML.read_text()
    xml = xml.replace(
        'armature="1" damping="1"', f'armature="{task.armature}" damping="{task.damping}"'
    )
    xml = xml.replace('gear="200.0"', f'gear="{task.gear}"')
    # link geoms and the bodies they end at
    xml = xml.replace(
        '<geom fromto="0 0 0 0.1 0 0" name="link0"',
        f'<geom fromto="0 0 0 {task.link0} 0 0" name="link0"',
    )
    xml = xml.replace(
        '<body name="body1" pos="0.1 0 0">', f'<body name="body1" pos="{task.link0} 0 0">'
    )
    xml = xml.replace(
        '<geom fromto="0 0 0 0.1 0 0" name="link1"',
        f'<geom fromto="0 0 0 {task.link1 - 0.01} 0 0" name="link1"',
    )
    xml = xml.replace(
        '<body name="fingertip" pos="0.11 0 0">', f'<body name="fingertip" pos="{task.link1} 0 0">'
    )
    return xml


class Sim:
    """Reacher-v5's physics for ``task``: its XML, its control step (``frame_skip`` 2 of
    the XML's 0.01 s, so 0.02 s), its observation and its reset of the arm (joint
    angles and velocities uniform in +-0.1 and +-0.005), with the target set by us.

    The MuJoCo model is driven directly, as gymnasium's ``MujocoEnv`` does
    (``data.ctrl``, ``mj_step`` ``frame_skip`` times, ``mj_rnePostConstraint``):
    ``gym.make("Reacher-v5")`` also imports gymnasium's renderer, which needs
    ``imageio``, a package the project does not otherwise install.
    """

    frame_skip = 2

    def __init__(self, task: Task) -> None:
        self.task = task
        self.model = mujoco.MjModel.from_xml_string(task_xml(task))
        self.data = mujoco.MjData(self.model)
        self.goal = np.zeros(2)

    def close(self) -> None:
        pass

    def _obs(self) -> np.ndarray:
        """Reacher-v5's observation (``ReacherEnv._get_obs``)."""
        theta = self.data.qpos[:2]
        tip = self.data.body("fingertip").xpos
        target = self.data.body("target").xpos
        return np.concatenate(
            [
                np.cos(theta),
                np.sin(theta),
                self.data.qpos[2:4],
                self.data.qvel[:2],
                (tip - target)[:2],
            ]
        ).astype(np.float32)

    def reset(self, goal: np.ndarray, seed: int) -> np.ndarray:
        """Start an episode (the arm's start as Reacher-v5 draws it) with the target at ``goal``."""
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        qpos = rng.uniform(-0.1, 0.1, self.model.nq) + self.model.qpos0
        qvel = rng.uniform(-0.005, 0.005, self.model.nv)
        qpos[2:4] = goal
        qvel[2:4] = 0.0
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        mujoco.mj_forward(self.model, self.data)
        self.goal = np.asarray(goal, dtype=np.float64)
        return self._obs()

    def step(self, action: np.ndarray) -> np.ndarray:
        self.data.ctrl[:] = np.clip(action, -1.0, 1.0)
        for _ in range(self.frame_skip):
            mujoco.mj_step(self.model, self.data)
        mujoco.mj_rnePostConstraint(self.model, self.data)
        return self._obs()

    def distance(self) -> float:
        tip = self.data.body("fingertip").xpos[:2]
        return float(np.linalg.norm(tip - self.goal))

    def episode(
        self, policy: Policy, goal: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Roll ``policy`` out: states [T, 10], actions [T, 2], final distance."""
        obs = self.reset(goal, seed)
        states, actions = [], []
        for _ in range(self.task.steps):
            a = np.asarray(policy(obs), dtype=np.float32).reshape(-1)
            states.append(obs)
            actions.append(np.clip(a, -1.0, 1.0))
            obs = self.step(a)
        return np.stack(states), np.stack(actions), self.distance()


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def expert(task: Task) -> Policy:
    """Inverse kinematics (elbow up, q1 >= 0) and a PD law, from the observation alone."""
    l0, l1 = task.link0, task.link1

    def act(obs: np.ndarray) -> np.ndarray:
        q = np.arctan2(obs[2:4], obs[0:2])
        goal = obs[4:6]
        qdot = obs[6:8]
        r2 = float(goal @ goal)
        c2 = np.clip((r2 - l0 * l0 - l1 * l1) / (2 * l0 * l1), -0.999, 0.999)
        q2 = math.acos(c2)
        q1 = math.atan2(goal[1], goal[0]) - math.atan2(l1 * math.sin(q2), l0 + l1 * math.cos(q2))
        err = _wrap(np.array([q1, q2]) - q)
        return np.clip(task.kp * err - task.kd * qdot, -1.0, 1.0).astype(np.float32)

    return act


def sector_goals(
    task: Task, n: int, sector: int | None, sectors: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` targets uniform over the annulus, their angle in ``sector`` of ``sectors``
    (None: the whole circle)."""
    r = np.sqrt(rng.uniform(task.r_min**2, task.r_max**2, n))
    width = 2 * np.pi / sectors
    lo = 0.0 if sector is None else sector * width
    theta = rng.uniform(lo, lo + (2 * np.pi if sector is None else width), n)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def record(sim: Sim, goals: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The expert's demonstrations, one per goal: (states [T, 10], actions [T, 2])."""
    pol = expert(sim.task)
    out = []
    for i, g in enumerate(goals):
        s, a, _ = sim.episode(pol, g, seed + i)
        out.append((s, a))
    return out


def success_rate(sim: Sim, policy: Policy, goals: np.ndarray, seed: int) -> tuple[int, list[float]]:
    """Successes over one rollout per goal, and each rollout's final distance."""
    dists = []
    for i, g in enumerate(goals):
        reset = getattr(policy, "reset", None)
        if reset is not None:
            reset()
        _, _, d = sim.episode(policy, g, seed + i)
        dists.append(d)
    return sum(d < sim.task.success_radius for d in dists), dists


def write_hdf5(
    path: Path, episodes: list[tuple[np.ndarray, np.ndarray]], fps: float = 50.0
) -> Path:
    """robomimic-style HDF5 (``data/demo_N/obs/state``, ``actions``), as the connector reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["fps"] = float(fps)
        data.attrs["total"] = int(sum(len(s) for s, _ in episodes))
        for i, (s, a) in enumerate(episodes):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = len(s)
            g.create_group("obs").create_dataset("state", data=s.astype(np.float32))
            g.create_dataset("actions", data=a.astype(np.float32))
    return path


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate (95 % by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
