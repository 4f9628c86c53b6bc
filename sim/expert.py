"""A scripted peg-insertion expert for the twin, with a knob that makes it a mixed-quality data
source (Gaussian action noise and random perturbation bursts)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from scipy.spatial.transform import Rotation

from sim.envs import sim_world

# Phase switch: descend into the hole once the peg tip is this close to the hole axis (m) and the
# peg's yaw is this close to the hole's (rad); go back to aligning if it drifts this far (m).
_ALIGNED_M = 0.0015
_ALIGNED_RAD = 0.03
_LOST_M = 0.003
# While the tip is less than this deep (m) it is still entering; it presses down only once its
# offset from the hole axis is below _CENTRED_M.
_ENTERED_M = 0.003
_CENTRED_M = 0.001


class PegInsertionExpert:
    """Align (xy and yaw), approach to just above the rim, insert.

    Privileged: it reads the fixture and TCP poses from the `SimWorld` behind `env`, not from the
    observation. Actions respect the env's action space (6-D when the gripper is fixed, else 7-D
    with the gripper held closed) and its action frame (end effector or base) and scale.

    `noise`: standard deviation of Gaussian noise added to every action component.
    `perturbation_prob`: per-step chance of starting a burst of `perturbation_steps` steps of one
    random action drawn uniformly in ±`perturbation_scale`. Noisy actions are clipped to [-1, 1].
    """

    def __init__(
        self,
        env: gym.Env,
        noise: float = 0.0,
        perturbation_prob: float = 0.0,
        perturbation_steps: int = 5,
        perturbation_scale: float = 1.0,
        hover_height: float = 0.008,
        seed: int | None = None,
    ):
        if (
            noise < 0
            or not 0 <= perturbation_prob <= 1
            or perturbation_steps < 1
            or perturbation_scale < 0
        ):
            raise ValueError(
                "noise ≥ 0, 0 ≤ perturbation_prob ≤ 1, perturbation_steps ≥ 1, perturbation_scale ≥ 0"
            )
        self.env = env
        self.world = sim_world(env)
        base = env.unwrapped
        self.task = base.task
        self.action_frame = base.env_cfg.action_frame
        self.action_dim = int(env.action_space.shape[0])
        if self.action_dim not in (6, 7):
            raise ValueError(f"expected a 6-D or 7-D action space, got {env.action_space.shape}")
        self.noise = noise
        self.perturbation_prob = perturbation_prob
        self.perturbation_steps = perturbation_steps
        self.perturbation_scale = perturbation_scale
        self.hover_height = hover_height
        self.rng = np.random.default_rng(seed)
        self.nominal_rotation = Rotation.from_rotvec(self.task.target_pose[3:])
        self.phase = "align"
        self._burst_left = 0
        self._burst_action = np.zeros(6)

    def reset(self) -> None:
        """Call at the start of each episode (it also resets itself when the peg is lifted)."""
        self.phase = "align"
        self._burst_left = 0

    def clean_action(self) -> np.ndarray:
        """The noiseless 6-D action (translation, rotation) for the current sim state."""
        world = self.world
        hole_top, _ = world.hole_pose()
        tcp_position, tcp_quat = world.tcp_pose()
        current = Rotation.from_quat(tcp_quat)
        truth = world.ground_truth()
        # Target orientation: the nominal one, turned about the vertical by the peg's yaw error
        # (so the square peg lines up with the hole at the nearest multiple of 90°).
        desired = Rotation.from_rotvec([0.0, 0.0, -truth.yaw_error]) * current
        tilt_fix = self._level(desired)
        desired = tilt_fix * desired
        lateral = float(np.linalg.norm(truth.lateral_offset))
        entering = truth.insertion_depth < _ENTERED_M
        if self.phase == "align" and lateral < _ALIGNED_M and abs(truth.yaw_error) < _ALIGNED_RAD:
            self.phase = "insert"
        elif self.phase == "insert" and entering and lateral > _LOST_M:
            self.phase = "align"
        tip_goal = hole_top.copy()
        if self.phase == "align":
            tip_goal[2] += self.hover_height
        elif not (entering and lateral > _CENTRED_M):
            # Aim below the floor: the compliant controller then presses with its clipped force.
            # (On the rim but off-centre, the goal stays at the rim: slide to the axis first
            # instead of pressing into the edge.)
            tip_goal[2] -= self.world.sim.hole_depth + 0.005
        tip_offset = desired.apply([0.0, 0.0, self.world.sim.peg_length_below_tcp])
        # Lateral and vertical parts are limited separately, so a long way down never dilutes the
        # sideways correction.
        translation = (tip_goal - tip_offset - tcp_position) / self.task.action_scale_translation
        translation[:2] = _shrink_to_unit(translation[:2], norm=True)
        translation[2] = np.clip(translation[2], -1.0, 1.0)
        if self.action_frame == "ee":
            translation = current.inv().apply(translation)
            turn = (current.inv() * desired).as_rotvec()
        else:
            turn = (desired * current.inv()).as_rotvec()
        action = np.concatenate(
            [
                np.clip(translation, -1.0, 1.0),
                _shrink_to_unit(turn / self.task.action_scale_rotation),
            ]
        )
        return action

    def _level(self, rotation: Rotation) -> Rotation:
        """The smallest rotation that points the tool axis straight down (undo tilt)."""
        axis = rotation.apply([0.0, 0.0, 1.0])
        down = np.array([0.0, 0.0, -1.0])
        cross = np.cross(axis, down)
        sine = float(np.linalg.norm(cross))
        if sine < 1e-9:
            return Rotation.identity()
        angle = math.atan2(sine, float(axis @ down))
        return Rotation.from_rotvec(cross / sine * angle)

    def act(self, observation=None) -> np.ndarray:
        """The next action (the observation is not needed: the expert is privileged)."""
        action = self.clean_action()
        if (
            self._burst_left == 0
            and self.perturbation_prob > 0
            and self.rng.random() < self.perturbation_prob
        ):
            self._burst_left = self.perturbation_steps
            self._burst_action = self.rng.uniform(
                -self.perturbation_scale, self.perturbation_scale, 6
            )
        if self._burst_left > 0:
            self._burst_left -= 1
            action = self._burst_action.copy()
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, 6)
        action = np.clip(action, -1.0, 1.0)
        if self.action_dim == 7:
            action = np.concatenate([action, [-1.0]])  # gripper closed on the peg
        return action.astype(np.float32)


def _shrink_to_unit(vector: np.ndarray, norm: bool = False) -> np.ndarray:
    """Scale down, keeping the direction, so that no component (or the norm) exceeds 1."""
    largest = float(np.linalg.norm(vector)) if norm else float(np.max(np.abs(vector)))
    return vector / largest if largest > 1.0 else vector
