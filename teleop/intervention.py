"""The intervention wrapper: device input overrides the policy, and the executed action is stored.

Each `step(policy_action)` asks the device for a command first (it sees the latest observation):
- device active (any twist outside the dead zone, a gripper button, or a scripted expert): the
  device's command is executed and `hold_over_steps` restarts;
- device quiet but inside the hold-over: the quiet command (zero twist: the arm holds still) is
  executed, so releasing the SpaceMouse does not hand the arm straight back to the policy;
- otherwise the policy's action is executed.
`info` gets `intervened` (bool), `executed_action` (what went to the env: store this one),
`policy_action`, and `teleop_success` / `teleop_failure` (the operator's marks).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from teleop.devices import TeleopCommand, TeleopDevice


class InterventionWrapper(gym.Wrapper):
    def __init__(self, env: gym.Env, device: TeleopDevice, hold_over_steps: int = 3):
        super().__init__(env)
        if hold_over_steps < 0:
            raise ValueError("hold_over_steps must be >= 0")
        shape = env.action_space.shape
        if shape not in ((6,), (7,)):
            raise ValueError(f"the intervention wrapper needs a 6- or 7-D action, got {shape}")
        self.device = device
        self.hold_over_steps = hold_over_steps
        self._observation: Any = None
        self._hold_left = 0
        self._device_gripper: float | None = None

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self._observation = observation
        self._hold_left = 0
        self._device_gripper = None
        self.device.reset()
        return observation, info

    def _device_action(self, command: TeleopCommand, policy_action: np.ndarray) -> np.ndarray:
        action = np.zeros_like(policy_action)
        action[:6] = command.twist
        if action.shape[0] == 7:
            if command.gripper is not None:
                self._device_gripper = float(command.gripper)
            # Keep the gripper where the operator last put it; if they never touched it, where
            # the policy wants it.
            action[6] = self._device_gripper if self._device_gripper is not None else policy_action[6]
        return np.clip(action, -1.0, 1.0)

    def step(self, action):
        policy_action = np.asarray(action, np.float32).reshape(self.action_space.shape)
        command = self.device.read(self._observation)
        if command.active:
            self._hold_left = self.hold_over_steps
            executed, intervened = self._device_action(command, policy_action), True
        elif self._hold_left > 0:
            self._hold_left -= 1
            executed, intervened = self._device_action(command, policy_action), True
        else:
            self._device_gripper = None
            executed, intervened = policy_action, False
        observation, reward, terminated, truncated, info = self.env.step(executed)
        self._observation = observation
        info = dict(info)
        info.update(
            intervened=intervened,
            executed_action=np.asarray(executed, np.float32),
            policy_action=policy_action,
            teleop_success=command.success,
            teleop_failure=command.failure,
        )
        return observation, reward, terminated, truncated, info
