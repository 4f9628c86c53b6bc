"""The MuJoCo twin of the peg-insertion cell.

Importing `sim` picks a headless OpenGL backend (before MuJoCo is imported) and registers:

- `FrankaPegInsertionSim-v0`: state + the two wrist cameras `wrist_1`, `wrist_2`;
- `FrankaPegInsertionSimState-v0`: state only (no renderer is created).

Both accept `make_env`'s keyword arguments through `gymnasium.make`. The rest of the package
(MuJoCo included) loads on first use of a name below, so `import sim.config` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import gymnasium as gym

# Must run before anything imports mujoco: it sets MUJOCO_GL.
from sim import rendering
from sim.config import DomainRandomizationConfig, SimConfig
from sim.rendering import RenderingUnavailable

if TYPE_CHECKING:
    from sim.camera import SimCamera
    from sim.envs import make_env, make_state_env, sim_world
    from sim.expert import PegInsertionExpert
    from sim.robot import SimClock, SimRobot
    from sim.world import GroundTruth, SimWorld

ENV_ID = "FrankaPegInsertionSim-v0"
STATE_ENV_ID = "FrankaPegInsertionSimState-v0"

_LAZY = {
    "SimCamera": "sim.camera",
    "make_env": "sim.envs",
    "make_state_env": "sim.envs",
    "sim_world": "sim.envs",
    "PegInsertionExpert": "sim.expert",
    "SimClock": "sim.robot",
    "SimRobot": "sim.robot",
    "GroundTruth": "sim.world",
    "SimWorld": "sim.world",
}

__all__ = [
    "ENV_ID",
    "STATE_ENV_ID",
    "DomainRandomizationConfig",
    "RenderingUnavailable",
    "SimConfig",
    "rendering",
    "SimCamera",
    "make_env",
    "make_state_env",
    "sim_world",
    "PegInsertionExpert",
    "SimClock",
    "SimRobot",
    "GroundTruth",
    "SimWorld",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sim' has no attribute '{name}'")


for _env_id, _entry_point in ((ENV_ID, "sim.envs:make_env"), (STATE_ENV_ID, "sim.envs:make_state_env")):
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point=_entry_point)
