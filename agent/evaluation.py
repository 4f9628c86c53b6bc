"""Evaluation: run a policy from initial poses spread over the reset range and count successes.

    offsets = spread_reset_offsets(20, cfg.task, seed=0)          # (20, 4): dx, dy, dz, dyaw
    result = evaluate(env, policy_fn(agent), offsets, seed=0, store=EpisodeStore(dir, create=True))

Spreading: a seeded Latin hypercube over (x, y, z, yaw) offsets in ±task.reset_position_noise and
±task.reset_yaw_noise. Each axis's range is cut into `count` equal strata and every stratum is
used exactly once (a random point inside it), so 20 trials cover the whole range evenly, which
20 independent uniform draws often do not. The env places each start exactly through
`reset(options={"reset_offset": offset})`; "random" leaves the sampling to the env.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import jax
import numpy as np

from agent.core import Agent, act
from agent.data.episodes import EpisodeRecorder, EpisodeStore
from agent.offline_config import SPREADS

PolicyFn = Callable[[dict[str, np.ndarray]], np.ndarray]


def latin_hypercube(count: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """`count` points in [0, 1)^dims, one in each of the `count` strata of every axis."""
    strata = np.stack([rng.permutation(count) for _ in range(dims)], axis=1)
    return (strata + rng.random((count, dims))) / count


def spread_reset_offsets(count: int, task, seed: int = 0, spread: str = "lhs") -> np.ndarray | None:
    """(count, 4) reset offsets (dx, dy, dz in metres, dyaw in radians), or None for "random"."""
    if spread not in SPREADS:
        raise ValueError(f"eval.spread must be one of {SPREADS}, got '{spread}'")
    if spread == "random":
        return None
    half_range = np.array([*task.reset_position_noise, task.reset_yaw_noise], np.float64)
    unit = latin_hypercube(count, 4, np.random.default_rng(seed))
    return (2.0 * unit - 1.0) * half_range


def policy_fn(agent: Agent, deterministic: bool = True, seed: int = 0) -> PolicyFn:
    """The agent as a function of one observation; stochastic draws come from a seeded key."""
    key = jax.random.PRNGKey(seed)

    def choose(observation: dict[str, np.ndarray]) -> np.ndarray:
        nonlocal key
        if deterministic:
            return act(agent, observation, deterministic=True)
        key, sub = jax.random.split(key)
        return act(agent, observation, sub)

    return choose


@dataclass
class EpisodeOutcome:
    index: int
    seed: int
    reset_offset: list[float] | None
    success: bool
    length: int
    episode_return: float
    path: str | None = None


@dataclass
class EvaluationResult:
    outcomes: list[EpisodeOutcome]
    # Frames of the first `video_episodes` episodes, one list per episode.
    videos: list[list[np.ndarray]] = field(default_factory=list)
    # Ctrl-C: the episodes finished before it are kept; the one in progress is dropped.
    interrupted: bool = False

    @property
    def successes(self) -> int:
        return sum(o.success for o in self.outcomes)

    @property
    def success_rate(self) -> float:
        return self.successes / max(len(self.outcomes), 1)

    def summary(self) -> dict[str, Any]:
        lengths = np.array([o.length for o in self.outcomes])
        successful = lengths[[o.success for o in self.outcomes]] if self.outcomes else lengths
        return {
            "episodes": len(self.outcomes),
            "successes": self.successes,
            "success_rate": self.success_rate,
            "mean_length": float(lengths.mean()) if lengths.size else 0.0,
            "mean_length_successful": float(successful.mean()) if successful.size else None,
            "interrupted": self.interrupted,
            "per_episode": [asdict(o) for o in self.outcomes],
        }


def video_frame(observation: dict[str, np.ndarray], cameras: Sequence[str], env: gym.Env) -> np.ndarray | None:
    """Wrist cameras side by side, or the env's own render (the twin's overview) without cameras."""
    if cameras:
        from robot_env.media import side_by_side

        return side_by_side([observation[c] for c in cameras])
    if env.render_mode == "rgb_array":
        return env.render()
    return None


def evaluate(
    env: gym.Env,
    choose_action: PolicyFn,
    offsets: np.ndarray | None,
    *,
    episodes: int | None = None,
    seed: int = 0,
    store: EpisodeStore | None = None,
    metadata: Callable[[int, np.ndarray | None], dict] | None = None,
    video_episodes: int = 0,
    cameras: Sequence[str] = (),
    progress: bool = True,
) -> EvaluationResult:
    """Run one episode per offset (or `episodes` env-sampled resets when `offsets` is None).

    Each episode is recorded (source "eval", via `metadata(index, offset)`) into `store` if given;
    reset seeds are `seed + index`, so the same call replays the same starts."""
    from robot_env.progress import format_duration, say
    from robot_env.progress import progress as progress_bar

    count = len(offsets) if offsets is not None else int(episodes or 0)
    recorder = EpisodeRecorder(store)
    result = EvaluationResult([])
    bar = progress_bar(total=count, desc="eval", unit="ep", disable=not progress)
    started = time.monotonic()
    try:
        for index in range(count):
            _run_episode(env, choose_action, recorder, result, index, offsets, seed, metadata,
                         index < video_episodes, cameras)
            if index == 0 and progress:
                say(f"eval: first episode in {format_duration(time.monotonic() - started)} "
                    "(with compiling the policy)")
            bar.set_postfix(success=f"{result.successes}/{len(result.outcomes)}")
            bar.update(1)
    except KeyboardInterrupt:
        recorder.discard()
        result.interrupted = True
    finally:
        bar.close()
    return result


def _run_episode(env: gym.Env, choose_action: PolicyFn, recorder: EpisodeRecorder, result: EvaluationResult,
                 index: int, offsets: np.ndarray | None, seed: int,
                 metadata: Callable[[int, np.ndarray | None], dict] | None, record: bool,
                 cameras: Sequence[str]) -> None:
    """One evaluation episode, recorded, with its outcome (and frames) appended to `result`."""
    offset = None if offsets is None else np.asarray(offsets[index], np.float64)
    options = None if offset is None else {"reset_offset": offset}
    observation, _ = env.reset(seed=seed + index, options=options)
    recorder.start(observation, metadata(index, offset) if metadata else {})
    frames: list[np.ndarray] = []
    total, success, done, path = 0.0, False, False, None
    while not done:
        if record and (frame := video_frame(observation, cameras, env)) is not None:
            frames.append(frame)
        action = choose_action(observation)
        observation, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        success = success or bool(info.get("success", reward > 0))
        done = terminated or truncated
        path = recorder.add(action, reward, observation, terminated, truncated, False, info)
    if record and (frame := video_frame(observation, cameras, env)) is not None:
        frames.append(frame)
        result.videos.append(frames)
    result.outcomes.append(EpisodeOutcome(index, seed + index, None if offset is None else offset.tolist(),
                                          success, len(recorder.last_episode), total,
                                          str(path) if path is not None else None))


def contact_sheet_rows(result: EvaluationResult, frames_per_row: int = 6) -> tuple[list[list[np.ndarray]], list[str]]:
    """Evenly spaced frames of each recorded episode, one row per episode, with its outcome."""
    rows, labels = [], []
    for frames, outcome in zip(result.videos, result.outcomes, strict=False):
        picks = np.linspace(0, len(frames) - 1, num=min(frames_per_row, len(frames))).round().astype(int)
        rows.append([frames[i] for i in picks])
        labels.append(f"episode {outcome.index}: {'success' if outcome.success else 'failure'}, "
                      f"{outcome.length} steps (frames {', '.join(map(str, picks))})")
    return rows, labels
