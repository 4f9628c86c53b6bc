"""Env wrappers, one job each."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class FixedGripperWrapper(gym.ActionWrapper):
    """Expose a 6-D action (translation + rotation) and hold the gripper closed or open."""

    def __init__(self, env: gym.Env, closed: bool = True):
        super().__init__(env)
        self.gripper_command = -1.0 if closed else 1.0
        self.action_space = self.wrapped_action_space(env.action_space)

    @staticmethod
    def wrapped_action_space(space: spaces.Box) -> spaces.Box:
        """The action space this wrapper exposes over `space` (also used without an env)."""
        if space.shape != (7,):
            raise ValueError(f"expected a 7-D action space, got {space.shape}")
        return spaces.Box(-1.0, 1.0, (6,), np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(action, dtype=np.float32), [self.gripper_command]]).astype(
            np.float32
        )


class ObservationHistoryWrapper(gym.ObservationWrapper):
    """Stack the last `horizon` observations of every key along a new leading axis.

    At reset the history is filled with copies of the first observation.
    """

    def __init__(self, env: gym.Env, horizon: int):
        super().__init__(env)
        if horizon < 1:
            raise ValueError(f"history horizon must be ≥ 1, got {horizon}")
        self.horizon = horizon
        self.observation_space = self.wrapped_observation_space(env.observation_space, horizon)
        self._history: deque[dict[str, np.ndarray]] = deque(maxlen=horizon)

    @staticmethod
    def wrapped_observation_space(space: spaces.Dict, horizon: int) -> spaces.Dict:
        """The observation space this wrapper exposes over `space` (also used without an env)."""
        return spaces.Dict(
            {
                key: spaces.Box(
                    np.repeat(box.low[None], horizon, axis=0),
                    np.repeat(box.high[None], horizon, axis=0),
                    dtype=box.dtype,
                )
                for key, box in space.spaces.items()
            }
        )

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self._history.clear()
        for _ in range(self.horizon):
            self._history.append(observation)
        return self._stacked(), info

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._history.append(observation)
        return self._stacked()

    def _stacked(self) -> dict[str, np.ndarray]:
        return {key: np.stack([obs[key] for obs in self._history]) for key in self._history[0]}


class EpisodeStatisticsWrapper(gym.Wrapper):
    """Add `info["episode"]` when an episode ends: return, length, success, intervention count,
    wall-clock duration and mean period overrun."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._return = 0.0
        self._length = 0
        self._interventions = 0
        self._overrun_total = 0.0
        self._started = time.monotonic()

    def reset(self, **kwargs):
        self._reset_counters()
        return self.env.reset(**kwargs)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        self._length += 1
        self._interventions += int(bool(info.get("intervened", False)))
        self._overrun_total += float(info.get("period_overrun_s", 0.0))
        if terminated or truncated:
            info = dict(info)
            info["episode"] = self.statistics(success=bool(info.get("success", False)))
        return observation, reward, terminated, truncated, info

    def statistics(self, success: bool) -> dict[str, Any]:
        return {
            "return": self._return,
            "length": self._length,
            "success": success,
            "interventions": self._interventions,
            "duration_s": time.monotonic() - self._started,
            "mean_period_overrun_s": self._overrun_total / max(self._length, 1),
        }
