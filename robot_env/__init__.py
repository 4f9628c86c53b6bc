"""The gymnasium env over the `Robot`/`Camera`/`Clock` interfaces, the safety box and wrappers.

Backends live beside it: the MuJoCo twin in `sim/`, the real arm in `robot_env.franky_backend`
(imported lazily: franky is an optional dependency).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gymnasium as gym

    from robot_env.config import EnvConfig, TaskConfig
    from robot_env.env import FrankaEnv

# The names below load on first use (PEP 562), so that importing a light module of this package
# (robot_env.errors, robot_env.progress, robot_env.config: every command's first import) does not
# pull in gymnasium and scipy: a command's argument and path checks answer in well under a second.
_LAZY = {
    "EnvConfig": "robot_env.config",
    "TaskConfig": "robot_env.config",
    "STATE_DIM": "robot_env.env",
    "STATE_LAYOUT": "robot_env.env",
    "ActionError": "robot_env.env",
    "FrankaEnv": "robot_env.env",
    "base_spaces": "robot_env.env",
    "pose_success_fn": "robot_env.env",
    "Camera": "robot_env.interfaces",
    "CameraError": "robot_env.interfaces",
    "Clock": "robot_env.interfaces",
    "ImpedanceParams": "robot_env.interfaces",
    "MonotonicClock": "robot_env.interfaces",
    "Robot": "robot_env.interfaces",
    "RobotError": "robot_env.interfaces",
    "RecoveryRefused": "robot_env.interfaces",
    "RobotState": "robot_env.interfaces",
    "SafetyBox": "robot_env.safety",
    "EpisodeStatisticsWrapper": "robot_env.wrappers",
    "FixedGripperWrapper": "robot_env.wrappers",
    "ObservationHistoryWrapper": "robot_env.wrappers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'robot_env' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "RecoveryRefused",
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
    from robot_env.wrappers import (
        EpisodeStatisticsWrapper,
        FixedGripperWrapper,
        ObservationHistoryWrapper,
    )

    wrapped: gym.Env = env
    if task.fixed_gripper_closed:
        wrapped = FixedGripperWrapper(wrapped, closed=True)
    if env_cfg.history_horizon > 1:
        wrapped = ObservationHistoryWrapper(wrapped, env_cfg.history_horizon)
    return EpisodeStatisticsWrapper(wrapped)


def wrapped_spaces(task: TaskConfig, env_cfg: EnvConfig) -> tuple[gym.spaces.Dict, gym.spaces.Box]:
    """The observation and action spaces of the env `make_env` builds for this config, computed by
    the wrappers' own space functions (a learner on another host needs them without an env)."""
    from robot_env.env import base_spaces
    from robot_env.wrappers import FixedGripperWrapper, ObservationHistoryWrapper

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
    from robot_env.env import FrankaEnv

    return wrap_env(FrankaEnv(robot, cameras, clock, task, env_cfg, **kwargs), task, env_cfg)
