"""Simulated robots with scripted experts: clean data the quality thresholds never saw.

The statistical checks' thresholds were first chosen on the three shared
recordings (so101, unitree-g1, bimanual); a check that only holds there is
tuned to them. These generators give *other* embodiments and controllers, each
with what real recordings have and the shared ones barely show: idle phases
(the robot holds still under a controller with a little command jitter), slow
motions, commands that sit at their saturation limit, on/off commands, encoder
quantisation and sensor noise. ``tests/quality/test_heldout.py`` and
``bench/quality_detect.py`` validate the checks on them ("held-out" sources).

Each source is deterministic: :func:`episodes` with the same (source, count,
seed) gives the same episodes. Sources:

``planar_arm`` (50 fps)
    A 3-link planar arm with an on/off gripper reaching 1-3 targets and back.
    Action: joint torques from a PD controller tracking a minimum-jerk
    reference (clipped at the motors' limit, with a little command jitter) and
    a 0/1 gripper command. State: joint angles from 4096-count encoders,
    low-passed velocity estimates, gripper opening (rate limited, saturates).
    Some episodes only hold still ("wait"), some move three times slower.
``mobile_base`` (10 fps)
    A differential-drive base visiting 1-4 waypoints with stops. Action:
    (v, omega) from a go-to-goal controller, mostly at the saturation limits,
    joystick-like jitter. State: wheel odometry (x, y exactly constant when the
    wheels stop), IMU heading and gyro rate (noisy), measured speed.
``gantry`` (30 fps)
    A 3-axis gantry doing pick-and-place with bang-bang axis commands
    ({-v, 0, +v}, no noise: a digital drive) and an on/off gripper. State:
    0.1 mm encoder positions of an acceleration-limited drive, gripper opening.
    An axis within 1 cm of its target does not move at all: a shorter move
    would be a one-frame pulse of full command, and such pulses (a chattering
    controller) cannot be told from the one-frame glitch inject.action_jump
    plants, by any check.
``teleop_arm`` (15 fps)
    A SCARA arm teleoperated with a joystick: velocity actions with hand
    tremor, a deadzone (exact zeros) and full-deflection clipping, a 0/1
    gripper button, pauses. Added after the checks' rules were settled on the
    other three and run once (bench/RESULTS.md, issue 18).
``pan_tilt`` (20 fps)
    A camera head tracking targets by visual servoing: pan/tilt velocity
    commands from a P controller on the measured pixel error, with a deadband
    (exact zeros when fixating), saturation, saccades and smooth pursuit, a
    tilt that stops at its mechanical limit while the controller keeps asking
    for more, and a 0/1 laser pointer. Written in session 5 after the rules
    of that session were settled, and run once (bench/RESULTS.md, issue 18).
``quadruped_leg`` (100 fps)
    One leg of a quadruped (hip abduction, hip flexion, knee) under joint
    impedance control: the action is the gait planner's joint position targets
    (with a little balance-controller noise, clipped at the joint limits when
    it sits down) and a 0/1 stance flag that switches the controller's gains
    every half gait cycle. State: 14-bit encoder angles, noisy filtered joint
    velocities, a 0/1 foot contact switch and the knee motor current, which
    saturates under load. Stands, walks (trot at 1.5-3 Hz), sits down and
    stands up. Written in session 7 before that session changed any rule, and
    run once with the rules as they were (bench/RESULTS.md, issue 18).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from dataspace.errors import DataspaceError
from dataspace.schema import Episode


class UnknownSourceError(DataspaceError):
    """A synthetic source name that this module does not define."""


@dataclass(frozen=True)
class Source:
    """One simulated robot: its frame rate and how to make one episode.

    ``declared``: the feature ranges its maker would state (inject.write_dataset's
    ``declared_ranges``, names are the column numbers), e.g. a camera's image size.
    """

    name: str
    fps: float
    make: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]
    description: str
    declared: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)


def _episode(state: np.ndarray, action: np.ndarray, fps: float) -> Episode:
    n = state.shape[0]
    t = np.rint(np.arange(n) * 1e6 / fps).astype(np.int64)
    return Episode(t, state.astype(np.float32), action.astype(np.float32))


def _min_jerk(q0: np.ndarray, q1: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity (per frame) of a minimum-jerk move over n frames."""
    s = np.linspace(0.0, 1.0, n)[:, None]
    pos = q0 + (q1 - q0) * (10 * s**3 - 15 * s**4 + 6 * s**5)
    vel = (q1 - q0) * (30 * s**2 - 60 * s**3 + 30 * s**4) / max(n - 1, 1)
    return pos, vel


# --- planar arm ---------------------------------------------------------------------------

ARM_FPS = 50.0
_LINKS = np.array([0.4, 0.3, 0.2])
_INERTIA = np.array([0.6, 0.3, 0.08])
_DAMPING = np.array([0.4, 0.25, 0.08])
_KP = np.array([60.0, 35.0, 10.0])
_KD = np.array([8.0, 4.5, 1.2])
_TAU_MAX = np.array([1.2, 0.8, 0.15])
_ENCODER = 2 * np.pi / 4096
_HOME = np.array([0.3, 1.2, -0.9])


def _arm_ik(rng: np.random.Generator) -> np.ndarray:
    """Joint angles reaching a random point of the workspace (2-link IK, wrist at random)."""
    r = rng.uniform(0.25, 0.62)
    phi = rng.uniform(-0.6, 1.6)
    l1, l2 = _LINKS[0], _LINKS[1]
    c2 = np.clip((r**2 - l1**2 - l2**2) / (2 * l1 * l2), -1.0, 1.0)
    q2 = np.arccos(c2) * (1 if rng.random() < 0.8 else -1)
    q1 = phi - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2))
    return np.array([q1, q2, rng.uniform(-1.2, 1.2)])


def _arm_reference(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference position and velocity per frame, and the gripper command (0/1)."""
    fps = ARM_FPS
    pos, vel, grip = [], [], []
    q = _HOME.copy()
    g = 0.0

    def hold(seconds: float) -> None:
        n = max(1, int(seconds * fps))
        pos.append(np.repeat(q[None], n, 0))
        vel.append(np.zeros((n, 3)))
        grip.append(np.full(n, g))

    kind = rng.random()
    hold(rng.uniform(0.2, 1.5))
    if kind < 0.08:  # a "wait" episode: the arm holds still throughout
        hold(rng.uniform(2.0, 6.0))
        return np.concatenate(pos), np.concatenate(vel), np.concatenate(grip)
    slow = 3.0 if kind < 0.23 else 1.0
    targets = [_arm_ik(rng) for _ in range(int(rng.integers(1, 4)))] + [_HOME.copy()]
    for target in targets:
        dist = float(np.max(np.abs(target - q)))
        n = max(5, int(fps * slow * rng.uniform(0.6, 1.0) * (0.5 + 1.2 * dist)))
        p, v = _min_jerk(q, target, n)
        pos.append(p)
        vel.append(v * fps)
        grip.append(np.full(n, g))
        q = target
        hold(rng.uniform(0.1, 0.4))
        g = 1.0 - g if rng.random() < 0.8 else g  # close on the object, open to release
        hold(rng.uniform(0.2, 1.2))
    hold(rng.uniform(0.2, 1.0))
    return np.concatenate(pos), np.concatenate(vel), np.concatenate(grip)


def planar_arm(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(state [n, 7], action [n, 4]) of one planar-arm episode (module docstring)."""
    ref_q, ref_v, grip_cmd = _arm_reference(rng)
    n = ref_q.shape[0]
    sub = 5  # physics steps per frame
    dt = 1.0 / (ARM_FPS * sub)
    q, qd = _HOME + rng.normal(0, 0.002, 3), np.zeros(3)
    q_meas_prev = np.round(q / _ENCODER) * _ENCODER
    v_est = np.zeros(3)
    opening = 0.08
    jitter = 0.004 * _TAU_MAX  # the drive's command noise
    state = np.zeros((n, 7))
    action = np.zeros((n, 4))
    for t in range(n):
        q_meas = np.round(q / _ENCODER) * _ENCODER
        v_est = 0.7 * v_est + 0.3 * (q_meas - q_meas_prev) * ARM_FPS
        q_meas_prev = q_meas
        tau = _KP * (ref_q[t] - q_meas) + _KD * (ref_v[t] - v_est)
        tau = np.clip(tau + rng.normal(0, 1, 3) * jitter, -_TAU_MAX, _TAU_MAX)
        state[t, :3], state[t, 3:6], state[t, 6] = q_meas, v_est, opening
        action[t, :3], action[t, 3] = tau, grip_cmd[t]
        for _ in range(sub):
            qdd = (tau - _DAMPING * qd) / _INERTIA
            qd = qd + qdd * dt
            q = q + qd * dt
        target_open = 0.0 if grip_cmd[t] > 0.5 else 0.08
        opening += np.clip(target_open - opening, -0.1 / ARM_FPS, 0.1 / ARM_FPS)
    return state, action


# --- mobile base ------------------------------------------------------------------------

BASE_FPS = 10.0
_V_MAX, _W_MAX = 0.8, 1.0
_TICK = 0.0005  # wheel odometry resolution (m)


def mobile_base(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(state [n, 5], action [n, 2]) of one mobile-base episode (module docstring)."""
    dt = 1.0 / BASE_FPS
    x, y, th = rng.uniform(1, 9), rng.uniform(1, 9), rng.uniform(-np.pi, np.pi)
    v = w = 0.0
    odo = np.array([x, y])
    kind = rng.random()
    if kind < 0.05:  # waits where it is
        plan = [("wait", rng.uniform(8, 30))]
    elif kind < 0.15:  # turns to face a new direction, twice
        plan = [("turn", rng.uniform(-np.pi, np.pi)), ("wait", rng.uniform(1, 4))] * 2
    else:
        plan = [("wait", rng.uniform(0.5, 3))]
        for _ in range(int(rng.integers(1, 5))):
            plan += [("goto", (rng.uniform(0.5, 9.5), rng.uniform(0.5, 9.5)))]
            plan += [("wait", rng.uniform(1, 4))]
    states, actions = [], []
    for step, arg in plan:
        steps = int(arg * BASE_FPS) if step == "wait" else int(120 * BASE_FPS)
        for _ in range(steps):
            if step == "wait":
                vc, wc = 0.0, 0.0
            elif step == "turn":
                err = np.angle(np.exp(1j * (arg - th)))
                if abs(err) < 0.03:
                    break
                vc, wc = 0.0, 2.0 * err
            else:
                dx, dy = arg[0] - x, arg[1] - y
                dist = float(np.hypot(dx, dy))
                if dist < 0.05:
                    break
                err = np.angle(np.exp(1j * (np.arctan2(dy, dx) - th)))
                wc = 2.0 * err
                vc = 0.0 if abs(err) > 0.5 else 0.8 * dist
            # joystick-like jitter of the command channel, moving or not; the drive
            # accepts commands up to its limits, so fast stretches sit exactly at them
            vc_j = float(np.clip(vc + rng.normal(0, 0.004), -_V_MAX, _V_MAX))
            wc_j = float(np.clip(wc + rng.normal(0, 0.006), -_W_MAX, _W_MAX))
            states.append(
                [
                    np.round(odo[0] / _TICK) * _TICK,
                    np.round(odo[1] / _TICK) * _TICK,
                    np.angle(np.exp(1j * (th + rng.normal(0, 0.003)))),
                    np.round(v / 0.002) * 0.002,
                    w + rng.normal(0, 0.01),
                ]
            )
            actions.append([vc_j, wc_j])
            # first-order drive response; the wheels do not creep under a tiny command
            v += (vc_j - v) * (1 - np.exp(-dt / 0.3))
            w += (wc_j - w) * (1 - np.exp(-dt / 0.2))
            v_eff = v if abs(v) > 0.01 else 0.0
            w_eff = w if abs(w) > 0.02 else 0.0
            x += v_eff * np.cos(th) * dt
            y += v_eff * np.sin(th) * dt
            th = float(np.angle(np.exp(1j * (th + w_eff * dt))))
            odo = np.array([x, y])
    return np.asarray(states), np.asarray(actions)


# --- gantry -------------------------------------------------------------------------------

GANTRY_FPS = 30.0
_AXIS_V = np.array([0.25, 0.25, 0.12])  # m/s per axis at full command
_AXIS_ACC = 1.5  # m/s^2
_RES = 0.0001  # encoder resolution (m)


def gantry(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(state [n, 4], action [n, 4]) of one gantry pick-and-place (module docstring)."""
    dt = 1.0 / GANTRY_FPS
    home = np.array([0.05, 0.05, 0.20])
    pos, vel = home.copy(), np.zeros(3)
    opening, grip = 0.04, 0.0
    states, actions = [], []

    def run(target: np.ndarray | None, grip_cmd: float, seconds: float = 0.0) -> None:
        nonlocal pos, vel, opening, grip
        grip = grip_cmd
        steps = int(seconds * GANTRY_FPS) if target is None else int(60 * GANTRY_FPS)
        # an axis within the 1 cm in-position band does not move at all: a shorter move
        # would be a one-frame pulse of full command, which is what a glitch looks like
        braking = np.zeros(3, dtype=bool) if target is None else np.abs(target - pos) < 0.01
        for _ in range(steps):
            cmd = np.zeros(3)
            if target is not None:
                err = target - pos
                # bang-bang: full speed until the braking distance, then the drive stops
                # (latched: a braking axis gets no new pulse during this move)
                braking |= np.abs(err) <= vel**2 / (2 * _AXIS_ACC) + 0.003
                cmd = np.where(braking, 0.0, np.sign(err))
                if np.all(np.abs(vel) < 1e-3) and np.all(braking):
                    break
            states.append([*(np.round(pos / _RES) * _RES), opening])
            actions.append([*cmd, grip])
            want = cmd * _AXIS_V
            vel = vel + np.clip(want - vel, -_AXIS_ACC * dt, _AXIS_ACC * dt)
            pos = pos + vel * dt
            opening += np.clip((0.0 if grip > 0.5 else 0.04) - opening, -0.002, 0.002)

    run(None, 0.0, rng.uniform(0.2, 1.0))
    if rng.random() < 0.06:  # no part arrived: the gantry waits
        run(None, 0.0, rng.uniform(3, 8))
        return np.asarray(states), np.asarray(actions)
    pick = np.array([rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.4), 0.0])
    place = np.array([rng.uniform(0.6, 0.9), rng.uniform(0.1, 0.4), 0.0])
    for spot in (pick, place):
        above = spot + np.array([0, 0, 0.15])
        run(above, grip)
        run(spot + np.array([0, 0, rng.uniform(0.0, 0.01)]), grip)
        run(None, 1.0 - grip, rng.uniform(0.4, 1.0))  # close on the part, or release it
        run(above, grip)
    run(home, grip)
    run(None, grip, rng.uniform(0.2, 1.0))
    return np.asarray(states), np.asarray(actions)


# --- teleoperated arm ----------------------------------------------------------------------

TELEOP_FPS = 15.0
_SCARA = np.array([0.35, 0.30])  # link lengths (m)
_STICK_MAX = 0.15  # m/s at full stick deflection


def _scara_ik(p: np.ndarray) -> np.ndarray:
    """Joint angles (shoulder, elbow) of a 2-link SCARA reaching p (elbow to the right)."""
    r2 = float(p @ p)
    c2 = np.clip((r2 - _SCARA[0] ** 2 - _SCARA[1] ** 2) / (2 * _SCARA[0] * _SCARA[1]), -1, 1)
    q2 = np.arccos(c2)
    q1 = np.arctan2(p[1], p[0]) - np.arctan2(_SCARA[1] * np.sin(q2), _SCARA[0] + _SCARA[1] * c2)
    return np.array([q1, q2])


def teleop_arm(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(state [n, 5], action [n, 4]) of one teleoperated SCARA pick (module docstring).

    A person steers the tool with a joystick: the action is the commanded tool
    velocity (dx, dy, dz: smooth intent, hand tremor, a deadzone that sends
    exact zeros when the stick is released, clipped at full deflection) and a
    0/1 gripper button. State: shoulder, elbow, lift (encoder-quantised), wrist
    force reading (noisy), gripper closed flag.
    """
    dt = 1.0 / TELEOP_FPS
    tool = np.array([rng.uniform(0.25, 0.45), rng.uniform(-0.2, 0.2), 0.12])
    goals = [np.array([rng.uniform(0.2, 0.55), rng.uniform(-0.35, 0.35), 0.02])]
    goals.append(np.array([rng.uniform(0.2, 0.55), rng.uniform(-0.35, 0.35), 0.05]))
    grip, states, actions = 0.0, [], []
    tremor = np.zeros(3)
    careful = rng.uniform(0.4, 1.0)  # how far this operator pushes the stick

    def frame(cmd: np.ndarray) -> None:
        nonlocal tool, tremor
        tremor = 0.6 * tremor + rng.normal(0, 0.004, 3)
        raw = cmd + tremor
        stick = np.where(np.abs(raw) < 0.01, 0.0, np.clip(raw, -_STICK_MAX, _STICK_MAX))
        tool = tool + stick * dt
        tool[2] = float(np.clip(tool[2], 0.0, 0.2))
        q = _scara_ik(tool[:2])
        force = 2.0 * grip + rng.normal(0, 0.05)
        states.append(
            [*(np.round(q / 0.001) * 0.001), np.round(tool[2] / 0.0005) * 0.0005, force, grip]
        )
        actions.append([*stick, grip])

    for _ in range(int(rng.integers(5, 30))):  # the operator takes the stick
        frame(np.zeros(3))
    for goal in goals:
        for _ in range(int(40 * TELEOP_FPS)):
            err = goal - tool
            if np.linalg.norm(err) < 0.01:
                break
            # intent: towards the goal, slower when close; a pause now and then
            if rng.random() < 0.01:
                for _ in range(int(rng.integers(5, 20))):
                    frame(np.zeros(3))
            frame(np.clip(careful * 1.5 * err, -_STICK_MAX, _STICK_MAX))
        for _ in range(int(rng.integers(3, 12))):
            frame(np.zeros(3))
        grip = 1.0 - grip
        for _ in range(int(rng.integers(3, 12))):
            frame(np.zeros(3))
    for _ in range(int(rng.integers(5, 20))):
        frame(np.zeros(3))
    return np.asarray(states), np.asarray(actions)


# --- pan-tilt camera head ---------------------------------------------------------------

PAN_TILT_FPS = 20.0
_PT_VMAX = 2.0  # rad/s
_PT_TICK = 2 * np.pi / 8192
_TILT_LIMITS = (-0.8, 0.6)
_FOCAL = 600.0  # px per rad (small-angle camera model)
_PIXELS = 900.0  # a target is in view within this many pixels of the image centre


def pan_tilt(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(state [n, 5], action [n, 3]) of one pan-tilt tracking episode (module docstring).

    State: pan and tilt encoder angles, the measured pixel error (x, y; exactly 0
    when no target is visible) and the target-visible flag. Action: pan and
    tilt velocity commands and the laser pointer (0/1, on while locked on).
    """
    dt = 1.0 / PAN_TILT_FPS
    q = np.array([rng.uniform(-1.0, 1.0), rng.uniform(-0.3, 0.3)])
    qd = np.zeros(2)
    gain = rng.uniform(3.0, 6.0)
    states, actions = [], []
    plan: list[tuple[str, float]] = [("idle", rng.uniform(0.5, 3.0))]
    for _ in range(int(rng.integers(1, 4))):
        plan += [("track", rng.uniform(2.0, 8.0)), ("idle", rng.uniform(0.5, 3.0))]
    for phase, seconds in plan:
        # a target somewhere (now and then above the tilt limit) drifting slowly
        target = np.array([rng.uniform(-2.0, 2.0), rng.uniform(-0.9, 0.7)])
        drift = rng.normal(0, 0.08, 2) if rng.random() < 0.5 else np.zeros(2)
        locked = 0
        for _ in range(max(1, int(seconds * PAN_TILT_FPS))):
            if phase == "track":
                target = target + drift * dt
                err = (target - q) * _FOCAL + rng.normal(0, 1.5, 2)  # pixels
                visible = bool(np.all(np.abs(err) < _PIXELS))
            else:
                err, visible = np.zeros(2), False
            if visible:
                cmd = np.clip(gain * err / _FOCAL, -_PT_VMAX, _PT_VMAX)
                cmd[np.abs(err) < 2.0] = 0.0  # deadband: fixating
                locked = locked + 1 if np.all(np.abs(err) < 6.0) else 0
            else:
                cmd, locked = np.zeros(2), 0
            laser = 1.0 if locked >= 5 else 0.0
            meas = np.round(err, 1) if visible else np.zeros(2)
            states.append([*(np.round(q / _PT_TICK) * _PT_TICK), *meas, float(visible)])
            actions.append([*cmd, laser])
            qd = qd + (cmd - qd) * (1 - np.exp(-dt / 0.05))
            q = q + qd * dt
            if q[1] <= _TILT_LIMITS[0] or q[1] >= _TILT_LIMITS[1]:  # the hard stop
                q[1] = float(np.clip(q[1], *_TILT_LIMITS))
                qd[1] = 0.0
    return np.asarray(states), np.asarray(actions)


# --- quadruped leg --------------------------------------------------------------------

LEG_FPS = 100.0
_LEG_KP = np.array([40.0, 40.0, 50.0])  # N m / rad, stance gains
_LEG_KD = np.array([0.8, 0.8, 1.0])
_LEG_SWING = 0.5  # the swing gains are half the stance gains
_LEG_INERTIA = np.array([0.02, 0.03, 0.02])
_LEG_TAU_MAX = np.array([12.0, 12.0, 18.0])
_LEG_LIMITS = np.array([[-0.6, 0.6], [-1.2, 1.8], [-2.7, -0.6]])
_LEG_TICK = 2 * np.pi / 16384
_STAND = np.array([0.0, 0.8, -1.6])
_SIT = np.array([0.0, 1.6, -2.7])  # the knee target sits at its limit
_KT = 0.12  # N m per A (through the gearbox)
_I_MAX = 110.0  # the driver's current limit (A)


def _leg_plan(rng: np.random.Generator) -> list[tuple[str, float]]:
    """A sequence of (phase, seconds): stand, walk, sit, rise."""
    plan = [("stand", rng.uniform(0.3, 1.5))]
    kind = rng.random()
    if kind < 0.1:  # the robot stands the whole episode (waits for an order)
        plan.append(("stand", rng.uniform(2.0, 6.0)))
        return plan
    for _ in range(int(rng.integers(1, 4))):
        plan.append(("walk", rng.uniform(1.5, 5.0)))
        plan.append(("stand", rng.uniform(0.3, 2.0)))
    if rng.random() < 0.3:
        plan += [("sit", 1.5), ("stand_still_sitting", rng.uniform(0.5, 2.0)), ("rise", 1.5)]
        plan.append(("stand", rng.uniform(0.3, 1.0)))
    return plan


def _leg_targets(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Joint position targets [n, 3] and the stance flag [n] from a gait planner."""
    fps = LEG_FPS
    targets, stance = [], []
    q = _STAND.copy()
    for phase, seconds in _leg_plan(rng):
        n = max(1, int(seconds * fps))
        if phase in ("stand", "stand_still_sitting"):
            targets.append(np.repeat(q[None], n, 0))
            stance.append(np.ones(n))
        elif phase in ("sit", "rise"):
            goal = _SIT if phase == "sit" else _STAND
            p, _ = _min_jerk(q, goal, n)
            targets.append(p)
            stance.append(np.ones(n))
            q = goal.copy()
        else:  # a trot: swing (foot lifted and brought forward), then stance (pushed back)
            freq = rng.uniform(1.5, 3.0)
            stride = rng.uniform(0.15, 0.45)  # hip flexion amplitude (rad)
            lift = rng.uniform(0.3, 0.7)  # extra knee flexion in swing (rad)
            side = rng.normal(0, 0.05)  # a little abduction when turning
            phi = (np.arange(n) * freq / fps + rng.uniform(0, 1)) % 1.0
            swing = phi < 0.5
            s = np.where(swing, phi / 0.5, (phi - 0.5) / 0.5)
            hip = np.where(swing, -stride * np.cos(np.pi * s), stride * np.cos(np.pi * s))
            knee = np.where(swing, -lift * np.sin(np.pi * s), 0.0)
            p = np.stack([np.full(n, side), _STAND[1] + hip, _STAND[2] + knee], 1)
            targets.append(p)
            stance.append((~swing).astype(float))
            q = _STAND.copy()
    return np.concatenate(targets), np.concatenate(stance)


def quadruped_leg(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(state [n, 8], action [n, 4]) of one quadruped-leg episode (module docstring)."""
    ref, stance_cmd = _leg_targets(rng)
    n = ref.shape[0]
    sub = 4
    dt = 1.0 / (LEG_FPS * sub)
    q, qd = _STAND + rng.normal(0, 0.01, 3), np.zeros(3)
    v_est = np.zeros(3)
    q_prev = np.round(q / _LEG_TICK) * _LEG_TICK
    balance = np.zeros(3)
    load = rng.uniform(0.8, 1.2)  # the robot's payload, as a share of its nominal weight
    state = np.zeros((n, 8))
    action = np.zeros((n, 4))
    for t in range(n):
        # the balance controller's small corrections ride on the planner's targets
        balance = 0.95 * balance + rng.normal(0, 0.0015, 3)
        target = np.clip(ref[t] + balance, _LEG_LIMITS[:, 0], _LEG_LIMITS[:, 1])
        gains = 1.0 if stance_cmd[t] > 0.5 else _LEG_SWING
        q_meas = np.round(q / _LEG_TICK) * _LEG_TICK
        v_est = 0.6 * v_est + 0.4 * (q_meas - q_prev) * LEG_FPS
        q_prev = q_meas
        tau = gains * (_LEG_KP * (target - q_meas) - _LEG_KD * v_est)
        # the body's weight on a leg in contact bends the knee and the hip
        contact = stance_cmd[t] > 0.5 and q[2] < -0.9
        gravity = np.array([0.0, -2.0, 6.0]) * load if contact else np.zeros(3)
        tau = np.clip(tau, -_LEG_TAU_MAX, _LEG_TAU_MAX)
        current = float(np.clip(tau[2] / _KT + rng.normal(0, 0.8), -_I_MAX, _I_MAX))
        state[t, :3] = q_meas
        state[t, 3:6] = v_est + rng.normal(0, 0.02, 3)
        state[t, 6] = 1.0 if contact else 0.0
        state[t, 7] = np.round(current, 1)
        action[t, :3] = target
        action[t, 3] = stance_cmd[t]
        for _ in range(sub):
            qdd = (tau + gravity - 0.05 * qd) / _LEG_INERTIA
            qd = qd + qdd * dt
            q = q + qd * dt
            hit = (q < _LEG_LIMITS[:, 0]) | (q > _LEG_LIMITS[:, 1])  # mechanical stops
            q = np.clip(q, _LEG_LIMITS[:, 0], _LEG_LIMITS[:, 1])
            qd[hit] = 0.0
    return state, action


SOURCES: dict[str, Source] = {
    "planar_arm": Source(
        "planar_arm",
        ARM_FPS,
        planar_arm,
        "3-link planar arm, PD torque control, on/off gripper, 4096-count encoders",
    ),
    "mobile_base": Source(
        "mobile_base",
        BASE_FPS,
        mobile_base,
        "differential-drive base, saturated (v, omega) go-to-goal commands, wheel odometry",
    ),
    "gantry": Source(
        "gantry",
        GANTRY_FPS,
        gantry,
        "3-axis gantry, bang-bang axis commands, on/off gripper, 0.1 mm encoders",
    ),
    "teleop_arm": Source(
        "teleop_arm",
        TELEOP_FPS,
        teleop_arm,
        "SCARA arm teleoperated by joystick velocity, tremor, deadzone, 0/1 gripper button",
    ),
    "pan_tilt": Source(
        "pan_tilt",
        PAN_TILT_FPS,
        pan_tilt,
        "camera head, visual-servo velocity commands, deadband, tilt hard stop, 0/1 laser",
        # what its maker states: the tilt's hard stops, the pixel error's extent (a
        # target counts as seen within 900 px of the image centre), the commands' limits
        declared={
            "observation.state": {
                "1": _TILT_LIMITS,
                "2": (-_PIXELS, _PIXELS),
                "3": (-_PIXELS, _PIXELS),
            },
            "action": {"0": (-_PT_VMAX, _PT_VMAX), "1": (-_PT_VMAX, _PT_VMAX), "2": (0.0, 1.0)},
        },
    ),
    "quadruped_leg": Source(
        "quadruped_leg",
        LEG_FPS,
        quadruped_leg,
        "quadruped leg, impedance control on position targets, trot gait, 0/1 stance gains",
    ),
}


def episodes(source: str, count: int, seed: int) -> list[Episode]:
    """``count`` clean episodes of ``source``; the same arguments give the same episodes."""
    if source not in SOURCES:
        raise UnknownSourceError(f"unknown synthetic source {source!r}; known: {sorted(SOURCES)}")
    src = SOURCES[source]
    rng = np.random.default_rng([seed, list(SOURCES).index(source)])
    return [_episode(*src.make(rng), src.fps) for _ in range(count)]
