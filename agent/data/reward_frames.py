"""Labelled frames for the reward classifier, as `franka-rl record-rewards` stores them.

They are ordinary episodes (so every frame is stored once and the usual tools read them) whose
`frame_info/success_label` gives one label per observation, o_0 included.
"""

from __future__ import annotations

import os

import numpy as np

from agent.data.episodes import EpisodeStore

LABEL_KEY = "success_label"


def load_reward_frames(directory: str | os.PathLike) -> dict[str, object]:
    """Every labelled observation in `directory`:
    {"observations": {key: (N, ...)}, "labels": (N,) bool, "episode": (N,) int} in recorded order.
    Episodes without labels are skipped (reported); corrupt files are reported and skipped."""
    store = EpisodeStore(directory)
    observations: dict[str, list[np.ndarray]] = {}
    labels, episode_index = [], []
    for index, episode in enumerate(store.episodes()):
        if LABEL_KEY not in episode.frame_info:
            store.report(f"episode {index} in {directory} has no {LABEL_KEY}; not reward data, skipped")
            continue
        for key, value in episode.observations.items():
            observations.setdefault(key, []).append(value)
        labels.append(episode.frame_info[LABEL_KEY].astype(bool))
        episode_index.append(np.full(len(episode) + 1, index))
    if not labels:
        raise ValueError(f"no labelled frames in {directory} (record them with `franka-rl record-rewards`)")
    return {
        "observations": {k: np.concatenate(v) for k, v in observations.items()},
        "labels": np.concatenate(labels),
        "episode": np.concatenate(episode_index),
    }
