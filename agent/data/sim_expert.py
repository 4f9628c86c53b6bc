"""Episodes of the twin's scripted expert with action noise: a mixed-quality offline dataset
generated on the spot (tests, benchmarks, smoke runs), recorded exactly as record-demos would."""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym

from agent.data.episodes import Episode, EpisodeRecorder, make_metadata


def expert_episodes(env: gym.Env, count: int, *, noise: float = 0.3, perturbation_prob: float = 0.0,
                    seed: int = 0) -> Iterator[Episode]:
    """`count` episodes of `sim.PegInsertionExpert` (Gaussian action noise `noise`, optional
    random bursts) from the env's randomised resets, seeded `seed`, `seed + 1`, ..."""
    from sim import PegInsertionExpert

    expert = PegInsertionExpert(env, noise=noise, perturbation_prob=perturbation_prob, seed=seed)
    recorder = EpisodeRecorder(None)
    control_hz = float(env.unwrapped.env_cfg.control_hz)
    for index in range(count):
        observation, _ = env.reset(seed=seed + index)
        expert.reset()
        recorder.start(observation, make_metadata(task="peg_insertion", source="teleop", seed=seed + index,
                                                  device="scripted", noise=noise, mode="sim",
                                                  control_hz=control_hz))
        done = False
        while not done:
            action = expert.act(observation)
            observation, reward, terminated, truncated, info = env.step(action)
            recorder.add(action, reward, observation, terminated, truncated, False, info)
            done = terminated or truncated
        yield recorder.last_episode
