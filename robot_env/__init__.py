"""The gymnasium env over the `Robot`/`Camera`/`Clock` interfaces, the safety box and wrappers.

Backends live beside it: the MuJoCo twin in `sim/`, the real arm in `robot_env.franky_backend`
(imported lazily: franky is an optional dependency).
"""

from __future__ import annotations

import gymnasium as gym

from robot_env.config import EnvConfig, TaskConfig
from robot_env.env import (
    STATE_DIM,
    STATE_LAYOUT,
    ActionError,
    FrankaEnv,
    base_spaces,
    pose_success_fn,
)
from robot_env.interfaces import (
    Camera,
    CameraError,
    Clock,
    ImpedanceParams,
    MonotonicClock,
    Robot,
    RobotError,
    RobotState,
)
from robot_env.safety import SafetyBox
from robot_env.wrappers import (
    EpisodeStatisticsWrapper,
    FixedGripperWrapper,
    ObservationHistoryWrapper,
)

__all__ = [
    "STATE_DIM",
    "STATE_LAYOUT",
    "ActionError",
    "Camera",
    "CameraError",
    "Clock",
    "EnvConfig",
    "EpisodeStatisticsWrapper",
    "FixedGripperWrapper",
    "FrankaEnv",
    "ImpedanceParams",
    "MonotonicClock",
    "ObservationHistoryWrapper",
    "Robot",
    "RobotError",
    "RobotState",
    "SafetyBox",
    "TaskConfig",
    "base_spaces",
    "make_env",
    "pose_success_fn",
    "wrap_env",
    "wrapped_spaces",
]


def wrap_env(env: FrankaEnv, task: TaskConfig, env_cfg: EnvConfig) -> gym.Env:
    """Apply the wrappers the config asks for, innermost first."""
    wrapped: gym.Env = env
    if task.fixed_gripper_closed:
        wrapped = FixedGripperWrapper(wrapped, closed=True)
    if env_cfg.history_horizon > 1:
        wrapped = ObservationHistoryWrapper(wrapped, env_cfg.history_horizon)
    return EpisodeStatisticsWrapper(wrapped)


def wrapped_spaces(task: TaskConfig, env_cfg: EnvConfig) -> tuple[gym.spaces.Dict, gym.spaces.Box]:
    """The observation and action spaces of the env `make_env` builds for this config, computed by
    the wrappers' own space functions (a learner on another host needs them without an env)."""
    observation_space, action_space = base_spaces(env_cfg)
    if task.fixed_gripper_closed:
        action_space = FixedGripperWrapper.wrapped_action_space(action_space)
    if env_cfg.history_horizon > 1:
        observation_space = ObservationHistoryWrapper.wrapped_observation_space(
            observation_space, env_cfg.history_horizon
        )
    return observation_space, action_space


def make_env(robot, cameras, clock, task: TaskConfig, env_cfg: EnvConfig, **kwargs) -> gym.Env:
    """`FrankaEnv` over the given robot, cameras and clock, wrapped per config."""
    return wrap_env(FrankaEnv(robot, cameras, clock, task, env_cfg, **kwargs), task, env_cfg)
