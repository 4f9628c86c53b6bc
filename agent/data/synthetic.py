"""Synthetic episodes with the real layout, for tests and benchmarks (no env needed)."""

from __future__ import annotations

import numpy as np

from agent.data.episodes import Episode, make_metadata


def synthetic_episode(
    rng: np.random.Generator,
    steps: int,
    *,
    cameras: tuple[str, ...] = ("wrist_1", "wrist_2"),
    image_size: int = 16,
    state_dim: int = 19,
    action_dim: int = 6,
    success: bool | None = None,
    truncated: bool | None = None,
    source: str = "policy",
    episode_index: int = 0,
) -> Episode:
    """An episode of `steps` steps. `state[:, 0]` holds the episode index and `state[:, 1]` the
    step index of each observation, so tests can tell where any sampled observation came from.

    A successful episode ends terminated with raw reward 1 on its last step; otherwise it ends
    truncated (or, with `truncated=False`, terminated with reward 0, as a failure that stops)."""
    success = bool(rng.random() < 0.5) if success is None else success
    state = rng.standard_normal((steps + 1, state_dim)).astype(np.float32)
    state[:, 0] = episode_index
    state[:, 1] = np.arange(steps + 1)
    observations = {"state": state}
    for camera in cameras:
        observations[camera] = rng.integers(0, 256, (steps + 1, image_size, image_size, 3), dtype=np.uint8)
    rewards = np.zeros(steps, np.float32)
    terminated = np.zeros(steps, bool)
    truncated_flags = np.zeros(steps, bool)
    if success:
        rewards[-1] = 1.0
        terminated[-1] = True
    elif truncated is False:
        terminated[-1] = True
    else:
        truncated_flags[-1] = True
    return Episode(
        observations=observations,
        actions=rng.uniform(-1, 1, (steps, action_dim)).astype(np.float32),
        rewards=rewards,
        terminated=terminated,
        truncated=truncated_flags,
        intervened=rng.random(steps) < 0.2,
        metadata=make_metadata(task="synthetic", source=source, seed=episode_index),
        info={"success": rewards > 0},
    )
