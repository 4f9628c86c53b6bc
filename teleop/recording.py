"""Recording loops: demos until N successes, and reward-classifier frames with labels.

Both drive an env through the `InterventionWrapper`, store every episode with `EpisodeRecorder`
(atomic, one file per episode, written when it ends) and show a live status line. Ctrl-C writes
the episode in progress as truncated before it stops, so nothing recorded is lost.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import gymnasium as gym
import numpy as np

from agent.data.episodes import EpisodeRecorder, EpisodeStore
from teleop.devices import TeleopDevice
from teleop.intervention import InterventionWrapper

Policy = Callable[[Mapping[str, np.ndarray]], np.ndarray]


class StatusLine:
    """One line rewritten in place on a terminal; elsewhere (logs) one line per `force`."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic):
        # Looked up at construction, not import: a default bound at import time would keep
        # writing to a stream that was since replaced (and closed), e.g. by pytest's capture.
        stream = sys.stderr if stream is None else stream
        self.stream = stream
        self.interval_s = interval_s
        self.clock = clock
        self._last = -float("inf")
        self._width = 0
        try:
            self.interactive = stream.isatty()
        except (AttributeError, ValueError):
            self.interactive = False

    def update(self, text: str, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        if self.interactive:
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
        elif force:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive and self._width:
            self.stream.write("\n")
            self.stream.flush()


class RateMeter:
    """Loop rate over the recent steps (exponential average of the step period)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._last: float | None = None
        self._period: float | None = None

    def tick(self) -> None:
        now = self.clock()
        if self._last is not None:
            dt = now - self._last
            self._period = dt if self._period is None else 0.9 * self._period + 0.1 * dt
        self._last = now

    @property
    def hz(self) -> float:
        return 0.0 if not self._period else 1.0 / self._period


@dataclass
class RecordingStats:
    episodes: int = 0
    steps: int = 0
    successes: int = 0
    failures: int = 0
    positives: int = 0
    negatives: int = 0
    interrupted: bool = False
    paths: list[str] = field(default_factory=list)


def _zero_policy(action_space: gym.Space) -> Policy:
    zeros = np.zeros(action_space.shape, np.float32)
    return lambda observation: zeros


def record_demos(
    env: gym.Env,
    device: TeleopDevice,
    store: EpisodeStore,
    *,
    num_successes: int,
    metadata: Mapping[str, Any],
    max_episodes: int = 0,
    hold_over_steps: int = 3,
    success_from: str = "task",
    policy: Policy | None = None,
    seed: int = 0,
    status: StatusLine | None = None,
) -> RecordingStats:
    """Record episodes until `num_successes` succeeded (failures are kept, labelled as such).

    `success_from`: "task" (the env's `info["success"]`, ground truth in the twin) or "operator"
    (a success mark from the device ends the episode as a success; a failure mark ends it as a
    failure; the task's own success still counts). Without a policy the arm only moves when the
    device drives it (a zero action otherwise)."""
    if success_from not in ("task", "operator"):
        raise ValueError(f"success_from must be 'task' or 'operator', got '{success_from}'")
    wrapped = InterventionWrapper(env, device, hold_over_steps=hold_over_steps)
    policy = policy or _zero_policy(wrapped.action_space)
    recorder = EpisodeRecorder(store)
    stats = RecordingStats()
    rate = RateMeter()
    status = status or StatusLine()

    def line() -> str:
        return (f"episode {stats.episodes + 1} | step {len(recorder)} | successes {stats.successes}/{num_successes}"
                f" | failures {stats.failures} | {rate.hz:5.1f} Hz")

    try:
        while stats.successes < num_successes and (max_episodes <= 0 or stats.episodes < max_episodes):
            episode_seed = seed + stats.episodes
            observation, _ = wrapped.reset(seed=episode_seed)
            recorder.start(observation, {**metadata, "seed": episode_seed, "started_at": time.time()})
            done = False
            while not done:
                observation, reward, terminated, truncated, info = wrapped.step(policy(observation))
                rate.tick()
                success = bool(info.get("success", False))
                if success_from == "operator":
                    if info["teleop_success"]:
                        success, reward, terminated = True, 1.0, True
                    elif info["teleop_failure"]:
                        truncated = True
                done = terminated or truncated
                recorder.add(info["executed_action"], reward, observation, terminated, truncated,
                             info["intervened"], {"success": success})
                stats.steps += 1
                status.update(line())
            episode = recorder.last_episode
            stats.episodes += 1
            stats.paths.append(str(recorder.last_path))
            if episode is not None and episode.success:
                stats.successes += 1
            else:
                stats.failures += 1
            outcome = "success" if episode is not None and episode.success else "failure"
            status.update(f"episodes {stats.episodes} | successes {stats.successes}/{num_successes} | failures "
                          f"{stats.failures} | last: {outcome} in {len(episode) if episode else 0} steps", force=True)
    except KeyboardInterrupt:
        stats.interrupted = True
        if recorder.active and len(recorder):
            recorder.finish(truncate=True)
            stats.episodes += 1
            stats.failures += int(not recorder.last_episode.success)
            stats.successes += int(recorder.last_episode.success)
            stats.paths.append(str(recorder.last_path))
    finally:
        status.close()
    return stats


def record_reward_frames(
    env: gym.Env,
    device: TeleopDevice,
    store: EpisodeStore,
    *,
    positives: int,
    negatives: int,
    metadata: Mapping[str, Any],
    label_from: str = "task",
    steps_after_success: int = 25,
    max_episodes: int = 0,
    hold_over_steps: int = 3,
    policy: Policy | None = None,
    seed: int = 0,
    status: StatusLine | None = None,
) -> RecordingStats:
    """Record frames labelled success (1) or failure (0) until both counts are reached.

    Labels are per observation (`frame_info/success_label`, one per stored frame, o_0 included):
    `label_from="task"` uses the env's ground truth (`info["success"]`, the twin), "operator" a
    held success key/button (hardware). Task success does not end the episode here: in the twin
    the episode runs on for `steps_after_success` steps (while positives are still wanted), which
    is where the positive frames come from; otherwise episodes end at the time limit or on a
    failure mark."""
    if label_from not in ("task", "operator"):
        raise ValueError(f"label_from must be 'task' or 'operator', got '{label_from}'")
    wrapped = InterventionWrapper(env, device, hold_over_steps=hold_over_steps)
    policy = policy or _zero_policy(wrapped.action_space)
    recorder = EpisodeRecorder(store)
    stats = RecordingStats()
    rate = RateMeter()
    status = status or StatusLine()

    def line() -> str:
        return (f"episode {stats.episodes + 1} | step {len(recorder)} | positive {stats.positives}/{positives}"
                f" | negative {stats.negatives}/{negatives} | {rate.hz:5.1f} Hz")

    def enough() -> bool:
        return stats.positives >= positives and stats.negatives >= negatives

    def count(label: bool) -> None:
        if label:
            stats.positives += 1
        else:
            stats.negatives += 1

    try:
        while not enough() and (max_episodes <= 0 or stats.episodes < max_episodes):
            episode_seed = seed + stats.episodes
            observation, info = wrapped.reset(seed=episode_seed)
            label = bool(info.get("success", False)) if label_from == "task" else False
            recorder.start(observation, {**metadata, "seed": episode_seed, "started_at": time.time(),
                                         "purpose": "reward-labels"}, {"success_label": label})
            count(label)
            since_success = None
            done = False
            while not done:
                observation, reward, terminated, truncated, info = wrapped.step(policy(observation))
                rate.tick()
                if label_from == "task":
                    label = bool(info.get("success", False))
                else:
                    label = bool(info["teleop_success"])
                    truncated = truncated or bool(info["teleop_failure"])
                if label and since_success is None:
                    since_success = 0
                if since_success is not None:
                    since_success += 1
                    if label_from == "task" and (since_success > steps_after_success or stats.positives >= positives):
                        truncated = True
                count(label)
                done = truncated or enough()
                recorder.add(info["executed_action"], reward, observation, terminated, truncated or done,
                             info["intervened"], {"success": bool(info.get("success", False))},
                             {"success_label": label}, write_on_end=False)
                stats.steps += 1
                status.update(line())
            recorder.finish()
            stats.episodes += 1
            stats.paths.append(str(recorder.last_path))
            status.update(f"episodes {stats.episodes} | positive {stats.positives}/{positives} | negative "
                          f"{stats.negatives}/{negatives}", force=True)
    except KeyboardInterrupt:
        stats.interrupted = True
        if recorder.active and len(recorder):
            recorder.finish(truncate=True)
            stats.episodes += 1
            stats.paths.append(str(recorder.last_path))
    finally:
        status.close()
    return stats
