"""`FrankaEnv`: the gymnasium env the actor drives, over a `Robot`, `Camera`s and a `Clock`.

Observation (a flat Dict):
    state    float32 (19,), in this order (`STATE_LAYOUT`):
               position (3, m) and rotation vector (3, rad) of the TCP in the state frame,
               linear (3, m/s) and angular (3, rad/s) TCP velocity in the state frame,
               external force (3, N) and torque (3, Nm) on the end effector in the state frame,
               gripper width (1, m).
             The state frame is the task's nominal reset pose (default) or this episode's
             randomised reset pose (`env.state_frame: episode_reset`). Its orientation is the
             peg-down nominal one, so the rotation vector is small and has no wrap.
    <camera> uint8 (H, W, 3) RGB for each name in `env.cameras` (`wrist_1`, `wrist_2`).

Action: Box(-1, 1, (7,)): translation delta (3), rotation-vector delta (3), gripper (≤ −0.5
close, ≥ 0.5 open, dead band between). Deltas are scaled by the task's action scale, applied in
the end-effector frame (or the base frame), added to the *measured* TCP pose and clipped into
the safety box. An action with a NaN or an infinity is refused with `ActionError` before the
robot is touched (nothing is commanded, the step is not counted; the arm holds its last target).

Timing: the env owns the control clock. A step applies the action at once, waits for the next
deadline on the world's `Clock` (monotonic deadlines one period apart; after an overrun the
schedule restarts from now rather than bursting to catch up), then reads the robot and cameras.
`info` reports `period_overrun_s` and `observation_age_s`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from scipy.spatial.transform import Rotation

from robot_env.config import EnvConfig, TaskConfig
from robot_env.errors import UserError
from robot_env.geometry import pose6_to_pos_quat, relative_pose, yaw_rotation
from robot_env.interfaces import (
    Camera,
    CameraError,
    Clock,
    RecoveryRefused,
    Robot,
    RobotError,
    RobotState,
)
from robot_env.safety import SafetyBox

STATE_LAYOUT: dict[str, slice] = {
    "tcp_position": slice(0, 3),
    "tcp_rotvec": slice(3, 6),
    "tcp_linear_velocity": slice(6, 9),
    "tcp_angular_velocity": slice(9, 12),
    "force": slice(12, 15),
    "torque": slice(15, 18),
    "gripper_width": slice(18, 19),
}
STATE_DIM = 19

GRIPPER_CLOSE_THRESHOLD = -0.5
GRIPPER_OPEN_THRESHOLD = 0.5
log = logging.getLogger(__name__)

# Lift straight up before a reset move when the TCP is this far below the reset height, so a
# peg in the hole is pulled out along its axis instead of dragged sideways.
_RESET_LIFT_MARGIN_M = 0.005
_RESET_ATTEMPTS = 4
# Before a retry the arm must be still: at least this long after the failure (doubling with each
# attempt), and its joints below _STILL_JOINT_SPEED for _STILL_READINGS readings in a row. A plan
# refused for the arm's motion state is refused again if tried at once (seen under CPU load).
_RETRY_PAUSE_S = 0.5
_STILL_JOINT_SPEED = 0.01  # rad/s
_STILL_READINGS = 5
_STILL_POLL_S = 0.02

SuccessFn = Callable[[RobotState], tuple[bool, dict[str, float]]]


def pose_success_fn(task: TaskConfig) -> SuccessFn:
    """Success when the TCP is within `task.success_position_tolerance` of the target position."""
    target_position, _ = pose6_to_pos_quat(task.target_pose)

    def success(state: RobotState) -> tuple[bool, dict[str, float]]:
        distance = float(np.linalg.norm(state.tcp_position - target_position))
        return distance <= task.success_position_tolerance, {"target_distance": distance}

    return success


def base_spaces(env_cfg: EnvConfig) -> tuple[spaces.Dict, spaces.Box]:
    """`FrankaEnv`'s own observation and action spaces for `env_cfg`: `state` and one uint8 frame
    per camera in `env.cameras`, and the 7-D action. No robot or camera is touched."""
    image_shape = (env_cfg.image_height, env_cfg.image_width, 3)
    observation_space = spaces.Dict(
        {
            "state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            **{name: spaces.Box(0, 255, image_shape, np.uint8) for name in env_cfg.cameras},
        }
    )
    return observation_space, spaces.Box(-1.0, 1.0, (7,), np.float32)


class ActionError(UserError, ValueError):
    """An action the env refuses to send to the robot (wrong shape, NaN or infinite)."""


class FrankaEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        robot: Robot,
        cameras: Sequence[Camera],
        clock: Clock,
        task: TaskConfig,
        env_cfg: EnvConfig,
        success_fn: SuccessFn | None = None,
        scene_reset: Callable[[np.random.Generator], None] | None = None,
        render_fn: Callable[[], np.ndarray] | None = None,
        render_mode: str | None = None,
    ):
        camera_names = [camera.name for camera in cameras]
        if camera_names != list(env_cfg.cameras):
            raise ValueError(
                f"env.cameras is {list(env_cfg.cameras)} but the cameras given are {camera_names}; "
                "they must match in name and order"
            )
        if env_cfg.action_frame not in ("ee", "base"):
            raise ValueError(f"env.action_frame must be 'ee' or 'base', got '{env_cfg.action_frame}'")
        if env_cfg.state_frame not in ("nominal_reset", "episode_reset"):
            raise ValueError(
                f"env.state_frame must be 'nominal_reset' or 'episode_reset', got '{env_cfg.state_frame}'"
            )
        if env_cfg.control_hz <= 0:
            raise ValueError(f"env.control_hz must be positive, got {env_cfg.control_hz}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode}")

        self.robot = robot
        self.cameras = list(cameras)
        self.clock = clock
        self.task = task
        self.env_cfg = env_cfg
        self.render_mode = render_mode
        self._success_fn = success_fn if success_fn is not None else pose_success_fn(task)
        self._scene_reset = scene_reset
        self._render_fn = render_fn

        self.period = 1.0 / env_cfg.control_hz
        self.metadata = {**self.metadata, "render_fps": env_cfg.control_hz}
        self.safety_box = SafetyBox.from_task(task)
        self._reset_position, reset_quat = pose6_to_pos_quat(task.reset_pose)
        self._reset_rotation = Rotation.from_quat(reset_quat)
        self._frame_position = self._reset_position
        self._frame_rotation = self._reset_rotation

        self.observation_space, self.action_space = base_spaces(env_cfg)

        self._state: RobotState | None = None
        self._images: dict[str, np.ndarray] = {}
        self._deadline = 0.0
        self._steps = 0

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self._scene_reset is not None:
            self._scene_reset(self.np_random)
        # options={"reset_offset": (dx, dy, dz, dyaw)} places the start exactly (metres, radians
        # from task.reset_pose), e.g. for evaluations spread evenly over the reset range.
        offset = (options or {}).get("reset_offset")
        start_position, start_quat = self._sample_reset_pose(offset)
        self._move_to_start(start_position, start_quat)
        self.robot.set_impedance(self.env_cfg.compliant)
        self.robot.set_gripper(closed=self.task.fixed_gripper_closed)

        if self.env_cfg.state_frame == "episode_reset":
            self._frame_position = start_position
            self._frame_rotation = Rotation.from_quat(start_quat)
        self._steps = 0
        observation, timing = self._observe()
        self._deadline = self.clock.now() + self.period
        success, success_info = self._success_fn(self._state)
        info = {"success": bool(success), **success_info, **timing}
        return observation, info

    def _move_to_start(self, start_position: np.ndarray, start_quat: np.ndarray) -> None:
        """Lift clear if below the reset height, then move to the start pose. A fault on the way
        (a reflex, a planner refusing the arm's current motion state, an arrival short of the
        target) is recovered and the reset tried again, up to `_RESET_ATTEMPTS` in all: one
        transient fault should not end an online run that has hours of robot time in it.

        A retry waits for the arm to be still (`_wait_until_still`), then first moves home in
        joint space (`joint_reset`): a Cartesian plan the arm refused from where it stands is
        likely refused again from there, and a joint move needs no Cartesian plan. Only a refused
        recovery (a person must act) ends the reset at once."""
        for attempt in range(1, _RESET_ATTEMPTS + 1):
            try:
                if attempt > 1:
                    self._wait_until_still(_RETRY_PAUSE_S * 2 ** (attempt - 2))
                    self.robot.joint_reset()
                self.robot.set_impedance(self.env_cfg.stiff)
                state = self.robot.read_state()
                if state.tcp_position[2] < self._reset_position[2] - _RESET_LIFT_MARGIN_M:
                    lift = state.tcp_position.copy()
                    lift[2] = self._reset_position[2]
                    self.robot.move_to(lift, state.tcp_quat)
                self.robot.move_to(start_position, start_quat)
                return
            except RobotError as error:
                if attempt == _RESET_ATTEMPTS:
                    raise RobotError(f"the reset failed {attempt} times in a row, the last time: {error}; check the "
                                     "arm and its workspace (Desk shows the last fault), then run the command again "
                                     "(episodes already written are kept)") from None
                log.warning("reset attempt %d of %d failed (%s); recovering, then moving home in joint space "
                            "before trying again", attempt, _RESET_ATTEMPTS, error)
                try:
                    self.robot.recover()
                except RecoveryRefused:
                    raise
                except RobotError as recovery_error:  # its clearing lift failed: the joint move comes next
                    log.warning("recovery after reset attempt %d did not finish (%s)", attempt, recovery_error)

    def _wait_until_still(self, pause_s: float) -> None:
        """Wait at least `pause_s`, then until the joints have been still for a few readings in a
        row (bounded: at most another 4 x `pause_s`, after which the retry goes ahead anyway)."""
        start = self.clock.now()
        still = 0
        while True:
            now = self.clock.now()
            if now - start >= pause_s:
                try:
                    speed = float(np.max(np.abs(self.robot.read_state().joint_velocities)))
                except RobotError:
                    speed = np.inf  # the link is coming back; the retry will say if it does not
                still = still + 1 if speed < _STILL_JOINT_SPEED else 0
                if still >= _STILL_READINGS or now - start >= 5 * pause_s:
                    return
            self.clock.sleep_until(now + _STILL_POLL_S)

    def step(self, action: np.ndarray):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ActionError(f"action must have shape (7,), got {action.shape}")
        # np.clip passes NaN through, and a NaN target reaches the controller; refusing is
        # louder than holding pose, which would hide a diverged policy behind a still arm.
        if not np.all(np.isfinite(action)):
            bad = [int(i) for i in np.flatnonzero(~np.isfinite(action))]
            raise ActionError(f"action has non-finite components at {bad} ({action.tolist()}); nothing was "
                              "sent to the robot, which holds its last target. Check the policy for "
                              "divergence (NaN parameters or observations)")
        action = np.clip(action, -1.0, 1.0)

        position, quat, clipped = self._target_from_action(action)
        info: dict[str, Any] = {
            "commanded_position": position,
            "commanded_quat": quat,
            "target_clipped": clipped,
        }
        truncated = False
        try:
            self.robot.set_target(position, quat)
            if action[6] <= GRIPPER_CLOSE_THRESHOLD:
                self.robot.set_gripper(closed=True)
            elif action[6] >= GRIPPER_OPEN_THRESHOLD:
                self.robot.set_gripper(closed=False)
            overrun = self._wait_for_deadline()
        except RobotError as error:
            # The episode cannot go on from a fault; recover so the caller can reset or stop.
            info["robot_error"] = str(error)
            self.robot.recover()
            truncated = True
            overrun = 0.0

        observation, timing = self._observe()
        self._steps += 1
        success, success_info = self._success_fn(self._state)
        truncated = truncated or self._steps >= self.task.max_episode_steps
        info.update(success=bool(success), period_overrun_s=overrun, **success_info, **timing)
        return observation, float(success), bool(success), truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._render_fn is not None:
            return self._render_fn()
        if not self._images:
            raise RuntimeError("nothing to render: no cameras and no render function; call reset() first")
        return np.concatenate([self._images[camera.name] for camera in self.cameras], axis=1)

    def close(self) -> None:
        for camera in self.cameras:
            camera.close()
        self.robot.close()

    # ------------------------------------------------------------------ internals

    def _sample_reset_pose(self, offset: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if offset is None:
            noise = np.asarray(self.task.reset_position_noise, dtype=np.float64)
            position = self._reset_position + self.np_random.uniform(-noise, noise)
            yaw = self.np_random.uniform(-self.task.reset_yaw_noise, self.task.reset_yaw_noise)
        else:
            offset = np.asarray(offset, dtype=np.float64).reshape(-1)
            if offset.shape != (4,):
                raise ValueError(f"reset_offset must be (dx, dy, dz, dyaw), got shape {offset.shape}")
            position = self._reset_position + offset[:3]
            yaw = float(offset[3])
        quat = (yaw_rotation(yaw) * self._reset_rotation).as_quat()
        position, quat, _ = self.safety_box.clip(position, quat)
        return position, quat

    def _target_from_action(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        state = self._state
        rotation = Rotation.from_quat(state.tcp_quat)
        translation = action[:3] * self.task.action_scale_translation
        turn = Rotation.from_rotvec(action[3:6] * self.task.action_scale_rotation)
        if self.env_cfg.action_frame == "ee":
            position = state.tcp_position + rotation.apply(translation)
            target_rotation = rotation * turn
        else:
            position = state.tcp_position + translation
            target_rotation = turn * rotation
        return self.safety_box.clip(position, target_rotation.as_quat())

    def _wait_for_deadline(self) -> float:
        now = self.clock.now()
        overrun = max(0.0, now - self._deadline)
        if overrun > 0.0:
            self._deadline = now
        self.clock.sleep_until(self._deadline)
        self._deadline += self.period
        return overrun

    def _observe(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._state = state = self.robot.read_state()
        images = {}
        camera_ages = {}
        for camera in self.cameras:
            frame, stamp = camera.read()
            expected = self.observation_space[camera.name].shape
            if frame.shape != expected or frame.dtype != np.uint8:
                raise CameraError(
                    f"camera '{camera.name}' gave a {frame.dtype} frame of shape {frame.shape}; "
                    f"expected uint8 {expected} (env.image_height/width)"
                )
            images[camera.name] = frame
            camera_ages[camera.name] = stamp
        self._images = images
        now = self.clock.now()
        camera_ages = {name: now - stamp for name, stamp in camera_ages.items()}
        age = max([now - state.timestamp, *camera_ages.values()])
        timing = {
            "observation_age_s": age,
            "camera_age_s": camera_ages,
            "observation_stale": age > self.env_cfg.max_observation_age_s,
        }
        return {"state": self._state_vector(state), **images}, timing

    def _state_vector(self, state: RobotState) -> np.ndarray:
        frame_inverse = self._frame_rotation.inv()
        position, rotvec = relative_pose(
            self._frame_position,
            self._frame_rotation,
            state.tcp_position,
            Rotation.from_quat(state.tcp_quat),
        )
        vector = np.concatenate(
            [
                position,
                rotvec,
                frame_inverse.apply(state.tcp_twist[:3]),
                frame_inverse.apply(state.tcp_twist[3:]),
                frame_inverse.apply(state.wrench[:3]),
                frame_inverse.apply(state.wrench[3:]),
                [state.gripper_width],
            ]
        )
        return vector.astype(np.float32)
