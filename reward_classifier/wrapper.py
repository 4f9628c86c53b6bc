"""The reward wrapper: the classifier decides success, reward and termination.

Success at a step when the classifier's probability has been above the threshold for
`debounce_steps` consecutive frames and, with a pose check, the TCP is within tolerance of the
task's target position. Reward and termination follow the task's convention (sparse 0/1 reward,
terminate on success). `info` gains `classifier_probability` and `classifier_success`;
`info["success"]` is left as the env reported it (ground truth in the twin), so false successes
can be counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from reward_classifier.config import ClassifierConfig


class ProbabilityModel(Protocol):
    def probability(self, observation: Mapping[str, np.ndarray]) -> float: ...


class RewardClassifierWrapper(gym.Wrapper):
    def __init__(self, env: gym.Env, classifier: ProbabilityModel, threshold: float, debounce_steps: int = 1,
                 pose_check: Callable[[], bool] | None = None):
        super().__init__(env)
        if debounce_steps < 1:
            raise ValueError(f"classifier.debounce_steps must be >= 1, got {debounce_steps}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"the classifier threshold must be in [0, 1), got {threshold}")
        self.classifier = classifier
        self.threshold = float(threshold)
        self.debounce_steps = debounce_steps
        self.pose_check = pose_check
        self._streak = 0

    def reset(self, **kwargs):
        observation, info = self.env.reset(**kwargs)
        self._streak = 0
        info["classifier_probability"] = self.classifier.probability(observation)
        info["classifier_success"] = False
        return observation, info

    def step(self, action):
        observation, _, _, truncated, info = self.env.step(action)
        # Statistics from inside describe the task's own episode ends, not this wrapper's;
        # wrap_with_classifier adds a statistics wrapper outside that sees the classifier's.
        info.pop("episode", None)
        probability = self.classifier.probability(observation)
        self._streak = self._streak + 1 if probability > self.threshold else 0
        success = self._streak >= self.debounce_steps
        if success and self.pose_check is not None:
            success = bool(self.pose_check())
            info["classifier_pose_ok"] = success
        info["classifier_probability"] = probability
        info["classifier_success"] = success
        return observation, float(success), success, truncated, info


def tcp_pose_check(env: gym.Env, tolerance_m: float) -> Callable[[], bool]:
    """True when the robot's TCP is within `tolerance_m` (0: the task's success_position_tolerance)
    of the task's target position. Reads the robot, not the observation, so it holds whatever
    frame the observation's state is expressed in."""
    from robot_env import pose_success_fn

    base = env.unwrapped
    task = base.task
    if tolerance_m > 0:
        import dataclasses

        task = dataclasses.replace(task, success_position_tolerance=tolerance_m)
    within = pose_success_fn(task)
    return lambda: within(base.robot.read_state())[0]


def wrap_with_classifier(env: gym.Env, cfg: ClassifierConfig, model_dir: str | None = None,
                         classifier: Any = None) -> gym.Env:
    """The actor's entry point: `env` with reward and termination from the classifier in
    `model_dir` (default `cfg.model_dir`). Fails with one line (ClassifierLoadError) when the
    classifier was trained for other cameras or image sizes than the env has. `classifier` may
    be given already loaded (e.g. shared between envs). The result ends, like `make_env`'s, in an
    `EpisodeStatisticsWrapper`, whose `info["episode"]` now marks the classifier's episode ends
    (its `return` counts classifier successes; its `success` is the env's own `info["success"]`)."""
    from reward_classifier.saved_model import ClassifierLoadError, load_classifier
    from robot_env import EpisodeStatisticsWrapper

    if classifier is None:
        directory = model_dir or cfg.model_dir
        if not directory:
            raise ClassifierLoadError("classifier.model_dir is empty: set it to a directory written by "
                                      "`franka-rl train-classifier`")
        shapes = {key: tuple(space.shape) for key, space in env.observation_space.spaces.items()
                  if len(space.shape) == 3}
        classifier = load_classifier(directory, shapes, where="the env")
    else:
        classifier.check_observation_space(env.observation_space)
    threshold = cfg.threshold if cfg.threshold is not None else classifier.threshold
    pose_check = tcp_pose_check(env, cfg.pose_tolerance_m) if cfg.pose_check else None
    return EpisodeStatisticsWrapper(RewardClassifierWrapper(env, classifier, threshold, cfg.debounce_steps, pose_check))
