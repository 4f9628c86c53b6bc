"""Scripted devices: a callable in place of the operator, and the twin's expert as one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from teleop.devices import IDLE, TeleopCommand


def action_to_command(action: np.ndarray | None) -> TeleopCommand:
    """A 6- or 7-D action (twist, then gripper) as a device command; None is no input."""
    if action is None:
        return IDLE
    action = np.clip(np.asarray(action, np.float32).reshape(-1), -1.0, 1.0)
    gripper = None
    if action.shape[0] >= 7:
        gripper = -1.0 if action[6] <= -0.5 else 1.0 if action[6] >= 0.5 else None
    return TeleopCommand(twist=action[:6].copy(), gripper=gripper)


class ScriptedDevice:
    """Commands from `script(observation, step) -> action or None` (None: the operator is idle)."""

    def __init__(self, script: Callable[[Mapping[str, np.ndarray] | None, int], np.ndarray | None]):
        self._script = script
        self._step = 0

    def read(self, observation: Mapping[str, np.ndarray] | None = None) -> TeleopCommand:
        command = action_to_command(self._script(observation, self._step))
        self._step += 1
        return command

    def reset(self) -> None:
        self._step = 0

    def close(self) -> None:
        pass


class ExpertDevice:
    """The twin's scripted peg-insertion expert (`sim.PegInsertionExpert`) as a teleop device.

    The expert reads the twin's ground truth through `env`; its actions are already in the env's
    action frame and units, so no axis mapping applies. It is always engaged: an expert holding
    still is still in control."""

    def __init__(self, env: Any, noise: float = 0.0, seed: int = 0):
        from sim import PegInsertionExpert

        self.expert = PegInsertionExpert(env, noise=noise, seed=seed)

    def read(self, observation: Mapping[str, np.ndarray] | None = None) -> TeleopCommand:
        command = action_to_command(np.asarray(self.expert.act(observation), np.float32))
        return replace(command, engaged=True)

    def reset(self) -> None:
        reset = getattr(self.expert, "reset", None)
        if callable(reset):
            reset()

    def close(self) -> None:
        pass
