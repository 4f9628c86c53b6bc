"""Build the real-robot env from the root config: the franky backend, the configured cameras and
the host's monotonic clock under `FrankaEnv` and its wrappers.

    env = make_real_env(load_config("configs/peg_insertion_real.yaml"))

`cfg` is anything with `.task`, `.env` and `.real` sections (`franka_rl.config.Config`); this
module does not import `franka_rl`, which sits above `robot_env`.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym

from robot_env import make_env
from robot_env.cameras import open_cameras
from robot_env.config import EnvConfig, TaskConfig
from robot_env.franky_backend import FrankyRobot
from robot_env.interfaces import MonotonicClock
from robot_env.real_config import RealConfig
from robot_env.safety import SafetyBox


class RealSetup(Protocol):
    task: TaskConfig
    env: EnvConfig
    real: RealConfig


def connect_robot(cfg: RealSetup) -> FrankyRobot:
    """The arm, with the task's safety box and the env's compliant gains."""
    return FrankyRobot(cfg.real, SafetyBox.from_task(cfg.task), impedance=cfg.env.compliant)


def make_real_env(cfg: RealSetup, **env_kwargs: Any) -> gym.Env:
    """`FrankaEnv` on the real arm, wrapped per config. `env_kwargs` go to `FrankaEnv`
    (`success_fn`, `render_mode`, ...). If a camera fails to open, the arm is released again."""
    robot = connect_robot(cfg)
    try:
        cameras = open_cameras(cfg.real.cameras, cfg.env.cameras, cfg.env.image_height, cfg.env.image_width)
    except BaseException:
        robot.close()
        raise
    return make_env(robot, cameras, MonotonicClock(), cfg.task, cfg.env, **env_kwargs)
